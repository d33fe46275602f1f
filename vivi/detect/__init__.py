"""Detect: offline object boxes for every sampled frame (Object-centric §3, §4.1), stored beside the shards.

``build_detector(spec)`` turns a spec string into a detector; ``detect_dataset`` runs it.
Specs: ``groundtruth`` (the synthetic world's boxes), ``import:FILE`` (detections computed
elsewhere, JSON Lines or COCO results), ``onnx:PATH?options`` (any ONNX detector with a declared
output convention, ``vivi.detect.onnx``) and ``nanodet`` (NanoDet-m, COCO-80, fetched and
converted once by ``vivi detector fetch nanodet``, ``vivi.detect.nanodet``).
"""
from __future__ import annotations

from .base import Detector, ImageDetector, keep_top
from .tagging import DetectSummary, detect_dataset

DETECTORS = {
    "groundtruth": "the synthetic world's ground-truth boxes (an oracle; videos made by `vivi synth`)",
    "import:FILE": "detections computed elsewhere: JSON Lines or COCO results (docs/detect.md)",
    "onnx:PATH?convention=...&classes=...": "an ONNX detector run by onnxruntime; conventions gfl (NanoDet-style "
                                            "heads) and boxes_scores_labels (docs/detect.md)",
    "nanodet": "NanoDet-m 416, 80 COCO classes, on the CPU (once: `vivi detector fetch nanodet`)",
}


def build_detector(spec: str, root: str | None = None, *, threads: int | None = None) -> Detector:
    """A detector from its spec string; an unknown spec lists the valid ones.

    ``root`` is the dataset the detector will annotate (imported detections are checked against it);
    ``threads`` the intra-op threads of ONNX detectors (default: onnxruntime's, one per core).
    """
    kind, _, argument = spec.partition(":")
    if kind == "groundtruth":
        from .groundtruth import GroundTruthDetector
        return GroundTruthDetector()
    if kind == "import" and argument:
        from .imported import ImportedDetector
        if root is None:
            raise ValueError("import:FILE needs the dataset it annotates")
        return ImportedDetector(argument, root)
    if kind == "onnx" and argument:
        from .onnx import OnnxDetector, parse_onnx_spec
        return OnnxDetector(*parse_onnx_spec(argument), threads=threads)
    if spec == "nanodet":
        from .nanodet import build_nanodet
        return build_nanodet(threads)
    valid = "; ".join(f"{k}: {v}" for k, v in DETECTORS.items())
    raise ValueError(f"unknown detector {spec!r}; valid detectors: {valid}")


__all__ = ["DETECTORS", "Detector", "DetectSummary", "ImageDetector", "build_detector", "detect_dataset", "keep_top"]
