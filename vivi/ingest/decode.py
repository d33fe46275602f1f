"""One decode pass over a video with PyAV: shot cuts at the native frame rate, frames sampled in shots.

Every frame has to be decoded once (the cut detector looks at all of them, so that short shots are
not lost); everything else is kept off the per-frame path. The detector reads a histogram straight
off the decoded Y/Cb/Cr planes (no colour conversion), and only the frames sampled for the
dataset (1 Hz by default) are converted, resized to the stored size and JPEG-encoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
from av.video.reformatter import VideoReformatter
import numpy as np

from .shots import CutDetectorConfig, FrameHistogram, HistogramCutDetector


class VideoError(Exception):
    """A video that cannot be ingested; the message says why (written to the failures report)."""


@dataclass(frozen=True)
class SamplingConfig:
    sample_fps: float = 1.0        # frames kept per second inside each shot (VIVI: 1 Hz)
    short_side: int = 256          # stored frames are resized so the shorter side is this (never upscaled)
    jpeg_quality: int = 90         # JPEG quality of stored frames
    histogram_width: int = 32      # colour samples per row for the cut detector's histogram (few are enough)
    cuts: CutDetectorConfig = field(default_factory=CutDetectorConfig)


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
    jpegs: list[bytes]


def stored_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``short_side`` (no upscaling), even sizes."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def decode_video(path: str | Path, config: SamplingConfig = SamplingConfig(), threads: int = 0) -> DecodedVideo:
    """Decode ``path`` once, find its shots and sample frames inside each shot.

    Sampling: inside a shot starting at time s, the frames kept are the first frames at or after
    s, s + 1/r, s + 2/r, ... (r = ``sample_fps``) that lie before the next cut. Raises
    :class:`VideoError` naming the problem for anything that is not a decodable video.

    ``threads``: decoder threads; 0 chooses one thread for small frames (up to 128x128, where
    FFmpeg's threads cost more than they give: 2x slower at 64x64) and FFmpeg's frame and slice
    threads above. Ingest passes 1 when its worker processes already occupy every core.
    """
    path = Path(path)
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
    with container:
        if not container.streams.video:
            raise VideoError("no video stream in the file")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise VideoError("video stream has no frame rate")
        fps = float(rate)
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise VideoError("video stream has no frame size")
        threads = threads or (1 if width * height <= 128 * 128 else 0)
        if threads == 1:
            stream.thread_count = 1
        else:
            stream.thread_type, stream.thread_count = "AUTO", threads
        out_h, out_w = stored_size(width, height, config.short_side)
        period = 1.0 / config.sample_fps
        encode = [int(cv2.IMWRITE_JPEG_QUALITY), int(config.jpeg_quality)]

        # One reformatter per output geometry: each keeps its swscale context (switching geometry on
        # one rebuilds it, ~1 ms); the histogram keeps its own for streams that are not 8-bit 4:2:0.
        histogram, to_stored = FrameHistogram(config.cuts.bits, config.histogram_width), VideoReformatter()
        time_base = float(stream.time_base) if stream.time_base else None

        detector = HistogramCutDetector(config.cuts)
        shot_starts_s: list[float] = []
        times, native, shots, jpegs = [], [], [], []
        t0 = None
        next_sample = 0.0
        index = -1
        last_t = 0.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                pts = frame.pts
                t = pts * time_base if pts is not None and time_base else index / fps
                if t0 is None:
                    t0 = t
                t = t - t0
                if detector.push(histogram(frame)):
                    shot_starts_s.append(t)
                    next_sample = t
                if t >= next_sample - 1e-6:
                    bgr = to_stored.reformat(frame, out_w, out_h, "bgr24", interpolation="AREA",
                                             threads=1).to_ndarray()
                    ok, data = cv2.imencode(".jpg", bgr, encode)
                    if not ok:
                        raise VideoError(f"JPEG encoding failed at frame {index}")
                    jpegs.append(data.tobytes())
                    times.append(round(t, 6))
                    native.append(index)
                    shots.append(len(shot_starts_s) - 1)
                    while next_sample <= t + 1e-6:
                        next_sample += period
                last_t = t
        except av.error.FFmpegError as error:
            raise VideoError(f"decoding failed after {index + 1} frames: the file may be truncated or corrupt "
                             f"({_describe(error)})") from None
        if index < 0:
            raise VideoError("zero-length video: no frame could be decoded")
        declared = container.duration / av.time_base if container.duration else None
        decoded = last_t + 1.0 / fps
        if declared and decoded < 0.9 * declared - 1.0 / fps:
            raise VideoError(f"truncated: decoded {decoded:.2f} s of the {declared:.2f} s the container declares")
    return DecodedVideo(
        fps=fps, width=width, height=height, num_native_frames=index + 1,
        duration_s=round(last_t + 1.0 / fps, 6),
        shot_starts=list(detector.shot_starts), shot_starts_s=[round(s, 6) for s in shot_starts_s],
        frame_times_s=times, frame_native_index=native, frame_shot=shots,
        frame_size=(out_h, out_w), jpegs=jpegs)


def _describe(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return f"{error.__class__.__name__}: {text}"


def decode_jpeg(data: bytes) -> np.ndarray:
    """RGB (H, W, 3) uint8 from JPEG bytes."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
