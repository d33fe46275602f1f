"""``groundtruth``: the synthetic world's own boxes, an oracle detector (what the demo uses).

The world writes, beside each ``video_NNNNN.mp4``, a ``video_NNNNN.json`` with the boxes (pixels
in the native frame) and class ids of every native frame (docs/synth.md). A sampled frame's
native index (stored by ingest) selects its boxes; every box gets score 1. Videos ingested from
object storage have theirs beside them there.
"""
from __future__ import annotations

import json
import posixpath
from pathlib import Path

import numpy as np

from ..data.reader import Video, VideoDataset
from ..storage import is_url, read_optional
from ..synth import CLASS_NAMES
from .base import Detector


class GroundTruthDetector(Detector):
    name = "groundtruth"
    class_names = list(CLASS_NAMES)

    def detect(self, video: Video, dataset: VideoDataset) -> list[np.ndarray]:
        source = video.source
        path = posixpath.splitext(source)[0] + ".json" if is_url(source) else Path(source).with_suffix(".json")
        data = read_optional(path)
        if data is None:
            raise FileNotFoundError(f"no ground truth for {video.source} (expected {path}): the groundtruth "
                                    "detector only works on videos made by `vivi synth`")
        truth = json.loads(data)
        width, height = truth["width"], truth["height"]
        scale = np.array([width, height, width, height], np.float32)
        out = []
        for native in video.frame_native_index:
            frame = truth["frames"][native]
            boxes = np.zeros((len(frame["boxes"]), 6), np.float32)
            if len(boxes):
                boxes[:, :4] = np.asarray(frame["boxes"], np.float32) / scale
                boxes[:, 4] = frame["class_ids"]
                boxes[:, 5] = 1.0
            out.append(boxes)
        return out
