"""Letterbox and pillarbox bars: found per frame for the cut detector, per video for the stored frames.

A film shown in a wider or narrower frame (letterbox: bars above and below; pillarbox: bars left
and right; both: windowbox) carries constant black bars. They dilute the cut detector's colour
histogram (half the frame black in both frames of a cut halves their distance) and waste the
stored frames' pixels. A bar line (row or column) is one whose luma stays at or below ``LIMIT``
(24 of 255, FFmpeg's cropdetect default: brighter is picture) and within ``FLAT`` levels of its
darkest sample: bars are flat, dark picture content (a night scene) is textured.

* Cut detection (:class:`GridBars`, ``cut_detector._Regions``): each frame's bars are found on
  the detector's own colour samples (a few array operations per batch: one comparison when no
  frame of the batch has a black corner; the bars of the batch before checked where they are
  when they last), and two consecutive frames are compared without the bars either of them has
  held for two frames. A cut from a letterboxed to a pillarboxed clip, or between two clips with
  the same bars, is then a cut between the two pictures.
* Stored frames (:class:`BorderFinder`): a line is a bar of the video when it is a bar line in
  every frame looked at, at full resolution, within ``FLAT`` levels across them (bars are
  constant; a dark scene varies from frame to frame). The frames looked at are the first frames
  kept for the dataset and, in videos longer than a minute, key frames spread over the video
  (:func:`probe_key_frames`, a seek and one key frame's decoding each), so that a compilation
  whose clips have different bars is not cropped to one clip's picture. The held frames are
  looked at together when the crop is decided; a video none of whose frames has a black corner
  has no bars, which costs four samples a frame.

A frame with less picture than ``MIN_ACTIVE`` of its height or width (a black frame, a fade)
says nothing about bars: no bars for the cut detector, no evidence for the stored frames.
"""
from __future__ import annotations

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


class GridBars:
    """:func:`grid_bars` for the consecutive batches of one video (call it with each batch's luma
    samples, in order), in a few array operations a batch: bars last, so a batch is looked at no
    more than it takes to show where they are.

    * No bars: a video without bars costs one comparison of the corners (every bar line covers
      two).
    * Steady: after two batches whose frames all had the same runs of bar lines, every frame has
      them again when each of those bar lines stays within ``FLAT`` levels above the darkest it
      showed and the picture line inside each run stays picture (one sample of it that was
      brighter than ``LIMIT`` in every frame stays so): those samples of all frames, gathered at
      once, less their lowest allowed level, compared with what each may be above it.
    * Band: otherwise each frame's lines from each edge to the first picture line after the
      longest run of the last batch looked at whole; when that line is picture in every frame,
      the band holds every frame's bar lines and their runs are exact (bars that flicker at their
      edge, a cut to other bars within the band).
    * Whole: otherwise (bars that grow, a black frame) every line of every frame.
    """

    def __init__(self, grid: tuple[int, int] | None = None):
        self._grid = grid
        self._runs: tuple[int, ...] | None = None     # the runs every frame of the last batch had, if the same
        self._uniform = 0                             # ... for how many batches in a row
        self._steady: tuple | None = None             # the steady check of _runs (:meth:`_expect`)
        self._band: tuple[int, ...] = (0, 0, 0, 0)    # the band's picture line on each side
        self._lines: tuple | None = None              # where the band's lines are (:meth:`_lay_out`)
        self._known: dict = {}                        # runs -> {count: their bars repeated, or None}

    def __call__(self, luma: np.ndarray) -> np.ndarray | None:
        count, rows, cols = luma.shape
        if self._grid != (rows, cols):
            self.__init__((rows, cols))
        if self._steady is not None:
            index, lowest, above, repeated = self._steady
            if not ((luma.reshape(count, rows * cols)[:, index] - lowest) > above).any():
                return repeated.get(count) if count in repeated else self._repeated(self._runs, count)
            self._steady, self._uniform = None, 0          # looked at more closely below
        elif (self._runs == (0, 0, 0, 0) or self._runs is None) and not _dark_corner(luma):
            self._same((0, 0, 0, 0))
            return None
        if self._lines is None:
            self._lines = self._lay_out()
        index, sides, short = self._lines
        lines = luma.reshape(count, rows * cols).T[index].reshape(len(index), -1)   # (samples of a line, (line, frame))
        flags = _BAR[lines.max(axis=0), lines.min(axis=0)].reshape(index.shape[1], count)
        flags = flags[sides]                     # (4, lines, count): per side from the edge, its picture line repeated
        if not flags[:, -1].any():               # the picture line is picture in every frame: the band holds the bars
            raw = flags.argmin(axis=1)           # (4, count): each frame's runs of bar lines
            if not (raw - raw[:, -1:]).any():    # all the same (the usual batch)
                runs = tuple(raw[:, 0].tolist())
                if self._same(runs) >= 2 and self._steady is None:
                    self._expect(luma)
                return self._repeated(runs, count)
            raw = raw.T
            self._runs, self._uniform = None, 0
            if not short:                        # no frame's bars can leave too little picture
                return raw
        else:
            raw = _raw_extents(_row_bars(luma), _col_bars(luma))
            whole = (raw[:, :2] >= rows).any(axis=1) | (raw[:, 2:] >= cols).any(axis=1)    # a black frame
            longest = raw[~whole].max(axis=0) if not whole.all() else np.zeros(4, np.int64)
            band = tuple(min(int(run), size - 1) for run, size in zip(longest, (rows, rows, cols, cols)))
            if band != self._band:
                self._band, self._lines = band, None
            self._runs, self._uniform, self._steady = None, 0, None
        raw[_too_little(raw, rows, cols)] = 0
        return raw if raw.any() else None

    def _same(self, runs: tuple[int, ...]) -> int:
        """Note that every frame of a batch had ``runs``; returns for how many batches in a row."""
        if runs != self._runs:
            self._runs, self._uniform, self._steady = runs, 0, None
        self._uniform += 1
        return self._uniform

    def _repeated(self, runs: tuple[int, ...], count: int) -> np.ndarray | None:
        """The bars of ``count`` frames that all have ``runs``: one row repeated (the same array
        for the same runs and count, so that the cut detector can reuse what it made of it)."""
        repeated = self._known.setdefault(runs, {})
        if count not in repeated:
            bars = np.array([runs])
            bars[_too_little(bars, *self._grid)] = 0
            repeated[count] = np.broadcast_to(bars[0], (count, 4)) if bars.any() else None
        return repeated[count]

    def _expect(self, luma: np.ndarray) -> None:
        """Lay out the steady check of :attr:`_runs` from the (count, rows, cols) luma of a batch
        whose frames all have them: each bar line's lowest level, and the sample of each picture
        line whose darkest over the batch is brightest (none brighter than ``LIMIT``: no check)."""
        rows, cols = self._grid
        top, bottom, left, right = self._runs
        if top + bottom >= rows or left + right >= cols:     # no picture line inside the runs
            return
        picture = _positions(self._grid, [top, rows - 1 - bottom], [left, cols - 1 - right])
        flat = luma.reshape(len(luma), rows * cols)
        darkest = flat[:, picture].min(axis=0)                               # (samples, 4) over the batch
        brightest = darkest.argmax(axis=0)
        if darkest[brightest, range(4)].min() <= LIMIT:
            return
        lines = [np.arange(r * cols, (r + 1) * cols) for r in [*range(top), *range(rows - bottom, rows)]]
        lines += [np.arange(c, rows * cols, cols) for c in [*range(left), *range(cols - right, cols)]]
        # each bar line's samples less its lowest level (at most LIMIT - FLAT) stay at most FLAT; each
        # bright sample less LIMIT + 1 stays at most 255 - LIMIT - 1 (below LIMIT + 1 it wraps around)
        lowest = [min(int(flat[:, line].min()), LIMIT - FLAT) for line in lines]
        index = np.concatenate(lines + [picture[brightest, range(4)]])
        lowest = np.repeat(np.array(lowest + [LIMIT + 1] * 4, np.uint8), [len(line) for line in lines] + [1] * 4)
        above = np.where(np.arange(len(index)) < len(index) - 4, FLAT, 255 - LIMIT - 1).astype(np.uint8)
        self._steady = index, lowest, above, self._known.setdefault(self._runs, {})

    def _lay_out(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """((samples, lines) flat positions in the grid of the band's lines, (4, n) which line is
        each side's k-th from its edge, the picture line for k past it, and whether bars within
        the band can leave too little picture)."""
        rows, cols = self._grid
        top, bottom, left, right = self._band
        lines = _positions(self._grid, [*range(top + 1), *range(rows - 1 - bottom, rows)],
                           [*range(left + 1), *range(cols - 1 - right, cols)])
        width = max(self._band) + 1
        first = np.cumsum([0, top + 1, bottom + 1, left + 1])           # each side's first line among them
        ahead = np.arange(width)
        sides = np.stack([first[0] + np.minimum(ahead, top), first[1] + bottom - np.minimum(ahead, bottom),
                          first[2] + np.minimum(ahead, left), first[3] + right - np.minimum(ahead, right)])
        short = bool(_too_little(np.array([self._band]), rows, cols)[0])
        return lines, sides, short


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
        stack = np.stack(lumas)                                     # (n, height, width), contiguous
        high, low = stack.max(axis=0), stack.min(axis=0)            # each position's brightest and darkest
        # Positions brighter than LIMIT in every frame make their rows and columns picture in every
        # frame; when they span MIN_ACTIVE of the height and of the width, every frame has picture
        # (the usual case: the statistics of all frames at once); otherwise frame by frame.
        bright = low > LIMIT
        spans = [np.flatnonzero(bright.any(axis=axis)) for axis in (1, 0)]
        if all(len(lines) and lines[-1] - lines[0] + 1 >= MIN_ACTIVE * size for lines, size in zip(spans, shape)):
            self._take((high.max(axis=1), low.min(axis=1)), (high.max(axis=0), low.min(axis=0)), shape)
            self.frames += len(lumas)
            return
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
        rows, cols = _bar_lines(*self._rows).tolist(), _bar_lines(*self._cols).tolist()
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
