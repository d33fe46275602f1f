"""Shot-cut detection from colour histograms (Mas & Fernandez, TRECVID 2003; SPEC.md §7).

VIVI (papers/vivi-cvpr2020.txt §4, "Data") splits videos into shots with a colour-histogram
detector. Each frame is summarised by a joint colour histogram with ``bits`` bits per channel
(4 bits -> 4096 bins), normalised to sum 1. The distance between consecutive frames is half the
L1 distance of their histograms, which lies in [0, 1] (0: same colours, 1: disjoint colours). A
cut is declared before frame t when that distance exceeds ``threshold``, and no two cuts are
closer than ``min_shot_frames`` frames.

Colour space: the histogram is taken over the decoder's own output, the Y, Cb and Cr planes of a
4:2:0 frame, one sample per chroma pixel (luma subsampled to match), so no colour conversion is
needed per frame (SPEC §7 gives RGB as an example; any joint colour histogram serves Mas &
Fernandez's method, and YCbCr is what the video stores). Large frames are sampled on a strided
grid of about ``max_width`` chroma columns: a histogram needs few samples. This keeps the detector
at a few microseconds per frame, which matters because it must see every native frame (so that
short shots are not lost) while ingest keeps only 1 frame per second.

The detector is streaming: :meth:`HistogramCutDetector.push` takes one frame's histogram at a
time, so a single decode pass finds cuts and samples frames (see ``decode.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

PLANAR_420 = ("yuv420p", "yuvj420p")


@dataclass(frozen=True)
class CutDetectorConfig:
    bits: int = 4               # bits per RGB channel; 4 -> 4096 bins, as in Mas & Fernandez
    threshold: float = 0.4      # half-L1 histogram distance above which a cut is declared
    min_shot_frames: int = 4    # no cut within this many frames of the previous one (flashes)


def frame_histogram(frame: av.VideoFrame | np.ndarray, bits: int = 4, max_width: int = 32,
                    reformatter: VideoReformatter | None = None) -> np.ndarray:
    """Joint Y/Cb/Cr histogram of a frame, ``2**(3*bits)`` bins summing to 1 (see module docstring).

    ``frame`` is a decoded PyAV frame or an RGB (H, W, 3) uint8 array. Frames that are not
    8-bit 4:2:0 are first converted to a 4:2:0 thumbnail ``2 * max_width`` pixels wide with
    ``reformatter`` (pass a long-lived one: it caches its swscale context).
    """
    if isinstance(frame, np.ndarray):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    if frame.format.name not in PLANAR_420:
        width = min(frame.width, 2 * max_width)
        height = max(2, round(frame.height * width / frame.width))
        frame = (reformatter or VideoReformatter()).reformat(frame, width, height, "yuv420p", threads=1)
    planes = frame.planes
    chroma_w, chroma_h = (frame.width + 1) // 2, (frame.height + 1) // 2
    step = max(1, chroma_w // max_width)
    u = _plane(planes[1])[:chroma_h:step, :chroma_w:step]
    v = _plane(planes[2])[:chroma_h:step, :chroma_w:step]
    y = _plane(planes[0])[::2 * step, ::2 * step][:u.shape[0], :u.shape[1]]
    bins = 1 << bits
    hist = cv2.calcHist([y, u, v], [0, 1, 2], None, [bins] * 3, [0, 256] * 3)
    return hist.ravel() * np.float32(1.0 / u.size)


def _plane(plane) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between two normalised histograms, in [0, 1]."""
    return 0.5 * cv2.norm(a, b, cv2.NORM_L1)


class HistogramCutDetector:
    """Streaming cut detector. ``push(hist)`` returns True when the frame of histogram ``hist``
    (:func:`frame_histogram`) starts a new shot.

    The first frame always starts a shot; :attr:`shot_starts` lists the frame index of every shot
    start seen so far (the first is 0).
    """

    def __init__(self, config: CutDetectorConfig = CutDetectorConfig()):
        self.config = config
        self.shot_starts: list[int] = []
        self.distances: list[float] = []   # distance of frame t to frame t-1 (t >= 1)
        self._previous: np.ndarray | None = None
        self._index = 0

    def push(self, hist: np.ndarray) -> bool:
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
    """Frame indices at which shots start (first is 0) for PyAV frames or RGB arrays."""
    detector = HistogramCutDetector(config)
    reformatter = VideoReformatter()
    for frame in frames:
        detector.push(frame_histogram(frame, config.bits, reformatter=reformatter))
    return detector.shot_starts
