"""``make_world``: write a whole synthetic world (videos, ground truth, downstream tasks) to disk.

This is the one call behind ``vivi synth OUT``. Work is split into independent jobs (one per
video, one per block of task images), each seeded by its own key (``world.rng_for``), and run on
a process pool, so the output is the same for any number of workers.

Layout::

    OUT/world.json                      classes, background families, themes, config, seed
    OUT/videos/video_00000.mp4          H.264, yuv420p
    OUT/videos/video_00000.json         ground truth (schema in ``video.py``)
    OUT/tasks/suite.json, OUT/tasks/<task>/...   (layout in ``downstream.py``)

Each job writes its files into ``OUT/.tmp-synth/JOB/`` and moves them to their places when they
are complete, so an interrupted run leaves no truncated video or image; ``OUT/.vivi-lock`` keeps
a second ``vivi synth`` out of the folder while one runs (``vivi.files.writer_lock``).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from pathlib import Path

from tqdm import tqdm

from ..files import refuse_other_settings, replacing, writer_lock
from .backgrounds import BACKGROUND_FAMILIES
from .downstream import TASKS, split_sizes, write_task_images, write_task_index
from .shapes import CLASS_NAMES
from .video import make_video
from .world import TASK_DOMAIN, THEME_DOMAIN, VIDEO_DOMAIN, WorldConfig, make_themes

TASK_BLOCK = 250            # task images per job: large enough to amortise the job overhead


STAGING = ".tmp-synth"       # OUT/.tmp-synth/JOB/: a job's files until they are complete


def _staged(staging: Path, folder: Path, write):
    """``write(staging)``, then every file it wrote moved to the same place under ``folder``
    (renames, atomic): an interrupted job leaves its partial files in ``staging``, which the
    parent removes, never a truncated video or image under its name."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = write(staging)
    for path in sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: (p.suffix == ".json", p)):
        os.replace(path, folder / path.relative_to(staging))
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _video_job(out_dir, config, themes, index):
    return _staged(out_dir.parent / STAGING / f"video_{index:05d}", out_dir,
                   lambda staging: make_video(staging, index, config, themes))


def _task_job(tasks_dir, config, themes, test_size, job):
    task_index, split, start, stop = job

    def write(staging: Path) -> int:
        (staging / "images").mkdir()
        return write_task_images(staging, config, themes, task_index, split, start, stop, test_size)

    name = TASKS[task_index].name
    return _staged(tasks_dir.parent / STAGING / f"{name}-{split}-{start}", tasks_dir / name, write)


def _process_context():
    """fork where the platform has it: workers start at once and a plain script calling
    ``make_world`` needs no ``if __name__ == "__main__"`` guard (spawn would re-run it). The
    workers only use numpy, PyAV and OpenCV, never state inherited from the parent."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent, which ends them (no traceback from every worker), and
    end at once on SIGTERM (the parent's own SIGTERM handler, inherited by fork, would make each
    raise and print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _end_now(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C, SIGTERM or an error: kill the workers and drop the jobs not started, without waiting
    (a worker killed by the same SIGTERM while it held the job queue's lock would make an orderly
    shutdown wait for ever; the job it ran is staged, so nothing half-written is left)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def _run(pool, function, jobs, description, total, progress):
    """Run jobs on the pool (or here when there is none), yielding results as they finish."""
    if pool is None:
        results = map(function, jobs)
    else:
        results = (future.result() for future in as_completed([pool.submit(function, job) for job in jobs]))
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
    workers = workers or os.cpu_count() or 1
    with writer_lock(out, "synth"):      # a second synth into OUT would write the same videos at the same time
        video_stats, images, video_seconds = _write_world(out, config, workers=workers, tasks=tasks,
                                                          task_test_size=task_test_size, progress=progress,
                                                          start=start)
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


def _write_world(out: Path, config: WorldConfig, *, workers: int, tasks: bool, task_test_size: int, progress: bool,
                 start: float) -> tuple[list[dict], int, float]:
    """The files of ``make_world``; returns the videos' statistics, the number of task images and
    the seconds from ``start`` to the last video."""
    refuse_other_settings(out / "world.json", dataclasses.asdict(config), holds="a world",
                          read=lambda stored: stored.get("config", {}),
                          fix="its videos would mix with these; pass a new folder, or delete this one")
    themes = make_themes(config)
    videos_dir, tasks_dir = out / "videos", out / "tasks"
    shutil.rmtree(out / STAGING, ignore_errors=True)        # left by a run that was killed
    videos_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out / "world.json", json.dumps({
        "generator": "vivi.synth",
        "seed": config.seed,
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

    pool = None if workers == 1 else ProcessPoolExecutor(workers, mp_context=_process_context(),
                                                         initializer=_worker_signals)
    try:
        video_stats = list(_run(pool, partial(_video_job, videos_dir, config, themes),
                                range(config.videos), "videos", config.videos, progress))
        video_seconds = time.perf_counter() - start
        images = sum(_run(pool, partial(_task_job, tasks_dir, config, themes, task_test_size),
                          task_jobs, "task images", sum(j[3] - j[2] for j in task_jobs), progress))
    except BaseException:
        if pool is not None:
            _end_now(pool)
        shutil.rmtree(out / STAGING, ignore_errors=True)
        raise
    if pool is not None:
        pool.shutdown(wait=True)
    if tasks:
        suite = [write_task_index(tasks_dir / task.name, config, i, task_test_size)
                 for i, task in enumerate(TASKS)]
        _write_text(tasks_dir / "suite.json", json.dumps({"tasks": suite}, indent=2))
    shutil.rmtree(out / STAGING, ignore_errors=True)
    return video_stats, images, video_seconds


def _write_text(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)
