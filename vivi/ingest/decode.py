"""One decode pass over a video with PyAV: shot cuts at the native frame rate, frames sampled in shots.

Every frame has to be decoded once (the cut detector looks at all of them, so that short shots are
not lost); everything else is kept off the per-frame path. Decoded frames are handled in small
batches: the detector reads their colour samples straight off the decoded Y/Cb/Cr planes (no
colour conversion) with a few array operations per batch (``cut_detector.py``), then the sampler
walks the batch's time stamps, and only the frames sampled for the dataset (1 Hz by default) are
converted, resized to the stored size, turned as the video is shown (``display.py``: phone
videos upright, non-square pixels at their shape) and JPEG-encoded, for small videos on an
otherwise idle core (:func:`threading_plan`). Measurements: docs/benchmarks.md, "Ingest".
"""
from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from ..threads import OtherProcesses
from .borders import HOLD_BYTES, HOLD_FRAMES, PROBE_AFTER_S, BorderFinder, FrameCrop, frame_luma, probe_key_frames
from .cut_detector import ColourSamples, CutDetectorConfig, HistogramCutDetector, batch_size
from .display import Display, frame_display

# A video whose decoder rejects more than this fraction of its packets fails; below, the damaged
# packets are skipped (as the ffmpeg command line does) and the frames they spoil are not stored.
MAX_DAMAGED = 0.05


class VideoError(Exception):
    """A video that cannot be ingested; the message says why (written to the failures report)."""


@dataclass(frozen=True)
class SamplingConfig:
    sample_fps: float = 1.0        # frames kept per second inside each shot (VIVI: 1 Hz)
    short_side: int = 256          # stored frames are resized so the shorter side is this (never upscaled)
    jpeg_quality: int = 90         # JPEG quality of stored frames
    histogram_width: int = 32      # about this many chroma columns sampled for the cut detector (few are enough)
    keep_borders: bool = False     # store frames with their letterbox/pillarbox bars (default: cropped, borders.py)
    cuts: CutDetectorConfig = field(default_factory=CutDetectorConfig)

    def __post_init__(self):
        checks = [("fps", self.sample_fps, "a finite number > 0", self.sample_fps > 0),
                  ("short side", self.short_side, ">= 16", self.short_side >= 16),
                  ("JPEG quality", self.jpeg_quality, "1-100", 1 <= self.jpeg_quality <= 100),
                  ("histogram width", self.histogram_width, ">= 1", self.histogram_width >= 1)]
        wrong = [f"{name} {value} ({allowed})" for name, value, allowed, ok in checks
                 if not (ok and math.isfinite(value))]
        if wrong:
            raise ValueError(f"sampling settings out of range: {', '.join(wrong)}")


@dataclass
class DecodedVideo:
    """What one pass over a video produced: the record of the dataset and the JPEG bytes of its frames."""
    fps: float
    width: int
    height: int
    num_native_frames: int
    duration_s: float
    shot_starts: list[int]           # native frame index where each shot starts (first is 0)
    shot_starts_s: list[float]       # the same in seconds from the first frame
    frame_times_s: list[float]       # time of every sampled frame, seconds from the first frame
    frame_native_index: list[int]    # native frame index of every sampled frame
    frame_shot: list[int]            # shot index of every sampled frame
    frame_size: tuple[int, int]      # (height, width) of the stored frames
    display: Display                 # how the decoded frames were turned to be stored as shown
    damaged_packets: int             # packets the decoder rejected (skipped)
    unclean_frames: int              # frames after a damaged packet until the next key frame, or flagged corrupt
    jpegs: list[bytes]
    crop: tuple[int, int, int, int] | None = None   # (x, y, w, h) of the decoded frame stored; None: all of it


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``short_side`` (no upscaling), even sizes."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def decode_video(path: str | Path, config: SamplingConfig = SamplingConfig(), threads: int = 0) -> DecodedVideo:
    """Decode ``path`` once, find its shots and sample frames inside each shot.

    Sampling: inside a shot starting at time s, the frames kept are the first frames at or after
    s, s + 1/r, s + 2/r, ... (r = ``sample_fps``) that lie before the next cut. Raises
    :class:`VideoError` naming the problem for anything that is not a decodable video.

    ``threads``: decoder threads; 0 chooses (:func:`threading_plan`), which may also JPEG-encode
    the kept frames in a second thread. Ingest passes 1 when its worker processes already occupy
    every core: one thread, nothing aside.
    """
    container, stream, fps, width, height = open_video(path)
    finder = None if config.keep_borders else BorderFinder()
    if finder is not None and container.duration and container.duration / av.time_base > PROBE_AFTER_S:
        probe_key_frames(str(path), finder)
    with container:
        threads, encode_aside = threading_plan(width, height, threads)
        set_decoder_threads(stream, threads)
        samples, detector = ColourSamples(config.histogram_width), HistogramCutDetector(config.cuts)
        # Batches: the detector's cost is per batch, not per frame (cut_detector.py).
        frames = PacketFrames(container, stream, batch_size(width, height, threaded=threads != 1))
        # The sampled frames have their own reformatter: each keeps its swscale context (switching
        # geometry on one rebuilds it); the detector's samples keep theirs for other formats.
        # (Made just before the ``try`` whose ``finally`` ends its encoding thread, if any.)
        sampler = _Sampler(stream, config.short_side, 1.0 / config.sample_fps, config.jpeg_quality,
                           stream_time_base(stream), fps, encode_aside, finder)
        try:
            for batch, unclean in frames:
                sampler.add(batch, _shot_starts(samples, detector, batch), unclean)
            jpegs = sampler.finish()
        except av.error.FFmpegError as error:
            raise frames.failed(error) from None
        finally:
            sampler.close()
        frames.check()
        if not jpegs:
            raise VideoError(f"damaged: none of its {frames.count} frames decoded cleanly")
        declared = container.duration / av.time_base if container.duration else None
        last_t = sampler.last_t
        decoded = last_t + 1.0 / fps
        if declared and decoded < 0.9 * declared - 1.0 / fps:
            raise VideoError(f"truncated: decoded {decoded:.2f} s of the {declared:.2f} s the container declares")
    return DecodedVideo(
        fps=fps, width=width, height=height, num_native_frames=frames.count,
        duration_s=round(last_t + 1.0 / fps, 6),
        shot_starts=list(detector.shot_starts), shot_starts_s=[round(s, 6) for s in sampler.shot_starts_s],
        frame_times_s=sampler.times, frame_native_index=sampler.native, frame_shot=sampler.shots,
        frame_size=sampler.frame_size, display=sampler.display, damaged_packets=frames.damaged,
        unclean_frames=frames.unclean, jpegs=jpegs, crop=sampler.crop)


def open_video(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream, float, int, int]:
    """(container, its video stream, frames per second, width, height) of the video file ``path``;
    :class:`VideoError` saying what is wrong with anything else. The caller closes the container."""
    path = Path(path)
    if path.is_dir():
        raise VideoError("a folder, not a video file")
    if not path.is_file():
        raise VideoError("file not found")
    if path.stat().st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.EOFError:
        raise VideoError("zero-length video: the file ends after its header") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise VideoError(f"not a readable video: not a video file, or truncated/corrupt ({_describe(error)})") from None
    try:
        # A music file's cover art is a one-picture "video" stream: not a video.
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            cover = " (only a cover picture)" if container.streams.video else ""
            raise VideoError(f"no video stream in the file{cover}")
        stream = videos[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise VideoError("video stream has no frame rate")
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError("video stream has no frame size")
    except BaseException:
        container.close()
        raise
    return container, stream, float(rate), width, height


def set_decoder_threads(stream, threads: int) -> None:
    """1: one decoder thread; 0: FFmpeg's frame and slice threads, as many as it chooses; n: n threads."""
    if threads == 1:
        stream.thread_count = 1
    else:
        stream.thread_type, stream.thread_count = "AUTO", threads


def stream_time_base(stream) -> float | None:
    return float(stream.time_base) if stream.time_base else None


class PacketFrames:
    """Every frame of a video stream, decoded packet by packet through the codec context, in
    batches of ``size``: iterating gives ``(frames, unclean)``, ``unclean`` the positions in
    ``frames`` of those not to be stored.

    A packet the decoder rejects is skipped, as the ffmpeg command line does; the frames decoded
    after it until the next key frame may show its damage, so they are unclean, like frames the
    decoder flags as corrupt. ``count``, ``packets``, ``damaged`` and ``unclean`` count what was
    decoded so far; :meth:`check` refuses a video with too many damaged packets or no frame.
    """

    def __init__(self, container, stream, size: int):
        self.container, self.stream, self.size = container, stream, size
        self.count = self.packets = self.damaged = self.unclean = 0

    def __iter__(self) -> Iterator[tuple[list[av.VideoFrame], set[int]]]:
        batch: list[av.VideoFrame] = []
        unclean: set[int] = set()
        decode, size = self.stream.codec_context.decode, self.size
        count = packets = damaged = unclean_frames = 0     # locals on the per-frame path
        suspect = False
        try:
            for packet in self.container.demux(self.stream):
                packets += packet.size > 0         # not the empty packet that flushes the decoder
                try:
                    frames = decode(packet)
                except av.error.InvalidDataError:
                    damaged, suspect = damaged + 1, True
                    continue
                for frame in frames:
                    count += 1
                    if suspect and frame.key_frame:
                        suspect = False
                    if suspect or frame.is_corrupt:
                        unclean.add(len(batch))
                        unclean_frames += 1
                    batch.append(frame)
                    if len(batch) == size:
                        self.count, self.unclean = count, unclean_frames
                        yield batch, unclean
                        batch, unclean = [], set()
            if batch:
                self.count, self.unclean = count, unclean_frames
                yield batch, unclean
        finally:
            self.count, self.packets, self.damaged, self.unclean = count, packets, damaged, unclean_frames

    def failed(self, error: Exception) -> VideoError:
        """The error to raise for an FFmpeg error while decoding."""
        return VideoError(f"decoding failed after {self.count} frames: the file may be truncated or corrupt "
                          f"({_describe(error)})")

    def check(self) -> None:
        """Raise :class:`VideoError` if more than ``MAX_DAMAGED`` of the packets were damaged or no
        frame was decoded (call after iterating)."""
        if self.damaged > MAX_DAMAGED * self.packets:
            raise VideoError(f"damaged: {self.damaged} of its {self.packets} packets could not be decoded")
        if not self.count:
            raise VideoError("zero-length video: no frame could be decoded")


def threading_plan(width: int, height: int, threads: int = 0) -> tuple[int, bool]:
    """(decoder threads: 1, or 0 for FFmpeg's frame and slice threads; whether the kept frames
    are converted and JPEG-encoded in a thread of their own) for one video.

    ``threads=1`` (the caller's processes occupy every core): one decoder thread, nothing aside;
    any other given number: that many FFmpeg threads. ``threads=0``: it depends on the frame size
    and on whether the other processes leave a core idle besides this one (measured by
    :data:`_OTHERS` over the previous video; on busy cores extra threads only add hand-offs):

    * up to 128x128: one decoder thread, nothing aside: FFmpeg's threads cost more than they
      save on such small frames, and the kept frames' JPEG is too cheap to pay for the hand-offs
      to a second thread;
    * up to QVGA (320x240): one decoder thread, and the kept frames' conversion and JPEG in a
      second thread when a core is idle (OpenCV and swscale let go of the GIL): on two cores
      this beats FFmpeg's threads, which do not pay at these sizes even for bare decoding;
    * larger: FFmpeg's threads when a core is idle, the JPEG in the decoding thread (aside, it
      would only compete with FFmpeg's threads for the cores).

    The measurements behind these limits are in docs/benchmarks.md, "Ingest".
    """
    if threads:
        return threads, False
    if width * height <= 128 * 128:
        return 1, False
    others = _OTHERS.cores()
    idle = others is None or others <= (os.cpu_count() or 1) - 1.5
    if width * height <= 320 * 240:
        return 1, idle
    return (0 if idle else 1), False


_OTHERS = OtherProcesses()


def frame_times(batch: list[av.VideoFrame], first: int, time_base: float | None, fps: float) -> list[float]:
    """Time stamps in seconds of the frames ``batch``, whose first is frame ``first`` of the video:
    from pts, or from the frame index where pts is missing."""
    if time_base:
        return [f.pts * time_base if f.pts is not None else (first + k) / fps for k, f in enumerate(batch)]
    return [(first + k) / fps for k in range(len(batch))]


def _shot_starts(samples: ColourSamples, detector: HistogramCutDetector, batch: list) -> set[int]:
    """Indices in ``batch`` of the frames that start a shot."""
    return {first + k for first, run in samples(batch) for k in detector.push(run)}


class _Sampler:
    """Sampling inside shots (see :func:`decode_video`), JPEG-encoding the frames it keeps.

    ``add(batch, starts, unclean)`` takes the next decoded frames, which of them start a shot and
    which are not to be stored (a damaged packet's aftermath: the next clean frame is kept). Only
    the kept frames are converted (one swscale call to the stored size and BGR), turned as shown
    and encoded. The first frame (always kept) sets how the video is shown. With a ``finder``
    (:class:`~vivi.ingest.borders.BorderFinder`, maybe holding key frames already) the first kept
    frames are held until their bars are known (``HOLD_FRAMES``, or ``HOLD_BYTES`` of them, or the
    video's end), then all are stored without them (:attr:`crop`); the crop and the display set
    the stored size. With ``encode_aside`` the conversion and encoding run in a thread of their own, while this
    one goes on decoding (:func:`threading_plan`); :meth:`finish` gives the JPEGs in order,
    :meth:`close` ends the thread.
    """

    def __init__(self, stream, short_side: int, period: float, quality: int, time_base: float | None, fps: float,
                 encode_aside: bool = False, finder: BorderFinder | None = None):
        self.stream, self.short_side = stream, short_side
        self.period, self.time_base, self.fps = period, time_base, fps
        self.display = Display()
        self.frame_size = (0, 0)      # (height, width) stored, set by the first frame kept
        self.out_w = self.out_h = 0   # the swscale output (decoded orientation)
        self.encode = [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
        self.to_stored = VideoReformatter()
        self.index = 0                # native index of the next frame
        self.t0: float | None = None
        self.next_sample = 0.0
        self.last_t = 0.0
        self.shot_starts_s: list[float] = []
        self.times: list[float] = []
        self.native: list[int] = []
        self.shots: list[int] = []
        self.jpegs: list[bytes] = []
        self._encoder = _Encoder(self._jpeg) if encode_aside else None
        self.finder = finder
        self.crop: tuple[int, int, int, int] | None = None
        self._held: list[tuple[av.VideoFrame, int]] = []
        self._held_bytes = 0
        self._uncropped: tuple[int, int] | None = None    # (width, height) of the frames the crop applies to
        self._cropper: FrameCrop | None = None           # cuts it out (in the thread that encodes)

    def add(self, batch: list[av.VideoFrame], starts: set[int], unclean: set[int] = frozenset()) -> None:
        times = self._times(batch)
        threshold = self.next_sample - 1e-6
        for k, t in enumerate(times):
            if k in starts:
                self.shot_starts_s.append(t)
                self.next_sample, threshold = t, t - 1e-6
            if t >= threshold and not (unclean and k in unclean):   # an unclean frame: the next clean one
                self._keep(batch[k], self.index + k, t)
                while self.next_sample <= t + 1e-6:
                    self.next_sample += self.period
                threshold = self.next_sample - 1e-6
        self.index += len(batch)
        self.last_t = times[-1]

    def _set_size(self, frame: av.VideoFrame) -> None:
        self.display = frame_display(frame, self.stream)
        cropped = self.crop is not None and (frame.width, frame.height) == self._uncropped
        width, height = (self.crop[2], self.crop[3]) if cropped else (frame.width, frame.height)
        self.frame_size = stored_size(*self.display.shown_size(width, height), self.short_side)
        out_h, out_w = self.frame_size
        self.out_w, self.out_h = (out_h, out_w) if self.display.transposes else (out_w, out_h)

    def _times(self, batch: list[av.VideoFrame]) -> list[float]:
        """Seconds from the first frame (:func:`frame_times`)."""
        times = frame_times(batch, self.index, self.time_base, self.fps)
        if self.t0 is None:
            self.t0 = times[0]
        t0 = self.t0
        return [t - t0 for t in times]

    def _keep(self, frame: av.VideoFrame, index: int, t: float) -> None:
        if self.finder is None:
            self._store(frame, index)
        else:
            self._held.append((frame, index))
            self._held_bytes += sum(plane.buffer_size for plane in frame.planes)
            if len(self._held) >= HOLD_FRAMES or self._held_bytes >= HOLD_BYTES:
                self._decide_crop()
        self.times.append(round(t, 6))
        self.native.append(index)
        self.shots.append(len(self.shot_starts_s) - 1)

    def _decide_crop(self) -> None:
        """Fix the crop from the held frames' luma (taken all at once) and what the finder saw
        before them (key frames), and store the held frames."""
        if self.finder is not None:
            self.finder.add_frames([frame_luma(frame) for frame, _ in self._held])
            shape = self.finder.shape                    # (height, width) of the frames the crop is of
            self.crop, self.finder = self.finder.crop(), None
            self._cropper = None if self.crop is None else FrameCrop(self.crop)
            self._uncropped = None if shape is None else (shape[1], shape[0])
            held, self._held = self._held, []
            for frame, index in held:
                self._store(frame, index)

    def _store(self, frame: av.VideoFrame, index: int) -> None:
        if not self.out_w:
            self._set_size(frame)
        if self._encoder is None:
            self.jpegs.append(self._jpeg(frame, index))
        else:
            self._encoder.submit(frame, index)

    def _jpeg(self, frame: av.VideoFrame, index: int) -> bytes:
        if self.crop is not None and (frame.width, frame.height) == self._uncropped:
            frame = self._cropper(frame)
        bgr = self.display.apply(self.to_stored.reformat(frame, self.out_w, self.out_h, "bgr24",
                                                         interpolation="AREA", threads=1).to_ndarray())
        ok, data = cv2.imencode(".jpg", bgr, self.encode)
        if not ok:
            raise VideoError(f"JPEG encoding failed at frame {index}")
        return data.tobytes()

    def finish(self) -> list[bytes]:
        """The JPEG bytes of every kept frame, in order (waits for the encoding thread)."""
        self._decide_crop()
        if self._encoder is not None:
            self.jpegs = self._encoder.finish()
        return self.jpegs

    def close(self) -> None:
        """Ends the encoding thread, if any (after an error: the frames still queued are encoded
        and dropped, a few ms at most)."""
        if self._encoder is not None:
            self._encoder.close()


class _Encoder:
    """``encode(frame, index)`` run in a thread of its own, in submission order, at most ``DEPTH``
    frames behind (each holds a decoded frame). An exception there is raised by the next
    :meth:`submit` or by :meth:`finish`.

    A plain thread and two C-level queues: ``concurrent.futures`` costs measurably more in
    hand-offs under the GIL (docs/benchmarks.md, "Ingest").
    """

    DEPTH = 8

    def __init__(self, encode):
        self.encode = encode
        self.results: list = []
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()   # a token per frame encoded (or failed)
        self._submitted = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vivi-jpeg", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            try:
                self.results.append(self.encode(*item))
            except BaseException as error:   # handed to the decoding thread
                self._error = error
                return
            finally:
                self._done.put(None)

    def submit(self, *item) -> None:
        while self._submitted - len(self.results) >= self.DEPTH and self._error is None:
            self._done.get()
        self._raise()
        self._todo.put(item)
        self._submitted += 1

    def finish(self) -> list:
        self.close()
        self._raise()
        return self.results

    def close(self) -> None:
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def _describe(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return f"{error.__class__.__name__}: {text}"


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB (H, W, 3) uint8 from JPEG bytes."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
