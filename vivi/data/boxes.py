"""Object boxes for training, read from the detections stored beside the shards.

``vivi detect`` (Object-centric §3, §4.1: an off-the-shelf detector tags every sampled frame
offline) writes, for a detector named NAME::

    DATA/detections/NAME/detector.json       {"detector": NAME, "coords": "xyxy_normalized",
                                              "class_names": [...], ...settings}
    DATA/detections/NAME/shard-000000.json   {"videos": {key: [[[x0, y0, x1, y1, class, score], ...]
                                                                # one list per sampled frame
                                                                ]}}

Coordinates are normalised to [0, 1] in the stored frame, (x0, y0) the top-left corner. Several
detectors coexist; training picks one by name. This module only reads them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

DETECTIONS_DIR = "detections"


def available_detectors(root: str | Path) -> list[str]:
    folder = Path(root) / DETECTIONS_DIR
    return sorted(p.parent.name for p in folder.glob("*/detector.json"))


class Detections:
    """The boxes of one detector for every video of a dataset."""

    def __init__(self, meta: dict, videos: dict[str, list]):
        self.meta = meta
        self.class_names: list[str] = meta["class_names"]
        self.videos = videos

    def frame_boxes(self, key: str, frame: int) -> np.ndarray:
        """(n, 6) array of x0, y0, x1, y1, class, score for one sampled frame (highest score first)."""
        rows = self.videos.get(key)
        if rows is None or frame >= len(rows) or not rows[frame]:
            return np.zeros((0, 6), np.float32)
        boxes = np.asarray(rows[frame], np.float32).reshape(-1, 6)
        return boxes[np.argsort(-boxes[:, 5], kind="stable")]

    def boxes(self, key: str, frames: list[list[int]], crop: tuple[float, float, float, float],
              max_boxes: int) -> dict[str, torch.Tensor]:
        """Padded boxes of a clip's frames, mapped into the ``crop`` (normalised x0, y0, x1, y1).

        Boxes are clipped to the crop; a box whose centre falls outside the crop is dropped.
        Returns ``boxes`` (K, F, B, 4) float32, ``box_labels`` (K, F, B) int64 (-1 = padding) and
        ``box_scores`` (K, F, B) float32, B = ``max_boxes``.
        """
        K, F = len(frames), len(frames[0])
        out_boxes = np.zeros((K, F, max_boxes, 4), np.float32)
        out_labels = np.full((K, F, max_boxes), -1, np.int64)
        out_scores = np.zeros((K, F, max_boxes), np.float32)
        cx0, cy0, cx1, cy1 = crop
        for k, shot in enumerate(frames):
            for f, frame in enumerate(shot):
                b = self.frame_boxes(key, frame)
                if not len(b):
                    continue
                xy = b[:, :4].copy()
                xy[:, [0, 2]] = (xy[:, [0, 2]] - cx0) / (cx1 - cx0)
                xy[:, [1, 3]] = (xy[:, [1, 3]] - cy0) / (cy1 - cy0)
                centre = (xy[:, :2] + xy[:, 2:]) / 2
                keep = np.all((centre >= 0) & (centre < 1), axis=1)
                xy, b = np.clip(xy[keep], 0, 1)[:max_boxes], b[keep][:max_boxes]
                n = len(xy)
                out_boxes[k, f, :n], out_labels[k, f, :n], out_scores[k, f, :n] = xy, b[:, 4], b[:, 5]
        return {"boxes": torch.from_numpy(out_boxes), "box_labels": torch.from_numpy(out_labels),
                "box_scores": torch.from_numpy(out_scores)}


def load_detections(root: str | Path, detector: str) -> Detections:
    folder = Path(root) / DETECTIONS_DIR / detector
    meta_path = folder / "detector.json"
    if not meta_path.exists():
        found = available_detectors(root)
        raise FileNotFoundError(f"no detections named {detector!r} in {root} "
                                f"(available: {', '.join(found) or 'none'}); run `vivi detect {root} --detector ...`")
    meta = json.loads(meta_path.read_text())
    videos: dict[str, list] = {}
    for path in sorted(folder.glob("shard-*.json")):
        videos.update(json.loads(path.read_text())["videos"])
    return Detections(meta, videos)
