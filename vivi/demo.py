"""``vivi demo``: the whole pipeline on the synthetic world, on this machine, offline.

Stages so far: synth -> ingest -> detect (the world's ground-truth boxes) -> inspect (statistics
and a contact sheet with the boxes). Training and evaluation join as they land (issues 3-5); each
stage skips work already done, so re-running the demo after an interruption continues where it
stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .data.inspect import dataset_stats, format_stats, render_contact_sheet
from .detect import build_detector, detect_dataset
from .ingest import IngestConfig, SamplingConfig, ingest

# (videos, seconds per video): the default world is the 200 x 20 s; --quick is smaller.
SCALES = {"quick": (48, 20.0), "default": (200, 20.0)}


def run_demo(out: str | Path = "demo", *, quick: bool = False, workers: int = 2, seed: int = 0,
             videos: int | None = None, seconds: float | None = None) -> dict:
    """Run the demo into ``out``; ``videos`` and ``seconds`` override the world's scale (tests)."""
    from .synth import make_world
    out = Path(out)
    default_videos, default_seconds = SCALES["quick" if quick else "default"]
    videos, seconds = videos or default_videos, seconds or default_seconds
    timings: dict[str, float] = {}

    world = out / "world"
    t = time.perf_counter()
    if not (world / "world.json").exists():
        print(f"[1/4] synth: {videos} videos x {seconds:g} s -> {world}")
        make_world(world, videos=videos, seconds=seconds, size=64, seed=seed, workers=workers,
                   task_test_size=500 if quick else 2000)
    else:
        print(f"[1/4] synth: {world} exists, kept")
    timings["synth"] = time.perf_counter() - t

    data = out / "data"
    t = time.perf_counter()
    print(f"[2/4] ingest: {world / 'videos'} -> {data}")
    summary = ingest([world / "videos"], data, IngestConfig(sampling=SamplingConfig(short_side=64)),
                     workers=workers)
    print(summary)
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[3/4] detect: the world's ground-truth boxes (the oracle detector)")
    print(detect_dataset(data, build_detector("groundtruth")))
    timings["detect"] = time.perf_counter() - t

    t = time.perf_counter()
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    stats = dataset_stats(data)
    print("[4/4] inspect")
    print(format_stats(stats))
    sheet = render_contact_sheet(data, report / "contact_sheet.png", detector="groundtruth")
    (report / "dataset.json").write_text(json.dumps(stats, indent=1))
    timings["inspect"] = time.perf_counter() - t
    print(f"contact sheet: {sheet}")
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return {"stats": stats, "timings": timings}
