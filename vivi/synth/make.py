"""``make_world``: write a whole synthetic world (videos, ground truth, downstream tasks) to disk.

This is the one call behind ``vivi synth OUT``. Work is split into independent jobs (one per
video, one per block of task images), each seeded by its own key (``world.rng_for``), and run on
a process pool, so the output is the same for any number of workers.

Layout::

    OUT/world.json                      classes, background families, themes, config, seed
    OUT/videos/video_00000.mp4          H.264, yuv420p
    OUT/videos/video_00000.json         ground truth (schema in ``video.py``)
    OUT/tasks/suite.json, OUT/tasks/<task>/...   (layout in ``downstream.py``)
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import time
from functools import partial
from pathlib import Path

from tqdm import tqdm

from ..files import refuse_other_settings
from .backgrounds import BACKGROUND_FAMILIES
from .downstream import TASKS, split_sizes, write_task_images, write_task_index
from .shapes import CLASS_NAMES
from .video import make_video
from .world import TASK_DOMAIN, THEME_DOMAIN, VIDEO_DOMAIN, WorldConfig, make_themes

TASK_BLOCK = 250            # task images per job: large enough to amortise the job overhead


def _video_job(out_dir, config, themes, index):
    return make_video(out_dir, index, config, themes)


def _task_job(tasks_dir, config, themes, test_size, job):
    task_index, split, start, stop = job
    return write_task_images(tasks_dir / TASKS[task_index].name, config, themes, task_index,
                             split, start, stop, test_size)


def _process_context():
    """fork where the platform has it: workers start at once and a plain script calling
    ``make_world`` needs no ``if __name__ == "__main__"`` guard (spawn would re-run it). The
    workers only use numpy, PyAV and OpenCV, never state inherited from the parent."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _ignore_ctrl_c() -> None:
    """Workers leave Ctrl-C to the parent, which ends them (no traceback from every worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(pool, function, jobs, description, total, progress):
    """Run jobs on the pool (or here when there is none), yielding results as they finish."""
    results = map(function, jobs) if pool is None else pool.imap_unordered(function, jobs)
    with tqdm(total=total, desc=description, disable=not progress, unit=description.split()[-1]) as bar:
        for result in results:
            bar.update(result if isinstance(result, int) else 1)
            yield result


def make_world(out, *, videos: int = 200, seconds: float = 20.0, fps: int = 10, size: int = 64,
               seed: int = 0, workers: int | None = None, tasks: bool = True,
               task_test_size: int = 2000, progress: bool = True, **world) -> dict:
    """Generate the synthetic video world in ``out`` and return a summary of what was written.

    videos, seconds, fps, size, seed: see :class:`WorldConfig` (10 fps: smooth enough for the cut
        detector, 10 candidates per second for the 1 Hz frame sampler, cheap to render).
    workers: processes (default: all CPUs; 1 runs in this process).
    tasks: also write the downstream tasks (1000 training images each, ``task_test_size`` test).
    world: any other :class:`WorldConfig` field, e.g. ``shots=(1, 1), motion=2.5``.
    Existing files of the same names are overwritten; nothing else in ``out`` is touched. A folder
    that holds another world (other seed or settings) is refused: its videos would mix with these.
    """
    start = time.perf_counter()
    config = WorldConfig(videos=videos, seconds=seconds, fps=fps, size=size, seed=seed, **world)
    out = Path(out)
    refuse_other_settings(out / "world.json", dataclasses.asdict(config), holds="a world",
                          read=lambda stored: stored.get("config", {}),
                          fix="its videos would mix with these; pass a new folder, or delete this one")
    themes = make_themes(config)
    videos_dir, tasks_dir = out / "videos", out / "tasks"
    videos_dir.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps({
        "generator": "vivi.synth",
        "seed": seed,
        "seed_domains": {"themes": THEME_DOMAIN, "videos": VIDEO_DOMAIN, "tasks": TASK_DOMAIN},
        "classes": list(CLASS_NAMES),
        "background_families": list(BACKGROUND_FAMILIES),
        "themes": [{"id": i, **theme.to_json()} for i, theme in enumerate(themes)],
        "config": dataclasses.asdict(config),
        "tasks": {"written": tasks, "test_size": task_test_size,
                  "names": [task.name for task in TASKS] if tasks else []},
    }, indent=2))

    task_jobs = []
    if tasks:
        for task_index, task in enumerate(TASKS):
            (tasks_dir / task.name / "images").mkdir(parents=True, exist_ok=True)
            for split, count in split_sizes(task_test_size).items():
                task_jobs += [(task_index, split, a, min(count, a + TASK_BLOCK))
                              for a in range(0, count, TASK_BLOCK)]

    workers = workers or os.cpu_count() or 1
    pool = None if workers == 1 else _process_context().Pool(workers, initializer=_ignore_ctrl_c)
    try:
        video_stats = list(_run(pool, partial(_video_job, videos_dir, config, themes),
                                range(videos), "videos", videos, progress))
        video_seconds = time.perf_counter() - start
        images = sum(_run(pool, partial(_task_job, tasks_dir, config, themes, task_test_size),
                          task_jobs, "task images", sum(j[3] - j[2] for j in task_jobs), progress))
    except BaseException:
        if pool is not None:      # Ctrl-C or an error: end the workers now (close + join would wait forever
            pool.terminate()      # for workers that took the Ctrl-C too)
            pool.join()
        raise
    if pool is not None:
        pool.close()
        pool.join()
    if tasks:
        suite = [write_task_index(tasks_dir / task.name, config, i, task_test_size)
                 for i, task in enumerate(TASKS)]
        (tasks_dir / "suite.json").write_text(json.dumps({"tasks": suite}, indent=2))

    return {
        "out": str(out),
        "videos": videos,
        "frames": sum(s["frames"] for s in video_stats),
        "shots": sum(s["shots"] for s in video_stats),
        "boxes": sum(s["boxes"] for s in video_stats),
        "setup_draws": sum(s["setup_draws"] for s in video_stats),
        "unmet_setups": sum(s["unmet_setups"] for s in video_stats),
        "min_cut_distance": min((s["min_cut_distance"] for s in video_stats), default=1.0),
        "max_step_distance": max((s["max_step_distance"] for s in video_stats), default=0.0),
        "task_images": images,
        "workers": workers,
        "video_seconds": round(video_seconds, 2),
        "seconds": round(time.perf_counter() - start, 2),
    }
