"""vivi: self-supervised image representations from the video hierarchy.

Pipeline: ``vivi.synth`` (the synthetic video world) -> ``vivi.ingest`` (videos -> shots -> frames ->
shards) -> ``vivi.data`` (batches of N videos x K shots x F frames) -> ``vivi.models`` /
``vivi.losses`` (training) -> evaluation.
"""
__version__ = "0.1.0"
