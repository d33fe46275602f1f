"""Ingest: videos -> decode -> shot cuts -> frames sampled in shots -> tar shards (the offline step).

``ingest`` is the one call; the CLI's ``vivi ingest`` only parses arguments and calls it.
``cut_stats`` gives every frame's cut distance for choosing ``--cut-threshold`` (``vivi inspect --cuts``).
"""
from .cut_detector import CutDetectorConfig, ExactDistances, HistogramCutDetector, detect_cuts
from .cut_stats import FrameDistance, cut_stats, plot_cut_stats, write_cut_stats
from .decode import SamplingConfig, VideoError, decode_video
from .pipeline import IngestConfig, IngestSummary, expand_inputs, finalize, ingest

__all__ = ["CutDetectorConfig", "ExactDistances", "FrameDistance", "HistogramCutDetector", "IngestConfig",
           "IngestSummary", "SamplingConfig", "VideoError", "cut_stats", "decode_video", "detect_cuts",
           "expand_inputs", "finalize", "ingest", "plot_cut_stats", "write_cut_stats"]
