"""Shot-cut detection from colour histograms (Mas & Fernandez 2003).

VIVI splits its videos into shots "using a simple strategy based on color histograms, similarly
to" Mas & Fernandez (VIVI §4, "Upstream training"; docs/reference.md, "Shot-cut detection").
Each frame is summarised by a joint histogram of its colour samples with ``bits`` bits per
channel (4 bits -> 4096 bins), normalised to sum 1. The distance between consecutive frames is
half the L1 distance of their histograms, which lies in [0, 1] (0: same colours, 1: disjoint
colours). A cut is declared before frame t when that distance exceeds ``threshold`` and frame t
is at least ``min_shot_frames`` frames after the previous shot start (:meth:`CutDetectorConfig.is_cut`).

Colour space: the histogram is taken over the decoder's own output, the Y, Cb and Cr planes of a
4:2:0 frame, one sample per chroma pixel (luma subsampled to match), so no colour conversion is
needed per frame: the method needs a joint colour histogram, not a particular colour space, and
YCbCr is what the video stores (docs/reference.md, "Choices the papers leave open"). Large frames
are sampled on a strided grid of about ``max_width`` chroma columns: a histogram needs few
samples.

Speed: the detector must see every native frame (so that short shots are not lost) while ingest
keeps only 1 frame per second, so its per-frame cost is a large part of what ingest adds to
decoding.
Frames are therefore taken in batches (:class:`ColourSamples` reads a batch's samples with a
handful of array operations), and most histograms are never built: the two histograms of
consecutive frames are counts of the same sample positions, so half their L1 distance is at most
the fraction of positions whose bin changed (moving one sample moves at most 1/n of the mass).
That fraction is computed for the whole batch at once; only frames where it reaches the threshold
(cuts, and some frames of fast motion) get their histograms and exact distance. Cuts are the
same as those of a detector that builds every histogram (:class:`ExactDistances`, which
``vivi inspect --cuts`` uses to show every distance). Measurements: docs/benchmarks.md, "Cut
detection".
"""
from __future__ import annotations

from dataclasses import dataclass

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from .borders import NO_BARS, BatchBars, GridBars, inside

PLANAR_420 = ("yuv420p", "yuvj420p")
JOIN_BYTES = 32 * 1024       # frames with at most this many plane bytes are copied whole (see ColourSamples)
# A batch holds its decoded frames alive until it is processed: about BATCH_BYTES of them with
# FFmpeg's frame threads, so that they stay in the CPU caches, and about BATCH_BYTES_ONE_THREAD
# with one decoder thread, where the fixed cost of the array operations per batch weighs more
# than the caches; at least MIN_BATCH frames and at most MAX_BATCH (the fastest at 64x64: larger
# batches are slower). Measurements: docs/benchmarks.md, "Cut detection".
BATCH_BYTES, BATCH_BYTES_ONE_THREAD = 512 << 10, 2 << 20
MIN_BATCH, MAX_BATCH = 4, 32


@dataclass(frozen=True)
class CutDetectorConfig:
    bits: int = 4               # bits per Y, Cb and Cr sample in the joint histogram; 4 -> 4096 bins
    threshold: float = 0.4      # half-L1 histogram distance above which a cut is declared
    min_shot_frames: int = 4    # no cut within this many frames of the previous shot start (flashes)

    def __post_init__(self):
        if not (0 < self.threshold < 1 and self.min_shot_frames >= 1 and 1 <= self.bits <= 8):
            raise ValueError(f"cut detector settings out of range: threshold {self.threshold} (between 0 and 1), "
                             f"min shot frames {self.min_shot_frames} (>= 1), bits {self.bits} (1-8)")

    def is_cut(self, distance: float, frames_since_shot_start: int) -> bool:
        """The cut rule: a frame whose histogram ``distance`` to the frame before exceeds the
        threshold starts a shot, unless it is within ``min_shot_frames`` of the last shot start
        (a flash, or the frames of one gradual change)."""
        return distance > self.threshold and frames_since_shot_start >= self.min_shot_frames


def batch_size(width: int, height: int, threaded: bool = True) -> int:
    """Frames per batch for frames of this size (4:2:0, with line padding: ~2 bytes a pixel),
    decoded by FFmpeg's threads (``threaded``) or by one thread."""
    budget = BATCH_BYTES if threaded else BATCH_BYTES_ONE_THREAD
    return max(MIN_BATCH, min(MAX_BATCH, budget // max(1, 2 * width * height)))


class ColourSamples:
    """The Y/Cb/Cr samples that the histograms count, for batches of decoded frames.

    ``samples(frames)`` gives a list of ``(first, array)`` runs: ``array`` is (n, rows, cols, 4)
    uint8 for ``frames[first:first + n]`` (Y, Cb, Cr and a zero byte: one 32-bit word per
    position, which the detector compares in one operation), one run per stretch of frames whose
    samples have the same grid (a single run unless the geometry changes mid-batch). The fast
    path's array is reused by the next call (see :func:`_reused`).

    8-bit 4:2:0 frames are read straight from their planes on a grid of about ``max_width``
    chroma columns (luma at every other row and column, matching chroma). The grid is laid out on
    the first frame of a geometry (line sizes included). Small frames are copied whole with one
    ``bytes.join`` per batch, then sliced (for small frames, one copy of everything is cheaper
    than a view per plane and frame); large ones through a strided view per plane and frame, so
    that only the samples are copied. Other formats are first converted to a 4:2:0 thumbnail
    ``2 * max_width`` pixels wide (one long-lived swscale context).
    """

    def __init__(self, max_width: int = 32):
        self.max_width = max_width
        self.reformatter = VideoReformatter()
        self._geometry = None      # (width, height, format name) the layout below is for
        self._layout = None
        self._out: np.ndarray | None = None     # the fast path's output, batch after batch

    def __call__(self, frames: list[av.VideoFrame]) -> list[tuple[int, np.ndarray]]:
        first = frames[0]
        if (first.width, first.height, first.format.name) != self._geometry:
            self._lay_out(first)
        same = [(f.width, f.height, f.format.name) == self._geometry for f in frames]
        if self._layout is not None and all(same):
            fast = self._read_planes(frames)
            if fast is not None:
                return [(0, fast)]
        return self._one_by_one(frames)

    def _lay_out(self, frame: av.VideoFrame) -> None:
        """Strides, shapes and byte sizes of the sample grid for 4:2:0 frames like ``frame``."""
        self._geometry = (frame.width, frame.height, frame.format.name)
        self._layout = _grid(frame, self.max_width) if frame.format.name in PLANAR_420 else None

    def _read_planes(self, frames: list[av.VideoFrame]) -> np.ndarray | None:
        """The fast path for 4:2:0 frames of the laid-out geometry; None if a buffer does not fit."""
        shape, strides, plane_shapes = self._layout
        count = len(frames)
        self._out = _reused(self._out, (count,) + shape + (4,))
        out = self._out[:count]           # its 4th bytes stay 0
        sizes = [h * line for h, line in plane_shapes]
        if sum(sizes) <= JOIN_BYTES:        # one copy of the whole batch: Y0 U0 V0 Y1 U1 V1 ...
            data = b"".join([plane for frame in frames for plane in frame.planes])
            if len(data) != count * sum(sizes):
                return None
            frame_bytes = np.frombuffer(data, np.uint8).reshape(count, -1)
            start = 0
            for k, ((step_r, step_c), (plane_h, line), size) in enumerate(zip(strides, plane_shapes, sizes)):
                plane = frame_bytes[:, start:start + size].reshape(count, plane_h, line)
                out[..., k] = plane[:, ::step_r, ::step_c][:, :shape[0], :shape[1]]
                start += size
            return out
        planes = [f.planes for f in frames]
        for k, ((step_r, step_c), (_, line)) in enumerate(zip(strides, plane_shapes)):
            try:
                out[..., k] = [np.ndarray(shape, np.uint8, p[k], 0, (line * step_r, step_c)) for p in planes]
            except (TypeError, ValueError):     # a plane buffer that does not fit the layout
                return None
        return out

    def _one_by_one(self, frames: list[av.VideoFrame]) -> list[tuple[int, np.ndarray]]:
        """Any frames: each through the thumbnail (or its own layout), runs split where the grid changes."""
        runs: list[tuple[int, list[np.ndarray]]] = []
        for index, frame in enumerate(frames):
            samples = self.one(frame)
            if runs and runs[-1][1][0].shape == samples.shape:
                runs[-1][1].append(samples)
            else:
                runs.append((index, [samples]))
        return [(first, np.stack(arrays)) for first, arrays in runs]

    def one(self, frame: av.VideoFrame) -> np.ndarray:
        """(rows, cols, 4) samples of one frame of any format."""
        if frame.format.name not in PLANAR_420:
            width = min(frame.width, 2 * self.max_width)
            height = max(2, round(frame.height * width / frame.width))
            frame = self.reformatter.reformat(frame, width, height, "yuv420p", threads=1)
        shape, strides, plane_shapes = _grid(frame, self.max_width)
        out = np.zeros(shape + (4,), np.uint8)
        for k, (plane, (step_r, step_c), (_, line)) in enumerate(zip(frame.planes, strides, plane_shapes)):
            out[..., k] = np.ndarray(shape, np.uint8, plane, 0, (line * step_r, step_c))
        return out


def _reused(buffer: np.ndarray | None, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """``buffer`` if it has room for ``shape`` (its first ``shape[0]`` rows), else a new zeroed array of ``shape``.

    The per-batch arrays are reused rather than allocated: a fresh 128 KiB array per batch
    comes with page faults.
    """
    if buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < shape[0] or buffer.dtype != dtype:
        return np.zeros(shape, dtype)
    return buffer


def _grid(frame: av.VideoFrame, max_width: int):
    """(rows, cols), per-plane (row step, column step) and per-plane (height, line size) of the
    sample grid of a 4:2:0 frame: about ``max_width`` chroma columns, luma at twice the step."""
    chroma_w, chroma_h = (frame.width + 1) // 2, (frame.height + 1) // 2
    step = max(1, chroma_w // max_width)
    rows = min(len(range(0, chroma_h, step)), len(range(0, frame.height, 2 * step)))
    cols = min(len(range(0, chroma_w, step)), len(range(0, frame.width, 2 * step)))
    lines = [p.line_size for p in frame.planes]
    return ((rows, cols), [(2 * step, 2 * step), (step, step), (step, step)],
            [(frame.height, lines[0]), (chroma_h, lines[1]), (chroma_h, lines[2])])


def sample_histogram(samples: np.ndarray, bits: int = 4) -> np.ndarray:
    """Joint histogram of (rows, cols, 4) uint8 samples (channels 0-2), ``2**(3*bits)`` float32
    bins summing to 1."""
    bins = 1 << bits
    hist = cv2.calcHist([np.ascontiguousarray(samples)], [0, 1, 2], None, [bins] * 3, [0, 256] * 3)
    return hist.ravel() * np.float32(1.0 / (samples.shape[0] * samples.shape[1]))


def _as_frame(frame: av.VideoFrame | np.ndarray) -> av.VideoFrame:
    if isinstance(frame, np.ndarray):
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return frame


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance between two normalised histograms, in [0, 1]."""
    return 0.5 * cv2.norm(a, b, cv2.NORM_L1)


class HistogramCutDetector:
    """Streaming cut detector over batches of frame samples (:class:`ColourSamples`).

    ``push(samples)`` takes the (n, rows, cols, 4) samples of the next n frames and returns the
    positions (0 to n-1) of those that start a new shot. The first frame always starts a shot;
    :attr:`shot_starts` lists the frame index (from the first frame pushed) of every shot start.
    """

    # Skip a frame only when its changed fraction is below the threshold by more than float32
    # rounding of the exact distance could make up: the decision is the exact one.
    MARGIN = 1e-5

    def __init__(self, config: CutDetectorConfig = CutDetectorConfig()):
        self.config = config
        self.shot_starts: list[int] = []
        # The bits of a position's 32-bit word (Y, Cb, Cr, 0) that its histogram bin depends on.
        self._mask = np.frombuffer(bytes([(0xFF << (8 - config.bits)) & 0xFF] * 3 + [0]), np.uint32)[0]
        self._previous: np.ndarray | None = None        # samples of the last frame pushed
        self._previous_hist: dict | None = None          # and its histograms, if built
        self._bars = GridBars()                          # each frame's bars, and those of the frames before a batch
        # histograms built during the current push, by (frame index, region left out)
        self._hists: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self._changed: np.ndarray | None = None          # _candidates' work array, batch after batch
        self._index = 0

    def push(self, samples: np.ndarray) -> list[int]:
        start, count = self._index, len(samples)
        self._index += count
        if count == 0:
            return []
        previous, found = self._previous, []
        same_grid = previous is not None and previous.shape == samples.shape[1:]
        # the bars are looked for after the changes are counted: the array operations are then warm
        changes = self._changes(samples, previous if same_grid else None)
        kept = samples[-2:].copy()                        # the last frames: the next batch compares with them
        bars = self._bars(samples, kept)
        self._hists = {} if self._previous_hist is None else dict(self._previous_hist)
        if previous is None:                              # the very first frame starts a shot
            self.shot_starts.append(start)
            found.append(start)
        elif not same_grid:                               # the grid changed: compare histograms
            found += self._exact(start, samples[0], previous, NO_BARS)
        regions, candidates = self._candidates(*changes, bars, samples.shape[1:3])
        for k in candidates:                              # k: frame of ``samples`` that may start a shot
            if start + k - self.shot_starts[-1] >= self.config.min_shot_frames:
                region = NO_BARS if regions is None else regions[k]
                found += self._exact(start + k, samples[k], samples[k - 1] if k else previous, region)
        self._previous = kept[-1]
        last = start + count - 1
        self._previous_hist = {key: hist for key, hist in self._hists.items() if key[0] == last} or None
        return [index - start for index in found]

    def _changes(self, samples: np.ndarray, previous: np.ndarray | None) -> tuple[np.ndarray, int, int]:
        """(per frame from ``first``, how many sample positions' histogram bin differs from the
        frame before (``previous`` for k = 0; from k = 1 without it); ``first``; the positions)."""
        words = samples.view(np.uint32).reshape(len(samples), -1)
        self._changed = _reused(self._changed, words.shape, np.uint32)
        changed = self._changed[:len(words)]
        if previous is None:
            first = 1
        else:
            first = 0
            np.bitwise_xor(words[0], previous.view(np.uint32).reshape(-1), out=changed[0])
        np.bitwise_xor(words[1:], words[:-1], out=changed[1:])
        changed = changed[first:]
        changed &= self._mask
        # count_nonzero(axis=1) is 2x slower than summing the boolean bytes
        return np.add.reduce((changed != 0).view(np.uint8), axis=1, dtype=np.int32), first, words.shape[1]

    def _candidates(self, per_frame: np.ndarray, first: int, positions: int, bars: BatchBars | None,
                    grid: tuple[int, int]) -> tuple[_Regions | None, list[int]]:
        """The regions the frames of the batch are compared in (None: the whole grid) and the
        indices k where frame k may start a shot: the fraction of sample positions whose
        histogram bin differs from the frame before (:meth:`_changes`) reaches ``threshold -
        MARGIN``. With bars (see :class:`_Regions`) the fraction is of the positions compared
        (frames below it at the fewest positions any frame compares are ruled out at once, the
        others one by one); the changed positions are counted over the whole grid, which can only
        count more, so no cut is missed."""
        least = self.config.threshold - self.MARGIN
        candidates = np.flatnonzero(per_frame >= least * (positions if bars is None else bars.fewest)).tolist()
        if bars is None or not candidates:
            return None, [k + first for k in candidates]
        regions = _Regions(bars, grid)
        return regions, [k + first for k in candidates if per_frame[k] >= least * regions.compared(k + first)]

    def _exact(self, index: int, samples: np.ndarray, before: np.ndarray, region: tuple[int, ...]) -> list[int]:
        """Build the histograms of frames ``index - 1`` and ``index`` without ``region``'s bar
        lines and apply the cut rule."""
        bits = self.config.bits
        before_hist = self._hists.get((index - 1, region))
        if before_hist is None:
            before_hist = sample_histogram(inside(before, region), bits)
        hist = self._hists[(index, region)] = sample_histogram(inside(samples, region), bits)
        if self.config.is_cut(histogram_distance(hist, before_hist), index - self.shot_starts[-1]):
            self.shot_starts.append(index)
            return [index]
        return []


class _Regions:
    """The regions in which the frames of a batch are compared with the frame before each.

    ``bars``: each frame's bars and those of the two frames before the batch
    (:class:`~vivi.ingest.borders.BatchBars`). A frame's steady bars are those it shares with the
    frame before it (a bar lasts; a dark corner of one frame in a fade does not), and two frames
    are compared without the steady bars of either (none if that leaves nothing): bars both hold
    are left out, while bars that appear at a cut (a letterboxed clip followed by a pillarboxed
    one) add to its distance (the new black mass) instead of diluting it.

    Only the frames that may start a shot need their region, so regions are worked out when asked
    (``regions[k]``, :meth:`compared`); ``bars.fewest`` is at most the positions compared in any
    frame of the batch, which is enough to rule out the rest.
    """

    __slots__ = ("rows", "cols", "bars", "_last")

    def __init__(self, bars: BatchBars, shape: tuple[int, int]):
        self.rows, self.cols = shape
        self.bars = bars
        self._last = (None, NO_BARS)          # the frame asked last and its region (asked again for its histograms)

    def __getitem__(self, k: int) -> tuple[int, ...]:
        if self._last[0] == k:
            return self._last[1]
        two_before, before, bars = self.bars.around(k)
        # each frame's steady bars are zero where it or the frame before it has none
        both = tuple(map(max, map(min, before, two_before), map(min, bars, before)))
        if both[0] + both[1] >= self.rows or both[2] + both[3] >= self.cols:
            both = NO_BARS
        self._last = (k, both)
        return both

    def compared(self, k: int) -> int:
        """How many sample positions frame ``k`` and the frame before it are compared in."""
        top, bottom, left, right = self[k]
        return (self.rows - top - bottom) * (self.cols - left - right)


class ExactDistances:
    """Every frame's exact histogram distance to the frame before, and the cuts
    :class:`HistogramCutDetector` declares with the same ``config``: the same histograms and rule
    (:meth:`CutDetectorConfig.is_cut`), without the pre-filter, so every distance is built.

    ``push(samples)`` takes the (n, rows, cols, 4) samples of the next n frames and returns one
    ``(distance, cut)`` per frame; the first frame pushed has no distance (None) and starts the
    first shot without being a cut. :attr:`shot_starts` is as :class:`HistogramCutDetector`'s.
    """

    def __init__(self, config: CutDetectorConfig = CutDetectorConfig()):
        self.config = config
        self.shot_starts: list[int] = []
        self._previous: np.ndarray | None = None          # samples of the last frame pushed
        self._previous_hist: tuple[tuple[int, ...], np.ndarray] | None = None  # (region, its histogram)
        self._bars = GridBars()
        self._index = 0

    def push(self, samples: np.ndarray) -> list[tuple[float | None, bool]]:
        out: list[tuple[float | None, bool]] = []
        same_grid = self._previous is not None and self._previous.shape == samples.shape[1:]
        bars = self._bars(samples)
        regions = None
        if bars is not None:
            regions = _Regions(bars, samples.shape[1:3])
            bars.work_out(0, len(samples) - 1)            # every frame's region is asked: all bars at once
        for k, frame in enumerate(samples):
            region = NO_BARS if regions is None or (k == 0 and not same_grid) else regions[k]
            hist = sample_histogram(inside(frame, region), self.config.bits)
            if self._previous is None:
                self.shot_starts.append(self._index)
                out.append((None, False))
            else:
                before_region, before = self._previous_hist
                if before_region != region:
                    before = sample_histogram(inside(self._previous, region), self.config.bits)
                distance = histogram_distance(hist, before)
                cut = self.config.is_cut(distance, self._index - self.shot_starts[-1])
                if cut:
                    self.shot_starts.append(self._index)
                out.append((distance, cut))
            self._previous, self._previous_hist = frame.copy(), (region, hist)
            self._index += 1
        return out


def detect_cuts(frames, config: CutDetectorConfig = CutDetectorConfig(), max_width: int = 32) -> list[int]:
    """Frame indices at which shots start (first is 0) for PyAV frames or RGB arrays."""
    detector = HistogramCutDetector(config)
    samples = ColourSamples(max_width)
    batch: list[av.VideoFrame] = []
    for frame in frames:
        batch.append(_as_frame(frame))
        if len(batch) == MAX_BATCH:
            for _, run in samples(batch):
                detector.push(run)
            batch = []
    if batch:
        for _, run in samples(batch):
            detector.push(run)
    return detector.shot_starts
