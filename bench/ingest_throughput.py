"""Ingest throughput against bare PyAV decoding and against a PySceneDetect two-pass script.

    python bench/ingest_throughput.py [--sizes 64 256] [--videos 30] [--seconds 20] [--fps 10]
                                      [--preset ultrafast] [--reps 3] [--workers 1] [--bars 0.125]

Every measurement is taken in this run, on the same files, with the same number of processes
(``--workers``; the two-pass script always runs in one), interleaved over ``--reps`` rounds; the
ratios are medians over rounds.

* bare:  PyAV decodes every frame and does nothing with it, single-threaded or with FFmpeg's
         threads, by frames from the container or by packets through the codec context (as
         ingest does), whichever is fastest (the physical limit: ingest must decode every frame to
         find the cuts at the native frame rate); also shown: PyAV's default settings in one
         process, the loop a user writes first;
* vivi:  ``vivi.ingest.ingest`` with ``--workers`` processes: decode, cut detection, 1 Hz sampling, resize,
         JPEG, tar shards and indices written to disk;
* border pass: the share of an in-process ingest's time (one process, timed separately) spent
         finding letterbox/pillarbox bars (``vivi/ingest/borders.py``: the cut detector's per-batch
         bar check and the regions it compares frames in, the stored frames' bar statistics,
         key-frame probes of videos longer than a minute) and cutting them off the stored frames
         (every function through which ingest calls that code, timed with ``time.perf_counter``:
         :class:`BorderClock`); ``--bars F`` letterboxes every video first (black bars of F of the
         height above and below, re-encoded with ``--preset``), so that the bars are found and
         cut off. A frame stored without its bars is smaller to convert and encode: the time to
         store one (conversion to the stored size, JPEG) with its bars cut off, the cut included,
         and with them kept is measured on the same frames, and the net share (finding the bars,
         less what storing the frames without them saves) is printed too;
* two-pass: what a user would script: ``scenedetect.detect(path, HistogramDetector())`` for the
         cuts, then a second PyAV pass that samples 1 frame per second inside each scene, resizes
         and JPEG-encodes it (no shard writing: the baseline is given that for free).

The videos are the synthetic world's, coded by x264 with ``--preset`` (ultrafast: the demo's world,
the cheapest H.264 there is to decode, so vivi's own per-frame work weighs most; medium: x264's
default, with CABAC, deblocking and B-frames, as most real files are coded). Frames are stored at
ingest's default shorter side (256, never upscaled), as a user's run would.

Measured figures, with the command of each: docs/benchmarks.md, "Ingest".
"""
from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import av
import cv2

from vivi.ingest import IngestConfig, SamplingConfig, borders, cut_detector, decode, ingest


def bare_decode_one(path: Path, threaded: bool | None, packets: bool = False) -> int:
    """Decode every frame: ``threaded`` True = FFmpeg frame+slice threads, False = one thread,
    None = PyAV's defaults (what ``for frame in container.decode(video=0)`` does). ``packets``:
    the loop over packets, each decoded by the codec context (as ingest decodes; the faster loop
    with FFmpeg's threads)."""
    frames = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if threaded:
            stream.thread_type = "AUTO"
        elif threaded is False:
            stream.thread_count = 1
        if packets:
            decode = stream.codec_context.decode
            for packet in container.demux(stream):
                frames += len(decode(packet))
        else:
            for _ in container.decode(stream):
                frames += 1
    return frames


def bare_decode(paths: list[Path], workers: int) -> float:
    """Frames/s of the fastest of single-threaded and FFmpeg-threaded decoding, each with either
    loop, in ``workers`` processes."""
    best = 0.0
    for threaded in (False, True):
        for packets in (False, True):
            t = time.perf_counter()
            if workers == 1:
                n = sum(bare_decode_one(p, threaded, packets) for p in paths)
            else:
                with multiprocessing.get_context("forkserver").Pool(workers) as pool:
                    pool.apply(int)   # started before the clock matters as much as for vivi's pool
                    t = time.perf_counter()
                    n = sum(pool.starmap(bare_decode_one, [(p, threaded, packets) for p in paths], chunksize=1))
            best = max(best, n / (time.perf_counter() - t))
    return best


class BorderClock:
    """Adds up the seconds spent in the border pass's functions while installed (``with``): in
    finding the bars (:attr:`finding`) and in cutting them off the stored frames
    (:attr:`cutting`); a call made inside another counts once."""

    # every way into the border code from ingest's own (tests/test_ingest_bench.py checks that none
    # is missing); the functions these call are timed as part of them
    FINDING = [(borders.GridBars, "__init__"), (borders.GridBars, "__call__"),
               (cut_detector._Regions, "__init__"), (cut_detector._Regions, "compared"),
               (cut_detector._Regions, "__getitem__"), (cut_detector, "inside"),
               (borders.BorderFinder, "__init__"), (borders.BorderFinder, "add_frames"),
               (borders.BorderFinder, "crop"), (decode, "probe_key_frames"), (decode, "frame_luma")]
    CUTTING = [(borders.FrameCrop, "__init__"), (borders.FrameCrop, "__call__")]

    def __init__(self):
        self.seconds = {"finding": 0.0, "cutting": 0.0}
        self._saved = []
        self._inside = [False]        # in a timed call already (a call inside it is not timed again)

    @property
    def finding(self) -> float:
        return self.seconds["finding"]

    @property
    def cutting(self) -> float:
        return self.seconds["cutting"]

    def _timed(self, function, part: str):
        # as few steps as can be: the clock's own time is counted in what it times
        clock, seconds, inside = time.perf_counter, self.seconds, self._inside

        def timed(*args, **kwargs):
            if inside[0]:
                return function(*args, **kwargs)
            inside[0] = True
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[part] += clock() - start
                inside[0] = False
        return timed

    def __enter__(self):
        for part, functions in (("finding", self.FINDING), ("cutting", self.CUTTING)):
            for owner, name in functions:
                self._saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, self._timed(getattr(owner, name), part))
        return self

    def __exit__(self, *exc):
        for owner, name, function in self._saved:
            setattr(owner, name, function)


def border_shares(paths: list[Path], config: IngestConfig, out: Path) -> tuple[float, float, int]:
    """Seconds finding the bars and cutting them off over seconds of the whole ingest, in this
    process, and how many frames were stored."""
    with BorderClock() as clock:
        start = time.perf_counter()
        summary = ingest(paths, out, config, workers=1, progress=False)
        total = time.perf_counter() - start
    shutil.rmtree(out)
    return clock.finding / total, clock.cutting / total, summary.frames


def stored_frame_seconds(paths: list[Path], short_side: int, per_video: int = 8, tries: int = 5) -> tuple[float, float]:
    """Seconds to store one frame (conversion to the stored size and BGR, JPEG) with its bars cut
    off (the cut included) and with them kept: each frame's fastest of ``tries``, alternately,
    and the median over ``per_video`` frames of every letterboxed video; the bars are found as
    ingest finds them."""
    from av.video.reformatter import VideoReformatter

    from vivi.ingest.decode import stored_size
    cropped, kept = [], []
    quality = [int(cv2.IMWRITE_JPEG_QUALITY), SamplingConfig().jpeg_quality]    # as ingest stores them
    for path in paths:
        with av.open(str(path)) as container:
            frames = [f for k, f in enumerate(container.decode(video=0)) if k % 10 == 0][:per_video]
        finder = borders.BorderFinder()
        finder.add_frames([borders.frame_luma(f) for f in frames])
        crop = finder.crop()
        if crop is None:
            continue
        cut, whole, into = borders.FrameCrop(crop), VideoReformatter(), VideoReformatter()
        for frame in frames:
            fastest = {"cropped": float("inf"), "kept": float("inf")}
            for attempt in range(tries):
                for name in ("cropped", "kept") if attempt % 2 else ("kept", "cropped"):
                    start = time.perf_counter()
                    source = cut(frame) if name == "cropped" else frame
                    height, width = stored_size(source.width, source.height, short_side)
                    bgr = (into if name == "cropped" else whole).reformat(
                        source, width, height, "bgr24", interpolation="AREA", threads=1).to_ndarray()
                    cv2.imencode(".jpg", bgr, quality)
                    fastest[name] = min(fastest[name], time.perf_counter() - start)
            cropped.append(fastest["cropped"])
            kept.append(fastest["kept"])
    if not kept:
        return 0.0, 0.0
    return statistics.median(cropped), statistics.median(kept)


def add_bars(paths: list[Path], fraction: float, preset: str, folder: Path) -> list[Path]:
    """The videos letterboxed: black bars of ``fraction`` of the height above and below."""
    import numpy as np
    folder.mkdir(parents=True)
    out = []
    for path in paths:
        with av.open(str(path)) as container:
            source = container.streams.video[0]
            rate = source.average_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(source)]
        bar = round(frames[0].shape[0] * fraction / (1 - 2 * fraction)) // 2 * 2
        out.append(folder / path.name)
        with av.open(str(out[-1]), "w") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.height, stream.width = frames[0].shape[0] + 2 * bar, frames[0].shape[1]
            stream.pix_fmt, stream.options = "yuv420p", {"preset": preset}
            for frame in frames:
                padded = np.pad(frame, ((bar, bar), (0, 0), (0, 0)))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")))
            container.mux(stream.encode())
    return out


def two_pass(paths: list[Path], short_side: int) -> int:
    from scenedetect import HistogramDetector, detect
    frames = 0
    for path in paths:
        scenes = detect(str(path), HistogramDetector(), show_progress=False)
        starts = [s.seconds for s, _ in scenes] or [0.0]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            scene, next_sample = 0, 0.0
            for frame in container.decode(stream):
                frames += 1
                t = frame.time
                if scene + 1 < len(starts) and t >= starts[scene + 1] - 1e-6:
                    scene, next_sample = scene + 1, starts[scene + 1]
                if t >= next_sample - 1e-6:
                    h, w = frame.height, frame.width
                    scale = min(1.0, short_side / min(h, w))
                    bgr = frame.to_ndarray(width=round(w * scale), height=round(h * scale), format="bgr24")
                    cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
                    next_sample += 1.0
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256],
                        help="frame sizes of the synthetic videos (64: the demo's world; 256: closer to real video)")
    parser.add_argument("--videos", type=int, default=30, help="videos per size (a third of it above 128 px)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=int, default=10,
                        help="frame rate of the videos (10: the demo's world; 25-30: most real video, where "
                             "ingest keeps 1 frame in 25-30 instead of 1 in 10)")
    parser.add_argument("--preset", default="ultrafast",
                        help="x264 preset the videos are coded with (ultrafast: the demo's world; medium: "
                             "x264's default, as most real files)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="processes for bare decoding and for vivi")
    parser.add_argument("--bars", type=float, default=0.0,
                        help="letterbox the videos first: black bars of this fraction of the height above and "
                             "below (e.g. 0.125; default 0: the world's videos as they are)")
    args = parser.parse_args()

    for size in args.sizes:
        run(size, args.videos if size <= 128 else max(1, args.videos // 3), args)


def run(size: int, videos: int, args) -> None:
    from vivi.synth import make_world
    root = Path(tempfile.mkdtemp(prefix="vivi-bench-"))
    try:
        make_world(root / "world", videos=videos, seconds=args.seconds, size=size, fps=args.fps, seed=0,
                   tasks=False, progress=False, preset=args.preset)
        paths = sorted((root / "world" / "videos").glob("*.mp4"))
        if args.bars:
            paths = add_bars(paths, args.bars, args.preset, root / "barred")
        short_side = min(size, SamplingConfig().short_side)
        config = IngestConfig(sampling=SamplingConfig(short_side=short_side))
        n = sum(bare_decode_one(p, False) for p in paths)   # also warms the page cache
        if args.workers > 1:   # start the worker server once, as a long ingest would have
            ingest(paths[:1], root / "warm", config, workers=args.workers, progress=False)
        rates: dict[str, list[float]] = {"bare": [], "bare-default": [], "vivi": [], "two-pass": []}
        finding, cutting, stored = [], [], 0
        for rep in range(args.reps):
            rates["bare"].append(bare_decode(paths, args.workers))
            t = time.perf_counter()
            sum(bare_decode_one(p, None) for p in paths)
            rates["bare-default"].append(n / (time.perf_counter() - t))
            out = root / f"data{rep}"
            t = time.perf_counter()
            summary = ingest(paths, out, config, workers=args.workers, progress=False)
            rates["vivi"].append(n / (time.perf_counter() - t))
            assert summary.videos == len(paths)
            shutil.rmtree(out)
            t = time.perf_counter()
            two_pass(paths, short_side)
            rates["two-pass"].append(n / (time.perf_counter() - t))
            found, cut, stored = border_shares(paths, config, root / f"borders{rep}")
            finding.append(found)
            cutting.append(cut)
        bars = f" letterboxed ({args.bars:g} of the height above and below)" if args.bars else ""
        print(f"{len(paths)} videos x {args.seconds:g} s at {size}x{size}{bars}, {args.fps} fps, x264 {args.preset}, "
              f"stored at {short_side} px, {n} frames, "
              f"{args.workers} process(es), {args.reps} rounds (frames/s, median):")
        for name, values in rates.items():
            print(f"  {name:13s} {statistics.median(values):9.0f} frames/s")
        vs_bare = statistics.median(v / b for v, b in zip(rates["vivi"], rates["bare"]))
        vs_two = statistics.median(v / b for v, b in zip(rates["vivi"], rates["two-pass"]))
        vs_default = statistics.median(v / b for v, b in zip(rates["vivi"], rates["bare-default"]))
        print(f"  vivi / bare decode      = {vs_bare:.2f}   (the fastest bare decoding, same processes)")
        print(f"  vivi / bare, PyAV defaults, 1 process = {vs_default:.2f}")
        print(f"  vivi / two-pass script  = {vs_two:.2f}")
        print(f"  border pass: finding the bars = {100 * statistics.median(finding):.1f} % of ingest time, "
              f"cutting them off the stored frames = {100 * statistics.median(cutting):.1f} % (1 process, median)")
        if args.bars:
            with_cut, with_bars = stored_frame_seconds(paths, short_side)
            saved = stored * (with_bars - with_cut) / (n / statistics.median(rates["vivi"]))
            print(f"  a stored frame takes {1e6 * with_cut:.0f} us with its bars cut off (the cut included), "
                  f"{1e6 * with_bars:.0f} us with them kept: storing the {stored} frames without their bars "
                  f"{'saves' if saved >= 0 else 'costs'} {100 * abs(saved):.1f} % of ingest time")
            print(f"  border pass, net = {100 * (statistics.median(finding) - saved):.1f} % of ingest time "
                  f"(finding the bars, and storing the frames without them)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
