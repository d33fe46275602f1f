"""Every frame's histogram distance and the cuts it gives: the numbers for choosing ``--cut-threshold``.

``vivi inspect --cuts VIDEO ... --stats OUT.csv [--plot OUT.png]`` calls :func:`cut_stats`, then
:func:`write_cut_stats` and :func:`plot_cut_stats` (PySceneDetect users know the habit from its
``-s stats.csv``). Each video is decoded once, by ingest's packet loop (damaged packets skipped
alike, so frame numbers agree), and every frame's exact distance to the one before is computed
(:class:`~vivi.ingest.cut_detector.ExactDistances`); the cuts are those :func:`vivi.ingest.ingest`
finds with the same settings.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import av

from ..files import replacing
from .cut_detector import ColourSamples, CutDetectorConfig, ExactDistances, batch_size
from .decode import (
    PacketFrames,
    SamplingConfig,
    VideoError,
    frame_times,
    open_video,
    set_decoder_threads,
    stream_time_base,
    threading_plan,
)

COLUMNS = ("video", "frame", "time_s", "distance", "cut")
PLOT_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class FrameDistance:
    """One native frame of a video: a row of the statistics file."""
    video: str                  # the path as given
    frame: int                  # native frame index, first 0 (as ingest's ``shot_starts``)
    time_s: float               # seconds from the first frame (as ingest's ``shot_starts_s``)
    distance: float | None      # half-L1 histogram distance to the frame before; None for frame 0
    cut: bool                   # a shot starts here (never frame 0, which starts the first shot)


def cut_stats(paths: list[str | Path], config: SamplingConfig = SamplingConfig()) -> list[FrameDistance]:
    """One :class:`FrameDistance` per native frame of each video in ``paths``, in order.

    ``config.cuts`` and ``config.histogram_width`` are what ingest's cut detector uses (the rest of
    ``config`` plays no part). A missing or undecodable file raises ``ValueError`` naming the file
    and the reason.
    """
    rows: list[FrameDistance] = []
    for path in paths:
        try:
            rows += _one_video(str(path), config)
        except VideoError as error:
            raise ValueError(f"{path}: {error}") from None
    return rows


def _one_video(name: str, config: SamplingConfig) -> list[FrameDistance]:
    container, stream, fps, width, height = open_video(name)
    with container:
        threads, _ = threading_plan(width, height)
        set_decoder_threads(stream, threads)
        samples, distances = ColourSamples(config.histogram_width), ExactDistances(config.cuts)
        frames = PacketFrames(container, stream, batch_size(width, height, threaded=threads != 1))
        time_base, rows, t0 = stream_time_base(stream), [], None
        try:
            for batch, _ in frames:
                first = frames.count - len(batch)
                times = frame_times(batch, first, time_base, fps)
                t0 = times[0] if t0 is None else t0
                found = [pair for _, run in samples(batch) for pair in distances.push(run)]
                rows += [FrameDistance(name, first + k, round(t - t0, 6), distance, cut)
                         for k, (t, (distance, cut)) in enumerate(zip(times, found))]
        except av.error.FFmpegError as error:
            raise frames.failed(error) from None
        frames.check()
    return rows


def write_cut_stats(rows: list[FrameDistance], path: str | Path) -> Path:
    """Write ``rows`` as CSV with the header ``video,frame,time_s,distance,cut``: distances in full
    precision (empty for a video's first frame), cut 1 or 0."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows((r.video, r.frame, f"{r.time_s:g}", "" if r.distance is None else repr(r.distance),
                          int(r.cut)) for r in rows)
    return path


def plot_format(path: str | Path) -> str:
    """The image format of a plot file, from its extension; ``ValueError`` for one it cannot be."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ValueError(f"{path}: a plot is written as {', '.join('.' + f for f in PLOT_FORMATS)}; "
                         "name the file accordingly")
    return suffix


def plot_cut_stats(rows: list[FrameDistance], path: str | Path,
                   config: CutDetectorConfig = CutDetectorConfig()) -> Path:
    """Draw, one panel per video, each frame's distance over time, the threshold and the cuts
    (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path, image_format = Path(path), plot_format(path)
    videos = list(dict.fromkeys(r.video for r in rows))
    if not videos:
        raise ValueError("no frames to plot")
    fig, axes = plt.subplots(len(videos), 1, figsize=(8, 0.6 + 1.7 * len(videos)), squeeze=False, sharey=True)
    for ax, video in zip(axes[:, 0], videos):
        frames = [r for r in rows if r.video == video and r.distance is not None]
        cuts = [r for r in frames if r.cut]
        ax.plot([r.time_s for r in frames], [r.distance for r in frames], color="tab:blue", linewidth=0.8,
                label="distance to the previous frame")
        ax.axhline(config.threshold, color="tab:red", linestyle="--", linewidth=0.8,
                   label=f"--cut-threshold {config.threshold:g}")
        ax.plot([r.time_s for r in cuts], [r.distance for r in cuts], "v", color="tab:red", markersize=5,
                label="cut")
        ax.set_title(f"{Path(video).name}: {len(cuts)} cuts", fontsize=9, loc="left")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("distance", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    axes[0, 0].legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=7, ncols=3, frameon=False,
                      borderaxespad=0.1)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format=image_format, dpi=100)
    plt.close(fig)
    return path
