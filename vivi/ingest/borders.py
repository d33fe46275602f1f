"""Letterbox and pillarbox bars: found per frame for the cut detector, per video for the stored frames.

A film shown in a wider or narrower frame (letterbox: bars above and below; pillarbox: bars left
and right; both: windowbox) carries constant black bars. They dilute the cut detector's colour
histogram (half the frame black in both frames of a cut halves their distance) and waste the
stored frames' pixels. A bar line (row or column) is one whose luma stays at or below ``LIMIT``
(24 of 255, FFmpeg's cropdetect default: brighter is picture) and within ``FLAT`` levels of its
darkest sample: bars are flat, dark picture content (a night scene) is textured.

* Cut detection (:class:`GridBars`, ``cut_detector._Regions``): each frame's bars are found on
  the detector's own colour samples, and two consecutive frames are compared without the bars
  either of them has held for two frames. A cut from a letterboxed to a pillarboxed clip, or
  between two clips with the same bars, is then a cut between the two pictures. Most batches
  cost a few array operations: one comparison when no frame has a black corner; four samples a
  frame that show no frame's bars reach past a bound laid out on an earlier batch, or on an
  earlier video of the same size (the detector rules most frames out with that bound, and only
  the frames that may start a shot get their exact bars, with those of the two frames before
  them).
* Stored frames (:class:`BorderFinder`): a line is a bar of the video when it is a bar line in
  every frame looked at, at full resolution, within ``FLAT`` levels across them (bars are
  constant; a dark scene varies from frame to frame). The frames looked at are the first frames
  kept for the dataset and, in videos longer than a minute, key frames spread over the video
  (:func:`probe_key_frames`, a seek and one key frame's decoding each), so that a compilation
  whose clips have different bars is not cropped to one clip's picture. The held frames are
  looked at together when the crop is decided (large frames first on a coarse grid, then only
  along the edges); a video none of whose frames has a black corner has no bars, which costs four
  samples a frame.

A frame with less picture than ``MIN_ACTIVE`` of its height or width (a black frame, a fade)
says nothing about bars: no bars for the cut detector, no evidence for the stored frames.
"""
from __future__ import annotations

import functools
import operator

import av
import cv2
import numpy as np

LIMIT = 24          # luma at or below this is black (FFmpeg cropdetect's ``limit`` default, 8-bit)
FLAT = 6            # a bar line's luma spans at most this many levels
MIN_ACTIVE = 0.25   # bars leave at least this fraction of the height and of the width as picture
MIN_FRAMES = 2      # frames with picture needed before a video's bars are cropped
HOLD_FRAMES = 8         # the first frames kept for the dataset are held (not stored) until the crop is known
HOLD_BYTES = 48 << 20   # ... at most this many bytes of decoded frames of them
PROBE_AFTER_S = 60.0    # videos longer than this also get key frames spread over the whole video
PROBES = 8              # how many
SMALL_FRAME = 1 << 15   # pixels up to which the held frames' statistics are taken from one stack of them
LARGE_FRAME = 1 << 17   # pixels from which they are first looked at on a coarse grid, then along the edges only
COARSE = 8              # ... every COARSE-th sample of every COARSE-th line

NO_BARS = (0, 0, 0, 0)   # a frame without bars (top, bottom, left, right)

_LUMA_PLANE = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv411p", "yuv410p",
               "nv12", "nv21", "gray"}


def _leading(bar: np.ndarray) -> np.ndarray:
    """Per row of the boolean (n, m) ``bar``: how many of its first entries are True (m if all)."""
    first_picture = np.argmin(bar, axis=1)
    return np.where(bar.all(axis=1), bar.shape[1], first_picture)


def _raw_extents(bar_rows: np.ndarray, bar_cols: np.ndarray) -> np.ndarray:
    """(n, 4) top, bottom, left, right runs of bar lines from (n, rows) and (n, cols) flags."""
    return np.stack([_leading(bar_rows), _leading(bar_rows[:, ::-1]),
                     _leading(bar_cols), _leading(bar_cols[:, ::-1])], axis=1)


def _too_little(extents: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Per frame: whether its bars leave less than ``MIN_ACTIVE`` of the height or width as picture."""
    return ((rows - extents[:, 0] - extents[:, 1] < MIN_ACTIVE * rows)
            | (cols - extents[:, 2] - extents[:, 3] < MIN_ACTIVE * cols))


def _extents(bar_rows: np.ndarray, bar_cols: np.ndarray) -> np.ndarray:
    """:func:`_raw_extents`, zero for a frame with too little picture (no bars: all picture)."""
    out = _raw_extents(bar_rows, bar_cols)
    out[_too_little(out, bar_rows.shape[1], bar_cols.shape[1])] = 0
    return out


def _lit(brightest: np.ndarray) -> tuple[int, int] | None:
    """The first and the last line whose ``brightest`` value is above ``LIMIT``; None if none is."""
    lit = (brightest > LIMIT).tobytes()              # bytes.find runs in C, a Python loop per line does not
    first = lit.find(1)
    return None if first < 0 else (first, lit.rfind(1))


def _span(brightest: np.ndarray) -> int:
    """How many lines from the first to the last whose ``brightest`` value is above ``LIMIT``."""
    lit = _lit(brightest)
    return 0 if lit is None else lit[1] - lit[0] + 1


def _run(flags: list[bool]) -> int:
    """How many of the first ``flags`` are True."""
    return flags.index(False) if False in flags else len(flags)


def _bar_lines(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    return (high <= LIMIT) & (high - low <= FLAT)


_BAR = _bar_lines(*np.mgrid[:256, :256])      # _BAR[high, low] (low <= high): _bar_lines as one look-up


def _row_bars(luma: np.ndarray) -> np.ndarray:
    """(n, rows) bool: which rows of the (n, rows, cols) uint8 luma of n frames are bar lines."""
    # numpy reduces a short axis at ~100 ns a line: the lines are laid out along the long axis first
    count, rows, cols = luma.shape
    by_row = cv2.transpose(np.ascontiguousarray(luma).reshape(count * rows, cols))     # (cols, count * rows)
    return _bar_lines(by_row.max(axis=0), by_row.min(axis=0)).reshape(count, rows)


def _col_bars(luma: np.ndarray) -> np.ndarray:
    """(n, cols) bool: which columns of the (n, rows, cols) uint8 luma of n frames are bar lines."""
    count, rows, cols = luma.shape
    by_col = luma.transpose(1, 0, 2).reshape(rows, count * cols)
    return _bar_lines(by_col.max(axis=0), by_col.min(axis=0)).reshape(count, cols)


def _dark_corner(luma: np.ndarray) -> bool:
    """Whether a corner of any of the (n, rows, cols) frames is black: every bar line covers two."""
    return luma[:, ::luma.shape[1] - 1 or 1, ::luma.shape[2] - 1 or 1].min() <= LIMIT


def grid_bars(luma: np.ndarray) -> np.ndarray | None:
    """(n, 4) int bars (top, bottom, left, right, in grid rows and columns) of the (n, rows, cols)
    uint8 luma samples of n frames; None when no frame has a bar (then every frame is all picture).
    The cut detector finds the same with :class:`GridBars`, batch after batch."""
    if not _dark_corner(luma):
        return None
    bars = _extents(_row_bars(luma), _col_bars(luma))
    return bars if bars.any() else None


_ARMED: dict = {}      # per (rows, cols[, channels]): the check and band laid out last (GridBars._reuse)


def _left(grid: tuple[int, int], bound: tuple[int, ...]) -> int:
    """How many positions of the (rows, cols) ``grid`` are left without ``bound``'s lines (at least 1)."""
    return max(1, grid[0] - bound[0] - bound[1]) * max(1, grid[1] - bound[2] - bound[3])


class BatchBars:
    """The bars of the frames of one batch, as the cut detector asks for them.

    ``bars[k]`` is frame k's (top, bottom, left, right) bars in grid lines ((0, 0, 0, 0): none),
    for k from -2 (two frames before the batch) to ``count - 1``; :attr:`bound` is at least every
    bar of frames -1 to ``count - 1``, side by side, and :attr:`fewest` the grid positions it
    leaves (at least 1): no two consecutive frames of the batch are compared in fewer (a frame's
    region is within its own bars and those of the frame before it), which is what the
    pre-filter needs to rule frames out without asking each. ``rows`` is a sequence of the
    batch's bars or a :class:`_Later`; ``before`` the bars of frames -2 and -1, each a tuple or a
    ``(later, j)`` pair.
    """

    __slots__ = ("bound", "fewest", "_rows", "_before")

    def __init__(self, rows, before: tuple, bound: tuple[int, ...], grid: tuple[int, int], fewest: int = 0):
        self._rows, self._before, self.bound = rows, before, bound
        self.fewest = fewest or _left(grid, bound)

    def __getitem__(self, k: int) -> tuple[int, ...]:
        if k >= 0:
            return self._rows[k]
        bars = self._before[k]
        return bars if isinstance(bars[0], int) else bars[0][bars[1]]

    def work_out(self, first: int, last: int) -> None:
        """Work out together the bars that the regions of frames ``first`` to ``last`` depend on
        (those of frames ``first - 2`` to ``last``), where they are to be worked out."""
        if isinstance(self._rows, _Later):
            self._rows.work_out(first - 2, last + 1)

    def around(self, k: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The bars of frames ``k - 2``, ``k - 1`` and ``k`` (those a frame's region depends on)."""
        self.work_out(k, k)
        return self[k - 2], self[k - 1], self[k]


class _Steady(BatchBars):
    """The bars of a batch whose bound held as on the batch before, where nothing but the bound
    was laid out: its frames' bars and those of the two frames before it (``kept``: their
    :class:`_Later`, or their samples) are looked at in the band ``lines`` when first asked."""

    __slots__ = ("_samples", "_lines", "_kept")

    def __init__(self, samples: np.ndarray, lines: tuple, kept, bound: tuple[int, ...], fewest: int):
        self._samples, self._lines, self._kept, self.bound, self.fewest = samples, lines, kept, bound, fewest
        self._rows = self._before = None

    def _prepare(self) -> None:
        kept = self._kept if isinstance(self._kept, _Later) else _Later(self._kept, self._lines)
        self._rows, self._before = _Later(self._samples, self._lines, kept), ((kept, -2), (kept, -1))

    def __getitem__(self, k: int) -> tuple[int, ...]:
        if self._rows is None:
            self._prepare()
        return BatchBars.__getitem__(self, k)

    def work_out(self, first: int, last: int) -> None:
        if self._rows is None:
            self._prepare()
        BatchBars.work_out(self, first, last)


class _Later:
    """The bars of some frames, worked out when asked from their samples (``samples``: (n, rows,
    cols) luma, or (n, rows, cols, channels) samples with luma first; ``layout``: :func:`_lay_out`
    of a band whose picture lines are picture in every one of them, so that each frame's bars are
    its runs of bar lines inside the band). ``before``: the :class:`_Later` of the frames just
    before these, laid out alike, if any. The cut detector asks only for the frames around one
    that may start a shot: :meth:`work_out` takes them together, with those of ``before`` they
    need (an array operation costs about the same for one frame as for three)."""

    __slots__ = ("_samples", "_layout", "_rows", "_before")

    def __init__(self, samples: np.ndarray, layout: tuple, before: _Later | None = None):
        self._samples, self._layout, self._rows, self._before = samples, layout, {}, before

    def _known(self, k: int) -> bool:
        if k >= 0:
            return k in self._rows
        return k + len(self._before._samples) in self._before._rows

    def work_out(self, start: int, stop: int) -> None:
        """Work out the bars of frames ``start`` to ``stop - 1`` that are not known yet (from 0;
        below 0, the last frames of ``before``, as far as it has them)."""
        before = self._before
        start = max(start, 0 if before is None else -len(before._samples))
        while start < stop and self._known(start):
            start += 1
        while stop > start and self._known(stop - 1):
            stop -= 1
        if start == stop:
            return
        if start < 0:
            samples = np.concatenate((before._samples[start:], self._samples[:max(stop, 0)]))
        else:
            samples = self._samples[start:stop]
        runs = _band_runs(samples, self._layout)
        if self._layout[2]:                          # bars within the band can leave too little picture
            runs[_too_little(runs, *samples.shape[1:3])] = 0
        for k, bars in zip(range(start, stop), map(tuple, runs.tolist())):
            if k >= 0:
                self._rows[k] = bars
            else:
                before._rows[k + len(before._samples)] = bars

    def __getitem__(self, k: int) -> tuple[int, ...]:
        if k < 0:
            k += len(self._samples)
        bars = self._rows.get(k)
        if bars is None:
            self.work_out(k, k + 1)
            bars = self._rows[k]
        return bars


class GridBars:
    """Each frame's bars on the cut detector's samples (:func:`grid_bars`, frame by frame), for the
    consecutive batches of one video: call it with each batch's (count, rows, cols) uint8 luma, in
    order; it returns a :class:`BatchBars`, or None when neither a frame of the batch nor the frame
    before it has bars (every region is then the whole grid).

    Bars last, so most batches cost a few samples, whatever they hold:

    * Bounded: on a batch with a black corner, each side's first line from its edge that holds
      a position brighter than ``LIMIT`` in every frame, and the brightest such position of each
      (four samples), are laid out (:meth:`_arm`). While those four samples stay brighter than
      ``LIMIT`` in every frame, no frame's bars reach those lines (a bright sample makes its line
      picture): that bound is all the cut detector needs to rule out most frames, and a frame's
      exact bars (its runs of bar lines inside the band the four lines close) are worked out only
      when asked, for frames that may start a shot. The last two frames' luma is kept for the
      next batch's first frames. A batch whose bound holds as on the batch before costs the
      four samples and one object (:class:`_Steady`). When a sample turns dark, the four are
      laid out again. A video's first batch tries the four samples laid out last on frames of
      its size (a collection's videos mostly share sizes and bars) before laying out its own
      (:meth:`_reuse`).
    * No bars: a batch none of whose frames has a black corner has none (every bar line covers
      two corners): one comparison.
    * Band: a batch with no position brighter than ``LIMIT`` in all its frames (a black frame, a
      fade to black) is looked at frame by frame: each frame's lines from each edge to the band's
      picture lines; when those are picture in every frame, the band holds every frame's bar
      lines and their runs are exact.
    * Whole: otherwise every line of every frame.
    """

    def __init__(self, frame: tuple[int, ...] | None = None):
        self._frame = frame                           # (rows, cols) of the luma given, or (rows, cols, channels)
        self._grid = None if frame is None else frame[:2]
        self._channels = 1 if frame is None or len(frame) == 2 else frame[2]     # bytes a position
        self._before: tuple = (NO_BARS, NO_BARS)      # the bars of the last two frames seen (BatchBars)
        self._bound = NO_BARS                         # ... at least those of the last
        self._band: tuple[int, ...] = NO_BARS         # each side's first line known to be picture (the bound)
        self._lines: tuple | None = None              # where the band's lines are (_lay_out)
        self._kept = None                             # the last two frames of the last batch looked at in the band
        #                                               (a _Later, or their samples after a steady batch)
        self._steady = False                          # the last batch was looked at in the band, as is this one's
        self._fewest = (None, 0)                      # a band and the grid positions it leaves (BatchBars.fewest)
        self._check: list | None = None               # the bounded check's four (row, column) positions
        self._checks: dict = {}                       # frames in a batch -> an itemgetter of them in each

    def __call__(self, samples: np.ndarray, kept: np.ndarray | None = None) -> BatchBars | None:
        """The bars of the batch whose (count, rows, cols) uint8 luma is given, or its (count,
        rows, cols, channels) samples with luma first (the cut detector's: the whole array is
        reduced faster than its luma alone); ``kept``: a copy of its last two frames' luma (one if
        it has one) that the caller leaves unchanged until the next call (the detector keeps one
        anyway; luma or samples as ``samples``), else the last two are copied here."""
        count = len(samples)
        if self._steady and count > 1 and self._frame == samples.shape[1:] and self._darkest(samples) > LIMIT:
            # the usual batch: the bound holds as on the batch before, and nothing else is needed now
            previous = self._kept
            self._kept = samples[-2:].copy() if kept is None else kept
            return _Steady(samples, self._lines, previous, self._band, self._fewest[1])
        self._settle()
        if self._frame != samples.shape[1:]:
            if self._grid == samples.shape[1:3]:        # the same grid, given as luma or as samples
                self._frame, self._lines, self._checks = samples.shape[1:], None, {}
                self._channels = samples.shape[3] if samples.ndim == 4 else 1
            else:
                self.__init__(samples.shape[1:])
        before, bound, check = self._before, self._bound, self._check
        if check is None:
            if not _dark_corner(samples[..., 0] if samples.ndim == 4 else samples):
                return self._none(count, before, bound)
            if not self._reuse(samples) and not self._arm(samples):
                return self._whole(samples, before, bound)
        elif self._darkest(samples) <= LIMIT and not self._arm(samples):
            return self._whole(samples, before, bound)
        band = self._band
        if band == NO_BARS:                              # each edge line is picture in every frame
            return self._none(count, before, bound)
        lines = self._lines
        if lines is None:
            lines = self._lines = _lay_out(self._grid, band, self._channels)
        previous = self._kept                             # the last frames of the batch before, if laid out alike
        # this batch's last two frames: the next batch's frames -2 and -1
        last = self._kept = _Later(samples[-2:].copy() if kept is None else kept, lines)
        self._before = ((last, -2), (last, -1)) if count > 1 else (before[-1], (last, -1))
        self._bound = band
        batch = _Later(samples, lines, previous if previous is not None and previous._layout is lines else None)
        self._steady = count > 1 and bound == band
        if bound == band:                                 # the bound it had, and its fewest
            if self._fewest[0] != band:
                self._fewest = (band, _left(self._grid, band))
            return BatchBars(batch, before, band, self._grid, self._fewest[1])
        return BatchBars(batch, before, tuple(map(max, band, bound)), self._grid)

    def _settle(self) -> None:
        """After steady batches: the last one's two frames as the next batch's frames -2 and -1."""
        if self._steady and not isinstance(self._kept, _Later):
            last = self._kept = _Later(self._kept, self._lines)
            self._before = ((last, -2), (last, -1))
        self._steady = False

    def _reuse(self, samples: np.ndarray) -> bool:
        """Take the check laid out last on a batch of this size (the videos of a collection
        mostly share their sizes and bars) if its samples are lit in every frame of this one."""
        armed = _ARMED.get(self._frame)
        if armed is None:
            return False
        self._check, self._band, self._checks, self._lines = armed[0], armed[1], {}, None
        if self._darkest(samples) > LIMIT:
            return True
        self._check = None
        return False

    def _darkest(self, samples: np.ndarray) -> int:
        """The darkest of the bounded check's samples in the frames of ``samples`` (luma, or
        samples with luma first, as :meth:`__call__` takes them): read by one ``itemgetter`` from
        the bytes of a contiguous batch (right after the decoder ran, that costs a few
        microseconds where a numpy gather costs tens), else gathered by numpy."""
        try:
            data = memoryview(samples).cast("B")
        except TypeError:                                # not contiguous
            luma = samples[..., 0] if samples.ndim == 4 else samples
            rows, cols = zip(*self._check)
            return int(luma[:, list(rows), list(cols)].min())
        count = len(samples)
        read = self._checks.get(count)
        if read is None:
            frame, channels = samples[0].size, self._channels
            offsets = [(row * self._grid[1] + col) * channels for row, col in self._check]
            read = self._checks[count] = operator.itemgetter(
                *[k * frame + offset for k in range(count) for offset in offsets])    # four or more: a tuple
        return min(read(data))

    def _none(self, count: int, before: tuple, bound: tuple[int, ...]) -> BatchBars | None:
        """A batch none of whose frames has bars."""
        self._keep(count, (NO_BARS, NO_BARS), NO_BARS)
        return None if bound == NO_BARS else BatchBars([NO_BARS] * count, before, bound, self._grid)

    def _whole(self, samples: np.ndarray, before: tuple, bound: tuple[int, ...]) -> BatchBars | None:
        """Every frame's exact bars, looked at in the band or whole (:meth:`_look`)."""
        count, rows, cols = samples.shape[:3]
        runs = self._look(samples)
        runs[_too_little(runs, rows, cols)] = 0
        listed = [tuple(r) for r in runs.tolist()]
        self._keep(count, tuple(listed[-2:]), listed[-1])
        batch_bound = tuple(map(max, runs.max(axis=0).tolist(), bound))
        return None if batch_bound == NO_BARS else BatchBars(listed, before, batch_bound, self._grid)

    def _keep(self, count: int, last: tuple, bound: tuple[int, ...]) -> None:
        """Note the bars of the batch's last two frames (one for a batch of one frame) and a bound
        of the very last's."""
        self._before = last if count > 1 else (self._before[-1], last[-1])
        self._bound, self._kept, self._steady = bound, None, False

    def _arm(self, samples: np.ndarray) -> bool:
        """Lay out the bounded check on a batch (its luma or samples, as :meth:`__call__` takes
        them): each side's first line from its edge that holds a position brighter than ``LIMIT``
        in every frame (no frame's bars reach it), and of each, the position whose darkest over
        the batch is brightest. False when no position is (a black frame): no check."""
        rows, cols = self._grid
        darkest = samples.min(axis=0)                    # (rows, cols): each position's darkest over the batch
        if darkest.ndim == 3:
            darkest = darkest[..., 0]
        lit_rows = _lit(darkest.max(axis=1))            # ... and of each line, its brightest
        if lit_rows is None:
            self._check = None
            return False
        (top, low), (left, high) = lit_rows, _lit(darkest.max(axis=0))
        bottom, right = rows - 1 - low, cols - 1 - high
        across, down = darkest[[top, low]].argmax(axis=1).tolist(), darkest[:, [left, high]].argmax(axis=0).tolist()
        self._check = [(top, across[0]), (low, across[1]), (down[0], left), (down[1], high)]
        self._checks = {}
        if (top, bottom, left, right) != self._band:
            self._band, self._lines = (top, bottom, left, right), None
        _ARMED[self._frame] = (self._check, self._band)
        return True

    def _look(self, samples: np.ndarray) -> np.ndarray:
        """(count, 4) runs of bar lines of every frame from each edge: inside the band when its
        picture lines are picture in every frame, else from every line (and the band moves to
        the picture lines after the longest runs)."""
        if self._lines is None:
            self._lines = _lay_out(self._grid, self._band, self._channels)
        runs = _band_runs(samples, self._lines, checked=False)
        if runs is not None:
            return runs
        luma = samples[..., 0] if samples.ndim == 4 else samples
        rows, cols = self._grid
        runs = _raw_extents(_row_bars(luma), _col_bars(luma))
        whole = (runs[:, :2] >= rows).any(axis=1) | (runs[:, 2:] >= cols).any(axis=1)    # a black frame
        longest = runs[~whole].max(axis=0) if not whole.all() else np.zeros(4, np.int64)
        band = tuple(min(int(run), size - 1) for run, size in zip(longest, (rows, rows, cols, cols)))
        if band != self._band:
            self._band, self._lines = band, None
        return runs


def _band_runs(samples: np.ndarray, layout: tuple, checked: bool = True) -> np.ndarray | None:
    """(count, 4) runs of bar lines of each frame inside the band laid out by :func:`_lay_out`, from
    the frames' (count, rows, cols) luma or (count, rows, cols, channels) samples with luma first
    (as many channels as laid out for); None when a picture line of the band is not picture in
    some frame (unless ``checked``: known to be)."""
    index, width, _ = layout
    count = len(samples)
    # one gather of bytes, (count, samples of a line, line): numpy's fancy indexing into the 4-d
    # samples takes twice as long
    lines = np.take(samples.reshape(count, -1), index, axis=1)
    # (count, side, k-th line from its edge)
    flags = _BAR[lines.max(axis=1), lines.min(axis=1)].reshape(count, 4, width)
    if not checked and flags[:, :, -1].any():                         # ... the picture line repeated past the band
        return None
    return flags.argmin(axis=2)


@functools.lru_cache(maxsize=64)       # the videos of a collection share their sizes and bars
def _lay_out(grid: tuple[int, int], band: tuple[int, ...], channels: int = 1) -> tuple[np.ndarray, int, bool]:
    """((samples, 4 * width) positions among a frame's bytes (``channels`` bytes a position of the
    (rows, cols) ``grid``, luma first) of each side's ``width`` lines from its edge: the lines of
    ``band`` (``band[side]`` lines in), then its picture line repeated; ``width``; and whether bars
    within the band can leave too little picture)."""
    rows, cols = grid
    top, bottom, left, right = band
    width = max(band) + 1
    ahead = range(width)
    lines = channels * _positions(
        grid, [min(k, top) for k in ahead] + [rows - 1 - min(k, bottom) for k in ahead],
        [min(k, left) for k in ahead] + [cols - 1 - min(k, right) for k in ahead])
    lines.flags.writeable = False                   # shared by every video with this grid and band
    return lines, width, bool(_too_little(np.array([band]), rows, cols)[0])


def _positions(grid: tuple[int, int], rows: list[int], cols: list[int]) -> np.ndarray:
    """(samples, lines) flat positions in the (rows, cols) ``grid`` of these rows, then these
    columns, one line a column of the result: the shorter lines repeat their last sample (which
    changes neither their brightest nor their darkest), so that one reduction over the first
    axis takes every line's."""
    height, width = grid
    length = max(height, width)
    across, down = np.minimum(np.arange(length), width - 1), np.minimum(np.arange(length), height - 1)
    return np.concatenate([np.array(rows, np.int64)[None] * width + across[:, None],
                           down[:, None] * width + np.array(cols, np.int64)[None]], axis=1)


def inside(samples: np.ndarray, region: tuple[int, ...]) -> np.ndarray:
    """The (rows, cols, ...) ``samples`` without ``region``'s (top, bottom, left, right) lines."""
    top, bottom, left, right = region
    return samples[top:samples.shape[0] - bottom, left:samples.shape[1] - right]


def frame_luma(frame: av.VideoFrame) -> np.ndarray:
    """(height, width) uint8 luma of a decoded frame (its Y plane where it has one, else converted)."""
    if frame.format.name in _LUMA_PLANE:
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:frame.height, :frame.width]
    return frame.reformat(format="gray", threads=1).to_ndarray()


class BorderFinder:
    """The bars of one video, from the luma of some of its frames (:meth:`add`, :meth:`add_frames`);
    :meth:`crop` gives the picture's rectangle. Only each line's brightest and darkest value over
    the frames is kept."""

    def __init__(self):
        self.frames = 0
        self._rows: tuple[np.ndarray, np.ndarray] | None = None    # (brightest, darkest) of each row
        self._cols: tuple[np.ndarray, np.ndarray] | None = None
        self.shape: tuple[int, int] | None = None
        self._pictured = False      # every edge line was picture in a frame with picture: no bars, whatever comes

    def add(self, luma: np.ndarray) -> None:
        """Take one frame's (height, width) luma; a frame with too little picture is ignored."""
        self.add_frames([luma])

    def add_frames(self, lumas: list[np.ndarray]) -> None:
        """Take frames' (height, width) luma, in order, as many :meth:`add` calls would; the
        statistics of each run of frames of one size are taken over the whole run at once (a few
        array operations per video rather than per frame)."""
        start = 0
        while start < len(lumas) and self.frames >= 0:
            shape = lumas[start].shape
            end = start + 1
            while end < len(lumas) and lumas[end].shape == shape:
                end += 1
            self._add_run(lumas[start:end])
            start = end

    def _add_run(self, lumas: list[np.ndarray]) -> None:
        shape = lumas[0].shape
        if self.shape is not None and shape != self.shape:    # the geometry changed: no crop
            self.frames, self._rows = -1, None
            return
        if self._pictured or all(min(luma[0, 0], luma[0, -1], luma[-1, 0], luma[-1, -1]) > LIMIT for luma in lumas):
            # no black corner: no edge line is a bar line and each frame has picture from edge to
            # edge, so the crop is none (the usual video, at the cost of four samples a frame)
            self.shape, self._pictured = shape, True
            self.frames += len(lumas)
            return
        if shape[0] * shape[1] >= LARGE_FRAME and self._add_edges(lumas, shape):
            return
        stack = None
        if shape[0] * shape[1] <= SMALL_FRAME:                      # each position's brightest and darkest
            stack = np.array(lumas)                                 # (n, height, width), one copy
            high, low = stack.max(axis=0), stack.min(axis=0)
        else:                                                       # (OpenCV, frame by frame: no copy of all)
            high, low = lumas[0].copy(), lumas[0].copy()
            for luma in lumas[1:]:
                cv2.max(high, luma, dst=high)
                cv2.min(low, luma, dst=low)
        # Positions brighter than LIMIT in every frame make their rows and columns picture in every
        # frame; when they span MIN_ACTIVE of the height and of the width, every frame has picture
        # (the usual case: the statistics of all frames at once); otherwise frame by frame.
        if all(_span(low.max(axis=axis)) >= MIN_ACTIVE * size for axis, size in zip((1, 0), shape)):
            self._take((high.max(axis=1), low.min(axis=1)), (high.max(axis=0), low.min(axis=0)), shape)
            self.frames += len(lumas)
            return
        if stack is None:
            stack = np.array(lumas)                                 # (n, height, width), contiguous
        count, height, width = stack.shape
        # rows of narrow frames: along the long axis after a transpose (see _row_bars; wider rows
        # are long enough as they are); columns: numpy reduces the middle axis whole lines at a time
        if width < 512:
            by_row = cv2.transpose(stack.reshape(count * height, width))
            rows = (by_row.max(axis=0).reshape(count, height), by_row.min(axis=0).reshape(count, height))
        else:
            rows = (stack.max(axis=2), stack.min(axis=2))
        cols = (stack.max(axis=1), stack.min(axis=1))
        evidence = np.ones(count, bool)                        # a black frame, a fade: no evidence either way
        for (high, low), size in zip((rows, cols), shape):
            picture = ~_bar_lines(high, low)
            first, last = np.argmax(picture, axis=1), size - 1 - np.argmax(picture[:, ::-1], axis=1)
            evidence &= picture.any(axis=1) & (last - first + 1 >= MIN_ACTIVE * size)
        if not evidence.any():
            return
        if not evidence.all():
            rows, cols = [(high[evidence], low[evidence]) for high, low in (rows, cols)]
        self._take(*[(high.max(axis=0), low.min(axis=0)) for high, low in (rows, cols)], shape)
        self.frames += int(evidence.sum())

    def _add_edges(self, lumas: list[np.ndarray], shape: tuple[int, int]) -> bool:
        """The statistics of large frames that all have picture, from the lines along the edges
        only; False (nothing taken) unless a coarse look shows that every frame has picture.

        On the coarse grid (every ``COARSE``-th sample of every ``COARSE``-th line), positions
        brighter than ``LIMIT`` in every frame that span ``MIN_ACTIVE`` of the height and of the
        width show that every frame has picture, as in :meth:`_add_run`. The first coarse line
        from each edge with a position brighter than ``LIMIT`` in some frame is no bar line, so
        the video's bars end before it: only the lines between it and the edge are looked at in
        full; the lines past it are noted as picture (no run of bar lines from an edge reaches
        them, now or once more frames are merged)."""
        height, width = shape
        coarse = np.array([luma[::COARSE, ::COARSE] for luma in lumas])       # from the top left
        darkest = coarse.min(axis=0)
        lit = [_lit(darkest.max(axis=axis)) for axis in (1, 0)]
        if any(span is None or (span[1] - span[0]) * COARSE + 1 < MIN_ACTIVE * size for span, size in zip(lit, shape)):
            return False
        brightest = coarse.max(axis=0)
        top, left = _lit(brightest.max(axis=1))[0], _lit(brightest.max(axis=0))[0]
        brightest = np.array([luma[::-COARSE, ::-COARSE] for luma in lumas]).max(axis=0)    # from the bottom right
        ends = _lit(brightest.max(axis=1)), _lit(brightest.max(axis=0))
        if None in ends:                                 # no lit position on this grid: look at everything
            return False
        bottom, right = ends[0][0], ends[1][0]
        rows = (np.full(height, 255, np.uint8), np.zeros(height, np.uint8))     # (brightest, darkest): picture
        cols = (np.full(width, 255, np.uint8), np.zeros(width, np.uint8))
        for start, stop in ((0, top * COARSE), (height - bottom * COARSE, height)):
            if start < stop:
                edge = np.array([luma[start:stop] for luma in lumas])         # (n, lines, width)
                rows[0][start:stop], rows[1][start:stop] = edge.max(axis=(0, 2)), edge.min(axis=(0, 2))
        for start, stop in ((0, left * COARSE), (width - right * COARSE, width)):
            if start < stop:
                edge = np.array([luma[:, start:stop] for luma in lumas])      # (n, height, lines)
                cols[0][start:stop], cols[1][start:stop] = edge.max(axis=(0, 1)), edge.min(axis=(0, 1))
        self._take(rows, cols, shape)
        self.frames += len(lumas)
        return True

    def _take(self, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray], shape) -> None:
        """Merge the (brightest, darkest) of each row and column of frames with picture."""
        self.shape = shape
        if self._rows is None:
            self._rows, self._cols = rows, cols
        else:
            for kept, new in ((self._rows, rows), (self._cols, cols)):
                np.maximum(kept[0], new[0], out=kept[0])
                np.minimum(kept[1], new[1], out=kept[1])

    def crop(self) -> tuple[int, int, int, int] | None:
        """(x, y, width, height) of the picture inside the bars, even numbers (4:2:0 chroma stays
        aligned), or None: no bars, fewer than ``MIN_FRAMES`` frames with picture, or bars that
        would leave less than ``MIN_ACTIVE`` of a side."""
        if self.frames < MIN_FRAMES or self._rows is None or self._pictured:
            return None
        rows, cols = _BAR[self._rows[0], self._rows[1]].tolist(), _BAR[self._cols[0], self._cols[1]].tolist()
        top, bottom, left, right = _run(rows), _run(rows[::-1]), _run(cols), _run(cols[::-1])
        height, width = self.shape
        if height - top - bottom < MIN_ACTIVE * height or width - left - right < MIN_ACTIVE * width:
            return None                 # too little picture: no bars (as _extents)
        if not (top or bottom or left or right):
            return None
        x, y = left + left % 2, top + top % 2                      # inward to even lines
        x2, y2 = (width - right) // 2 * 2, (height - bottom) // 2 * 2
        if x2 - x < MIN_ACTIVE * width or y2 - y < MIN_ACTIVE * height:
            return None
        if (x, y, x2, y2) == (0, 0, width, height):
            return None
        return int(x), int(y), int(x2 - x), int(y2 - y)


def probe_key_frames(path: str, finder: BorderFinder) -> int:
    """Add to ``finder`` the luma of up to ``PROBES`` key frames spread over the video ``path``
    (seek, then decode key frames only, until one comes out) when it is longer than
    ``PROBE_AFTER_S``; returns how many were added. Best effort: a file that cannot seek, or any
    error, adds fewer or none (the main pass reports what is wrong with the file)."""
    added, seen = 0, set()
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            duration = container.duration / av.time_base if container.duration else 0.0
            if duration <= PROBE_AFTER_S or not stream.time_base:
                return 0
            stream.thread_count = 1
            stream.codec_context.skip_frame = "NONKEY"
            decode = stream.codec_context.decode
            for k in range(PROBES):
                frames = []
                target = duration * (k + 0.5) / PROBES
                container.seek((stream.start_time or 0) + int(target / stream.time_base), stream=stream,
                               backward=True)
                stream.codec_context.flush_buffers()
                for count, packet in enumerate(container.demux(stream)):
                    frames = decode(packet)
                    if frames or count > 64:
                        break
                for frame in frames:
                    if frame.pts not in seen:
                        seen.add(frame.pts)
                        finder.add(frame_luma(frame))
                        added += 1
    except (av.error.FFmpegError, ValueError, IndexError, OSError):
        pass
    return added


def crop_frame(frame: av.VideoFrame, crop: tuple[int, int, int, int]) -> av.VideoFrame:
    """A new 4:2:0 frame holding the ``crop`` (x, y, width, height; even numbers) of ``frame``,
    with its colour space and range (frames of other formats are converted to 4:2:0 first)."""
    return FrameCrop(crop)(frame)


class FrameCrop:
    """:func:`crop_frame` for the frames of one video, one at a time: each call returns the same
    frame, refilled (one copy per plane), so it is to be used before the next call."""

    def __init__(self, crop: tuple[int, int, int, int]):
        self.crop = crop
        self._out: av.VideoFrame | None = None
        self._into: list[np.ndarray] = []

    def __call__(self, frame: av.VideoFrame) -> av.VideoFrame:
        x, y, width, height = self.crop
        if frame.format.name not in ("yuv420p", "yuvj420p"):
            frame = frame.reformat(format="yuv420p", threads=1)
        out = self._out
        if out is None or out.format.name != frame.format.name:
            out = self._out = av.VideoFrame(width, height, frame.format.name)
            self._into = [np.ndarray((height >> shift, width >> shift), np.uint8, plane, 0, (plane.line_size, 1))
                          for shift, plane in zip((0, 1, 1), out.planes)]
        for shift, plane, into in zip((0, 1, 1), frame.planes, self._into):
            into[...] = np.ndarray(into.shape, np.uint8, plane, (y >> shift) * plane.line_size + (x >> shift),
                                   (plane.line_size, 1))
        out.colorspace, out.color_range = frame.colorspace, frame.color_range
        return out
