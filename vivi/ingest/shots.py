"""Shot-cut detection from colour histograms (Mas & Fernandez, TRECVID 2003; SPEC.md §7).

VIVI (papers/vivi-cvpr2020.txt §4, "Data") splits videos into shots with a colour-histogram
detector. Each frame is summarised by a joint RGB histogram with ``bits`` bits per channel
(4 bits -> 4096 bins), normalised to sum 1. The distance between consecutive frames is half the
L1 distance of their histograms, which lies in [0, 1] (0: same colours, 1: disjoint colours). A
cut is declared before frame t when that distance exceeds ``threshold``, and no two cuts are
closer than ``min_shot_frames`` frames.

The detector is streaming: :meth:`HistogramCutDetector.push` takes one frame at a time at the
native frame rate, so a single decode pass finds cuts and samples frames (see ``pipeline.py``).
Frames may be small: the histogram of a 64-pixel-wide thumbnail is as informative for cuts as the
full frame and far cheaper, so the decoder hands over thumbnails.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CutDetectorConfig:
    bits: int = 4               # bits per RGB channel; 4 -> 4096 bins, as in Mas & Fernandez
    threshold: float = 0.4      # half-L1 histogram distance above which a cut is declared
    min_shot_frames: int = 4    # no cut within this many frames of the previous one (flashes)


def color_histogram(rgb: np.ndarray, bits: int = 4) -> np.ndarray:
    """Joint RGB histogram of an (H, W, 3) uint8 image, ``2**(3*bits)`` bins, summing to 1."""
    bins = 1 << bits
    hist = cv2.calcHist([np.ascontiguousarray(rgb)], [0, 1, 2], None, [bins] * 3, [0, 256] * 3)
    return hist.ravel() * np.float32(1.0 / (rgb.shape[0] * rgb.shape[1]))


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between two normalised histograms, in [0, 1]."""
    return 0.5 * cv2.norm(a, b, cv2.NORM_L1)


class HistogramCutDetector:
    """Streaming cut detector. ``push(frame)`` returns True when ``frame`` starts a new shot.

    The first frame always starts a shot; :attr:`shot_starts` lists the frame index of every shot
    start seen so far (the first is 0).
    """

    def __init__(self, config: CutDetectorConfig = CutDetectorConfig()):
        self.config = config
        self.shot_starts: list[int] = []
        self.distances: list[float] = []   # distance of frame t to frame t-1 (t >= 1)
        self._previous: np.ndarray | None = None
        self._index = 0

    def push(self, rgb: np.ndarray) -> bool:
        hist = color_histogram(rgb, self.config.bits)
        index, self._index = self._index, self._index + 1
        if self._previous is None:
            self._previous = hist
            self.shot_starts.append(index)
            return True
        distance = histogram_distance(hist, self._previous)
        self._previous = hist
        self.distances.append(distance)
        is_cut = (distance > self.config.threshold
                  and index - self.shot_starts[-1] >= self.config.min_shot_frames)
        if is_cut:
            self.shot_starts.append(index)
        return is_cut


def detect_cuts(frames, config: CutDetectorConfig = CutDetectorConfig()) -> list[int]:
    """Frame indices at which shots start (first is 0) for an iterable of RGB frames."""
    detector = HistogramCutDetector(config)
    for frame in frames:
        detector.push(frame)
    return detector.shot_starts
