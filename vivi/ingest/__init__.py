"""Ingest: videos -> decode -> shot cuts -> frames sampled in shots -> tar shards (the offline step).

``ingest`` is the one call; the CLI's ``vivi ingest`` only parses arguments and calls it.
"""
from .cut_detector import CutDetectorConfig, HistogramCutDetector, detect_cuts
from .decode import SamplingConfig, VideoError, decode_video
from .pipeline import IngestConfig, IngestSummary, expand_inputs, finalize, ingest

__all__ = ["CutDetectorConfig", "HistogramCutDetector", "IngestConfig", "IngestSummary", "SamplingConfig",
           "VideoError", "decode_video", "detect_cuts", "expand_inputs", "finalize", "ingest"]
