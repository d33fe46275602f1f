"""Training and evaluating the demo's methods: one job per (method, seed, stage), run in a few
processes at once, resumable, with one progress bar and an ETA over all of them.

On a small CPU, two single-threaded training processes get more done than one process with two
threads (the tiny encoder's layers are too small to keep two threads busy), so the demo runs
``workers`` jobs side by side with ``cores // workers`` threads each. Every job writes into its
own folder and checks it first: a finished job is skipped, an interrupted training resumes from
its newest checkpoint (``vivi train --resume``), an interrupted evaluation from its finished units.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..threads import usable_cores
from .methods import RANDOM_ENCODER, Method, Scale

# What an evaluation costs, in training frames of the tiny encoder at 32 px (the bar's unit):
# the probe encodes every task image at 64 px once (~2.5 training frames each, forward only at
# 4x the pixels) and fits 5 logistic regressions per task. Only the ETA depends on it.
EVAL_FRAMES_PER_IMAGE = 2.5


@dataclass
class Job:
    stage: str                       # "train" | "eval"
    method: Method
    seed: int
    folder: Path                     # the run folder (train) or the evaluation folder (eval)
    total: float                     # cost in bar units
    after: Job | None = None       # the job that must finish first (eval after train)
    started: float = 0.0
    seconds: float = 0.0
    done: bool = False
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.stage} {self.method.name} seed {self.seed}"


def run_folder(out: Path, method: Method, seed: int) -> Path:
    return out / "runs" / f"{method.name}-seed{seed}"


def eval_folder(out: Path, method: Method, seed: int) -> Path:
    return out / "evals" / f"{method.name}-seed{seed}"


def train_config(method: Method, scale: Scale, seed: int):
    from vivi.train.config import load_config
    return load_config(method.preset, [*method.overrides, *scale.train_overrides(seed)])


def _final_step(run: Path) -> int:
    from vivi.train.checkpoint import latest_checkpoint
    found = latest_checkpoint(run)
    return int(found.stem.split("-")[1]) if found else 0


def train_job(method: Method, scale: Scale, seed: int, data: str, run: str, threads: int, world: str) -> dict:
    """Train one method (in a worker process); resumes from the run's newest checkpoint. A kNN probe
    on the world's tasks five times a run shows the encoder learning (``monitor/*`` in the run's
    metrics and TensorBoard)."""
    import torch

    from vivi.signals import raise_on_sigterm
    from vivi.train.loop import train
    raise_on_sigterm()          # the parent ends its jobs with SIGTERM: they release their folders' locks
    torch.set_num_threads(threads)
    run_path = Path(run)
    overrides = [*method.overrides, *scale.train_overrides(seed), f"run.monitor_every={max(1, scale.steps // 5)}",
                 f"run.monitor_suite={Path(world) / 'tasks'}"]
    start = time.perf_counter()
    if _final_step(run_path) > 0:
        result = train(method.preset, data, run_path, resume=True, overrides=overrides, progress=False)
    else:
        shutil.rmtree(run_path, ignore_errors=True)     # a start that never reached a checkpoint
        result = train(method.preset, data, run_path, overrides=overrides, progress=False)
    return {"seconds": time.perf_counter() - start, "step": result["step"],
            "last": {k: v for k, v in result["last"].items() if isinstance(v, (int, float))}}


# The out-of-world check: which way up a piece of a real photograph is (vivi.eval.photos)
PHOTO_SUITE = {"tasks": [{"name": "photo-orientation", "source": "photos"}]}
PHOTO_IMAGES = 2000


def eval_job(checkpoint: str, world: str, out: str, seed: int, resolution: int, threads: int) -> dict:
    """Linear probe of one encoder on every task of the world, then on the real photographs
    (``OUT/photos``), in a worker process."""
    import torch

    from vivi.eval.transfer import EvalConfig, evaluate
    from vivi.signals import raise_on_sigterm
    raise_on_sigterm()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    config = EvalConfig(protocol="linear", resolution=resolution, seed=seed)
    result = evaluate(checkpoint, world, out, config, progress=False)
    suite = Path(out) / "photos.json"
    suite.write_text(json.dumps(PHOTO_SUITE))
    photos = evaluate(checkpoint, suite, Path(out) / "photos", config, progress=False)
    return {"seconds": time.perf_counter() - start, "mean": result["mean"], "photos": photos["mean"]}


def plan_jobs(out: Path, data: Path, world: Path, methods: list[Method], scale: Scale,
              eval_images: int) -> list[Job]:
    """Train and eval jobs of every (method, seed); the random baseline has only an eval."""
    jobs = []
    for seed in range(scale.seeds):
        for method in methods:
            train = None
            if method.trained:
                d = train_config(method, scale, seed).data
                train = Job("train", method, seed, run_folder(out, method, seed),
                            total=float(scale.steps * d.videos * d.shots * d.frames))
                jobs.append(train)
            jobs.append(Job("eval", method, seed, eval_folder(out, method, seed),
                            total=(eval_images + PHOTO_IMAGES) * EVAL_FRAMES_PER_IMAGE, after=train))
    return jobs


def _is_done(job: Job, scale: Scale) -> bool:
    if job.stage == "train":
        return _final_step(job.folder) >= scale.steps
    return (job.folder / "photos" / "results.json").exists()      # the world's results come first


def _progress(job: Job, scale: Scale, tasks: int) -> float:
    """Cost done so far by a running job, read from its folder (metrics.jsonl, finished units)."""
    if job.done:
        return job.total
    if job.stage == "train":
        path = job.folder / "metrics.jsonl"
        if not path.exists():
            return 0.0
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = [line for line in f.read().splitlines() if line.strip()]
        try:
            step = json.loads(lines[-1]).get("step", 0) if lines else 0
        except json.JSONDecodeError:           # a line being written
            step = 0
        return job.total * min(1.0, step / scale.steps)
    finished = len(list((job.folder / "units").glob("*/*.json"))) if (job.folder / "units").exists() else 0
    return job.total * min(1.0, finished / max(1, tasks))


def _submit(pool: ProcessPoolExecutor, job: Job, scale: Scale, data: Path, world: Path, threads: int) -> Future:
    job.started = time.perf_counter()
    if job.stage == "train":
        return pool.submit(train_job, job.method, scale, job.seed, str(data), str(job.folder), threads, str(world))
    checkpoint = str(job.after.folder) if job.after else f"random:{RANDOM_ENCODER}"
    return pool.submit(eval_job, checkpoint, str(world), str(job.folder), job.seed, scale.eval_resolution, threads)


def _describe(job: Job) -> str:
    if job.stage == "train":
        last = job.result.get("last", {})
        losses = ", ".join(f"{k.split('/')[1]} {v:.3f}" for k, v in last.items() if k.startswith("loss/"))
        return f"trained {job.method.label} (seed {job.seed}) in {job.seconds:.0f} s; final {losses}"
    return (f"evaluated {job.method.label} (seed {job.seed}) in {job.seconds:.0f} s: "
            f"mean {100 * job.result['mean']:.1f} %")


def run_jobs(jobs: list[Job], *, scale: Scale, data: Path, world: Path, tasks: int, workers: int,
             progress: bool = True) -> list[Job]:
    """Run every job not yet done, ``workers`` at a time, evals as soon as their training is done.

    Trainings start longest first so that the processes finish together. A failing job stops the
    demo with its error (the other jobs' finished work stays on disk for the re-run).
    """
    for job in jobs:
        job.done = _is_done(job, scale)
    todo = [j for j in jobs if not j.done]
    threads = max(1, usable_cores() // workers)     # the cores this process may use (vivi/threads.py)
    waiting = sorted(todo, key=lambda j: -j.total)
    running: dict[Future, Job] = {}
    total = sum(j.total for j in jobs)
    context = multiprocessing.get_context("forkserver")
    def done() -> int:
        return round(sum(_progress(j, scale, tasks) for j in jobs))
    # initial: a resumed run's earlier work is not counted in the rate and ETA
    bar = tqdm(total=round(total), initial=done(), unit="frame", unit_scale=True, desc="train + eval",
               disable=not progress, dynamic_ncols=True, smoothing=0.05)
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        while waiting or running:
            ready = [j for j in waiting if j.after is None or j.after.done]
            for job in sorted(ready, key=lambda j: j.stage != "eval")[:workers - len(running)]:
                waiting.remove(job)       # evaluations first (they finish methods), then the longest training
                running[_submit(pool, job, scale, data, world, threads)] = job
            finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    job.result = future.result()
                except Exception as error:
                    raise RuntimeError(f"demo job '{job.name}' failed ({job.folder}): {error}") from error
                job.seconds, job.done = job.result["seconds"], True
                bar.write(_describe(job))
            bar.n = done()
            # a resumed training drops the steps logged after its last checkpoint: count them as
            # work to redo, not as negative progress (tqdm's rate is (n - initial) / elapsed)
            if not bar.disable:
                bar.initial = min(bar.initial, bar.n)
            bar.set_postfix_str(", ".join(j.name for j in running.values()), refresh=False)
            bar.refresh()
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()        # Ctrl-C or a failure: end the other jobs now (they resume)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return jobs
