"""The detector interface: anything that gives boxes, classes and scores for sampled frames.

Object-centric §3 and §4.1 ("Datasets") tag every sampled frame offline with an off-the-shelf
detector and keep at most 5 boxes per frame with score >= 0.05 (docs/reference.md, "Object-level
triplet"). vivi separates the detector
from that bookkeeping: a detector implements one method, :meth:`Detector.detect`, and
``vivi.detect.tagging.detect_dataset`` does the rest (filtering, storage beside the shards,
resumption, progress). Detectors that look at pixels subclass :class:`ImageDetector` and
implement ``detect_images`` on a batch of RGB frames.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..data.reader import Video, VideoDataset


class Detector(ABC):
    """Boxes for the sampled frames of a video.

    ``detect`` returns one float32 array of shape (n, 6) per sampled frame: x0, y0, x1, y1
    normalised to [0, 1] in the stored frame, class id (an index into :attr:`class_names`), score.
    """

    name: str                      # the key the detections are stored under
    class_names: list[str]

    @abstractmethod
    def detect(self, video: Video, dataset: VideoDataset) -> list[np.ndarray]:
        ...

    def settings(self) -> dict:
        """What identifies this detector's output besides its name (stored in detector.json)."""
        return {}


class ImageDetector(Detector):
    """A detector that runs on decoded frames, ``batch_size`` at a time."""

    batch_size: int = 16

    @abstractmethod
    def detect_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """(n, 6) arrays as in :meth:`Detector.detect` for RGB (H, W, 3) uint8 images."""

    def detect(self, video: Video, dataset: VideoDataset) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, video.num_frames, self.batch_size):
            frames = range(start, min(start + self.batch_size, video.num_frames))
            out.extend(self.detect_images([dataset.read_frame(video, f) for f in frames]))
        return out


def keep_top(boxes: np.ndarray, max_per_frame: int, min_score: float) -> np.ndarray:
    """Boxes with score >= ``min_score``, the ``max_per_frame`` highest first."""
    boxes = boxes[boxes[:, 5] >= min_score]
    return boxes[np.argsort(-boxes[:, 5], kind="stable")[:max_per_frame]]
