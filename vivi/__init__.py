"""vivi: self-supervised image representations from the video hierarchy.

Pipeline: ``vivi.synth`` (the synthetic video world) -> ``vivi.ingest`` (videos -> shots -> frames ->
shards) -> ``vivi.detect`` (object boxes beside the shards) -> ``vivi.data`` (batches of N videos x
K shots x F frames) -> ``vivi.models`` / ``vivi.losses`` / ``vivi.train`` (training) -> ``vivi.eval``.
"""
__version__ = "0.1.0"

__all__ = ["__version__", "embed", "load_encoder"]


def __getattr__(name):
    # vivi.load_encoder / vivi.embed, imported on first use so that `import vivi` stays light
    if name in ("embed", "load_encoder"):
        from vivi import api
        return getattr(api, name)
    raise AttributeError(f"module 'vivi' has no attribute {name!r}")
