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


class FrameHistogram:
    """Joint Y/Cb/Cr histogram of decoded frames, ``2**(3*bits)`` bins summing to 1 (module docstring).

    One per video: the strided views of the three planes are laid out on the first frame (and
    again whenever the geometry changes), so that a frame costs one ``calcHist`` and three array
    headers. Frames that are not 8-bit 4:2:0 are first converted to a 4:2:0 thumbnail
    ``2 * max_width`` pixels wide (one long-lived swscale context).
    """

    def __init__(self, bits: int = 4, max_width: int = 32):
        self.bins, self.max_width = 1 << bits, max_width
        self.reformatter = VideoReformatter()
        self._size = None             # (width, height, format) of the 4:2:0 frames the views are laid out for
        self._key = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        views = None
        if self._size is not None and (frame.width, frame.height, frame.format.name) == self._size:
            try:
                views = self._views(frame)
            except (TypeError, ValueError):        # a buffer that does not fit: lay out again
                views = None
        if views is None:
            views = self._layout(frame)
        hist = cv2.calcHist(views, [0, 1, 2], None, [self.bins] * 3, [0, 256] * 3)
        return hist.ravel() * self._scale

    def _layout(self, frame: av.VideoFrame) -> list[np.ndarray]:
        """Views of a frame's planes; sets up the fast path when the frame is 8-bit 4:2:0."""
        name = frame.format.name
        direct = name in PLANAR_420
        if not direct:
            width = min(frame.width, 2 * self.max_width)
            height = max(2, round(frame.height * width / frame.width))
            frame = self.reformatter.reformat(frame, width, height, "yuv420p", threads=1)
        key = (frame.width, frame.height, tuple(p.line_size for p in frame.planes))
        if key != self._key:
            chroma_w, chroma_h = (frame.width + 1) // 2, (frame.height + 1) // 2
            step = max(1, chroma_w // self.max_width)
            rows = min(len(range(0, chroma_h, step)), len(range(0, frame.height, 2 * step)))
            cols = min(len(range(0, chroma_w, step)), len(range(0, frame.width, 2 * step)))
            lines = key[2]
            self._shapes = [(rows, cols)] * 3
            self._strides = [(lines[0] * 2 * step, 2 * step), (lines[1] * step, step), (lines[2] * step, step)]
            self._scale = np.float32(1.0 / (rows * cols))
            self._key = key
        self._size = (frame.width, frame.height, name) if direct else None
        return self._views(frame)

    def _views(self, frame: av.VideoFrame) -> list[np.ndarray]:
        return [np.ndarray(shape, np.uint8, plane, 0, strides)
                for shape, strides, plane in zip(self._shapes, self._strides, frame.planes)]


def frame_histogram(frame: av.VideoFrame | np.ndarray, bits: int = 4, max_width: int = 32) -> np.ndarray:
    """The :class:`FrameHistogram` of one frame, a decoded PyAV frame or an RGB (H, W, 3) uint8 array."""
    return FrameHistogram(bits, max_width)(_as_frame(frame))


def _as_frame(frame: av.VideoFrame | np.ndarray) -> av.VideoFrame:
    if isinstance(frame, np.ndarray):
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return frame


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
    histogram = FrameHistogram(config.bits)
    for frame in frames:
        detector.push(histogram(_as_frame(frame)))
    return detector.shot_starts
