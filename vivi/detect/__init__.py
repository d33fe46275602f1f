"""Detect: offline object boxes for every sampled frame (object-centric paper §3), stored beside the shards.

``build_detector(spec)`` turns a spec string into a detector; ``detect_dataset`` runs it.
Specs: ``groundtruth`` (the synthetic world's boxes). More adapters (ONNX models, imported
COCO results, NanoDet) follow issue 6.
"""
from __future__ import annotations

from .base import Detector, ImageDetector, keep_top
from .run import DetectSummary, detect_dataset

DETECTORS = {
    "groundtruth": "the synthetic world's ground-truth boxes (an oracle; videos made by `vivi synth`)",
}


def build_detector(spec: str) -> Detector:
    """A detector from its spec string; an unknown spec lists the valid ones."""
    kind = spec.split(":", 1)[0]
    if kind == "groundtruth":
        from .groundtruth import GroundTruthDetector
        return GroundTruthDetector()
    valid = "; ".join(f"{k}: {v}" for k, v in DETECTORS.items())
    raise ValueError(f"unknown detector {spec!r}; valid detectors: {valid}")


__all__ = ["DETECTORS", "Detector", "DetectSummary", "ImageDetector", "build_detector", "detect_dataset", "keep_top"]
