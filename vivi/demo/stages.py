"""``vivi demo``: the whole pipeline on the synthetic world, on this machine, offline.

synth -> ingest -> detect (the world's ground-truth boxes) -> train every method -> linear probe
on the world's six downstream tasks -> a results table, ``report/report.md`` and plots.

Every stage skips the work already done, so re-running the same command after an interruption
(Ctrl-C, SIGTERM, a crash, a closed laptop) continues where it stopped. While it runs the demo
holds ``OUT/.vivi-lock`` (``vivi.files.writer_lock``): a second demo into the same folder is
refused. ``OUT/demo.json`` records the settings; a re-run with other settings into the same
folder stops with an error rather than mix results of two settings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from vivi.files import as_json, refuse_other_settings, writer_lock

from .jobs import eval_folder, plan_jobs, run_jobs
from .methods import SCALES, Scale, select_methods
from .summary import PHOTOS_NOTE, collect, format_ordering, format_table, one_seed_caveat, table, write_report

STAGES = 6


def _stage(i: int, text: str) -> None:
    print(f"[{i}/{STAGES}] {text}", flush=True)


def demo_scale(mode: str = "default", **overrides) -> Scale:
    """The scale of ``mode`` (quick | default | full) with fields replaced by the non-None ``overrides``."""
    if mode not in SCALES:
        raise ValueError(f"unknown demo mode {mode!r}; valid: {', '.join(SCALES)}")
    scale = replace(SCALES[mode], **{k: v for k, v in overrides.items() if v is not None})
    small = {name: getattr(scale, name) for name in ("videos", "steps", "seeds", "test_size")
             if getattr(scale, name) < 1}
    if scale.seconds <= 0:
        small["seconds"] = scale.seconds
    if small:
        raise ValueError("demo settings must be at least 1 (seconds above 0): "
                         + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in small.items()))
    return scale


# Settings that only choose which jobs run: more seeds or other methods extend a demo folder.
SELECTION = ("seeds", "methods")


def _non_default(world: dict) -> dict:
    """The world settings that differ from ``WorldConfig``'s defaults, as JSON values: what
    ``demo.json`` records, so that ``--world cast=true`` and no ``--world`` name the same world."""
    from vivi.synth import WorldConfig
    defaults = as_json(asdict(WorldConfig()))
    return {k: v for k, v in as_json(world).items() if v != defaults.get(k)}


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse ``out`` when it holds results made with other settings (world, scale, sizes); record ``settings``."""
    def read(stored: dict) -> dict:          # the world as this vivi's defaults record it
        world = _non_default(stored.pop("world", {}))
        return {**stored, "world": world} if world else stored

    path = out / "demo.json"
    refuse_other_settings(path, settings, holds="a demo run", ignore=SELECTION, read=read,
                          fix="use another --out, or delete the folder to start again")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))


def _kept_world(world_dir: Path, config) -> bool:
    """Whether ``world_dir`` holds a finished world made with ``config`` (a ``WorldConfig``);
    False when there is none or its generation stopped before the end (it is made again).
    A finished world of other settings (an older vivi's defaults, say) stops the demo."""
    path = world_dir / "world.json"
    if not path.exists() or not (world_dir / "tasks" / "suite.json").exists():   # suite.json: written last
        return False
    refuse_other_settings(path, asdict(config), holds="a world", read=lambda stored: stored.get("config", {}),
                          describe=lambda k, then, now: f"{k}: {then.get(k, 'unset')} there, {now.get(k, 'unset')} now",
                          fix="use another --out, or delete the folder to start again")
    return True


def run_demo(out: str | Path = "demo", *, mode: str = "default", workers: int = 2, seed: int = 0,
             methods: list[str] | None = None, rotation: bool = False, world: dict | None = None,
             train_size: int | None = None, progress: bool = True, **scale_overrides) -> dict:
    """Run the demo into ``out`` and return its summary (also in ``OUT/report/results.json``).

    mode: ``quick`` (a first look, a few minutes), ``default`` (≤ 15 min on a 2-core CPU) or
        ``full`` (8000 steps, five seeds: the significance of the papers' ordering).
    workers: processes for synth, ingest, and the jobs that train and evaluate side by side.
    seed: the world's seed. methods: names from ``vivi.demo.METHODS`` (default: the exemplar
        family); rotation: add the rotation variants.
    world: other :class:`vivi.synth.WorldConfig` settings of the world, e.g. ``{"tracking": 1.0,
        "background_warp": 1.0}`` for tracking shots (docs/design-notes.md says what they change).
    train_size: the training crop size of every method (``augment.size``; the presets' is 32);
        the linear probe stays at the world's 64 px.
    scale_overrides: any :class:`Scale` field (videos, seconds, steps, seeds, test_size), for tests
        and studies.
    """
    from vivi.data.inspect import dataset_stats, format_stats, render_contact_sheet
    from vivi.detect import build_detector, detect_dataset
    from vivi.eval.suite import load_suite
    from vivi.ingest import IngestConfig, SamplingConfig, ingest
    from vivi.synth import WorldConfig, make_world
    from vivi.synth.world import check_world_key

    out = Path(out)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    scale = demo_scale(mode, **scale_overrides)
    chosen = select_methods(methods, rotation)
    world_settings = dict(world or {})
    for key in world_settings:            # the mode sets the world's size; --seed its seed
        check_world_key(key)
    world_config = WorldConfig(videos=scale.videos, seconds=scale.seconds, size=64, seed=seed,
                               **world_settings)     # its range checks, before anything is written
    settings = {"mode": mode, **asdict(scale), "world_seed": seed, "methods": [m.name for m in chosen]}
    recorded = _non_default(world_settings)
    if recorded:                  # recorded only when not the defaults' world
        settings["world"] = recorded
    if train_size is not None:
        if train_size < 16:
            raise ValueError(f"train_size {train_size} is too small: the tiny encoder needs >= 16 px")
        settings["train_size"] = train_size
        chosen = [replace(m, overrides=(*m.overrides, f"augment.size={train_size}")) if m.trained else m
                  for m in chosen]
    world_dir, data, report = out / "world", out / "data", out / "report"
    # The demo's stages lock their own folders (world, data, runs, evals) too; this lock keeps a
    # second demo out of OUT as a whole.
    with writer_lock(out, "demo"):
        kept = _kept_world(world_dir, world_config)
        _check_settings(out, settings)
        timings: dict[str, float] = {}

        t = time.perf_counter()
        if kept:
            _stage(1, f"synth: {world_dir} exists, kept")
        else:
            _stage(1, f"synth: {scale.videos} videos x {scale.seconds:g} s and six downstream tasks -> {world_dir}")
            make_world(world_dir, videos=scale.videos, seconds=scale.seconds, size=64, seed=seed, workers=workers,
                       task_test_size=scale.test_size, progress=progress, **world_settings)
        timings["synth"] = time.perf_counter() - t

        t = time.perf_counter()
        _stage(2, f"ingest: {world_dir / 'videos'} -> {data}")
        print(ingest([world_dir / "videos"], data, IngestConfig(sampling=SamplingConfig(short_side=64)),
                     workers=workers, progress=progress))
        timings["ingest"] = time.perf_counter() - t

        t = time.perf_counter()
        _stage(3, "detect: the world's ground-truth boxes (the oracle detector)")
        print(detect_dataset(data, build_detector("groundtruth"), progress=progress))
        report.mkdir(parents=True, exist_ok=True)
        stats = dataset_stats(data)
        print(format_stats(stats))
        render_contact_sheet(data, report / "contact_sheet.png", detector="groundtruth")
        (report / "dataset.json").write_text(json.dumps(stats, indent=1))
        timings["detect + inspect"] = time.perf_counter() - t

        suite = load_suite(world_dir)
        images = len(suite) * (1000 + scale.test_size)        # train800val200 + test of every task
        jobs = plan_jobs(out, data, world_dir, chosen, scale, eval_images=images)
        trained = [m.label for m in chosen if m.trained]
        _stage(4, f"train {', '.join(trained)}: {scale.steps} steps each, {scale.seeds} seed(s); "
                  f"evaluate them and the random-init encoder on {len(suite)} tasks (linear probe), "
                  f"{workers} job(s) at a time")
        t = time.perf_counter()
        run_jobs(jobs, scale=scale, data=data, world=world_dir, tasks=len(suite), workers=workers, progress=progress)
        wall = time.perf_counter() - t
        work = {stage: sum(j.seconds for j in jobs if j.stage == stage) for stage in ("train", "eval")}
        timings["train + eval (wall)"] = wall
        timings["train (summed over jobs)"] = work["train"]
        timings["eval (summed over jobs)"] = work["eval"]

        _stage(5, "results")
        results = collect({m: [eval_folder(out, m, s) for s in range(scale.seeds)] for m in chosen})
        summary = write_report(results, report, settings=settings, timings=timings)
        print(format_table(*table(results)))
        print(PHOTOS_NOTE)
        print()
        for line in format_ordering(summary["ordering"], results):
            print(line)
        caveat = one_seed_caveat(summary["ordering"])
        if caveat:
            print(caveat)

        _stage(6, f"report -> {report / 'report.md'}")
        print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return {"stats": stats, "timings": timings, **summary}
