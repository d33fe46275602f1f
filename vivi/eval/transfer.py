"""``evaluate``: a checkpoint on a task suite, one protocol, resumable unit by unit.

A *unit* is the smallest piece of work whose result is kept:

* ``vtab1k``: (task, repetition, stage, setting) -- stage ``val`` is one sweep setting trained on
  train800 and scored on val200; stage ``test`` is the chosen setting retrained on
  train800val200 and scored on test;
* ``linear`` / ``knn``: (task) -- deterministic, one repetition.

Each unit's result is written atomically (temporary file + rename) to
``OUT/units/<task>/<unit>.json`` as soon as it is done; a rerun of the same command reads the
finished units and only computes the others. ``OUT/eval_config.json`` records the settings; a
rerun with different settings is refused (start a new OUT). When all units are done,
``OUT/results.json`` and ``OUT/results.md`` (per task, per group, mean) are written. While it
runs, the evaluation holds the folder's lock (``vivi.files.writer_lock``): a second evaluation
into the same OUT is refused.

Seeds: fine-tuning run (task t, repetition r, any setting) uses seed ``seed + 1000 * r`` (head
init, batch order); repetitions differ only by their seeds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import differing, refuse_other_settings, replacing, writer_lock
from . import vtab
from .probe import frozen_features, knn_classify, linear_probe
from .report import summarize
from .suite import SPLITS, Task, infer_num_classes, load_split, load_suite

__all__ = ["EvalConfig", "PROTOCOLS", "check_setting", "evaluate", "load_eval_encoder"]

SELECTIONS = ("auto", "suite", "task")
PROTOCOLS = ("vtab1k", "linear", "knn")
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation; the defaults are the VTAB-1k protocol (docs/reference.md, "VTAB-1k")."""
    protocol: str = "vtab1k"                          # vtab1k (fine-tune sweep) | linear (probe) | knn
    repetitions: int = 3                              # vtab1k runs per task with different seeds
                                                      # (VIVI §4: 3, median; Object-centric §4.2: 12)
    resolution: int | None = None                     # bilinear resize to r x r; None: 224 for vtab1k (the
                                                      # protocol's size), the encoder's training size for linear
                                                      # and knn (a probe of a 32 px model at 224 px is slower
                                                      # and scores lower)
    batch_size: int = 512                             # fine-tuning batch (VTAB: 512)
    learning_rates: tuple[float, ...] = (0.1, 0.01)   # sweep learning rates (VTAB lightweight sweep)
    steps: tuple[int, ...] = (2500, 10000)            # sweep step counts, before steps_scale
    steps_scale: float = 1.0                          # multiplies the step counts (0.01 for CPU smoke runs)
    decay_at: tuple[float, ...] = (0.3, 0.6, 0.9)     # lr x0.1 at these fractions of the steps
    momentum: float = 0.9                             # SGD momentum; weight decay is always 0
    seed: int = 0                                     # base seed of fine-tuning runs (+1000 per repetition)
    eval_batch_size: int = 256                        # images per forward pass for accuracy and features
    knn_k: int = 20                                   # neighbours of the kNN proxy
    probe_cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)   # inverse L2 strengths swept by the linear probe
    device: str = "auto"                              # torch device; "auto": the GPU where there is one
    select: str = "auto"                              # vtab1k: the sweep setting chosen per "task" (Object-centric
                                                      # §4.2) or one for the whole "suite" by the val200 accuracy
                                                      # averaged over its tasks (VIVI §4); "auto": by the paper of
                                                      # the checkpoint's preset (objcentric-*: task, else suite;
                                                      # a checkpoint without a preset: task)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if self.device == "auto":
            object.__setattr__(self, "device", "cuda" if torch.cuda.is_available() else "cpu")
        if self.resolution is not None:
            check_setting("resolution", self.resolution, flag="--resolution", integer=True, at_least=8)
        for name, flag, rule in (("repetitions", "--reps", dict(integer=True, at_least=1)),
                                 ("batch_size", "--batch-size", dict(integer=True, at_least=1)),
                                 ("learning_rates", None, dict(above=0)),
                                 ("steps", None, dict(integer=True, at_least=1)),
                                 ("steps_scale", "--steps-scale", dict(above=0)),
                                 ("decay_at", None, dict(at_least=0, at_most=1)),
                                 ("momentum", None, dict(at_least=0, below=1)),
                                 ("seed", "--seed", dict(integer=True, at_least=0)),
                                 ("eval_batch_size", None, dict(integer=True, at_least=1)),
                                 ("knn_k", "--knn-k", dict(integer=True, at_least=1)),
                                 ("probe_cs", None, dict(above=0))):
            check_setting(name, getattr(self, name), flag=flag, **rule)
        if self.select not in SELECTIONS:
            raise ValueError(f"unknown selection {self.select!r}; valid: {', '.join(SELECTIONS)}")
        check_device(self.device)

    def result_settings(self) -> dict:
        """The settings that the results of this protocol depend on: a resumed evaluation must
        have the same (batching for accuracy and the device only change the speed)."""
        used = {"vtab1k": ("repetitions", "batch_size", "learning_rates", "steps", "steps_scale", "decay_at",
                           "momentum", "seed", "select"),
                "linear": ("probe_cs",), "knn": ("knn_k",)}[self.protocol]
        return {name: getattr(self, name) for name in ("protocol", "resolution") + used}

    def finetune_config(self) -> vtab.FinetuneConfig:
        return vtab.FinetuneConfig(resolution=self.resolution, batch_size=self.batch_size, momentum=self.momentum,
                                   decay_at=self.decay_at, eval_batch_size=self.eval_batch_size, device=self.device)

    def settings(self) -> list[vtab.Setting]:
        return vtab.sweep_settings(self.learning_rates, self.steps, self.steps_scale)


def check_setting(name: str, value, *, flag: str | None = None, integer: bool = False, above: float | None = None,
                  at_least: float | None = None, below: float | None = None, at_most: float | None = None) -> None:
    """Raise ValueError (one line naming the setting, and its flag) unless ``value`` -- or each
    item of a tuple or list -- is a finite number (an integer where ``integer``) in the range."""
    if isinstance(value, (tuple, list)):
        if not value:
            raise ValueError(f"{name} must hold at least one value")
        for i, item in enumerate(value):
            check_setting(f"{name}[{i}]", item, integer=integer, above=above, at_least=at_least, below=below,
                          at_most=at_most)
        return
    bounds = [f"{word} {bound:g}" for word, bound in (("above", above), ("at least", at_least), ("below", below),
                                                       ("at most", at_most)) if bound is not None]
    kind = numbers.Integral if integer else numbers.Real
    fine = (isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
            and (above is None or value > above) and (at_least is None or value >= at_least)
            and (below is None or value < below) and (at_most is None or value <= at_most))
    if not fine:
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}{f' ({flag})' if flag else ''} must be {what} {' and '.join(bounds)}, got {value!r}")


def load_eval_encoder(checkpoint: str | Path, seed: int = 0, device: str = "cpu") -> nn.Module:
    """The encoder to evaluate: anything :func:`vivi.load_encoder` reads, or ``random:NAME`` for a
    randomly initialised encoder ``NAME`` of :data:`vivi.models.ENCODERS` (torch seed ``seed``),
    the random-init baseline."""
    text = str(checkpoint)
    if text.startswith(RANDOM_PREFIX):
        from vivi.models import create_encoder
        torch.manual_seed(seed)
        return create_encoder(text[len(RANDOM_PREFIX):]).to(device).eval()
    from vivi.api import load_encoder
    return load_encoder(checkpoint, device=device)


def check_device(device: str) -> None:
    """A clear error for a torch device this machine does not have (before any compute)."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine (or this torch build) has no CUDA GPU; use --device cpu, "
                         "or install a CUDA build of PyTorch (pytorch.org/get-started/locally)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use --device cpu")


def encoder_digest(encoder: nn.Module) -> str:
    """SHA-256 of the encoder's parameters and buffers: which weights an evaluation is of."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def chance_accuracy(task: Task) -> float:
    """The test accuracy of the best constant guess, the most frequent class of the test split:
    what an encoder that learned nothing scores at best (1 / classes on a balanced task)."""
    labels = load_split(task, "test").labels
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0


def _task_record(task: Task) -> dict:
    return {"name": task.name, "group": task.group, "source": task.source,
            "path": str(task.path.resolve()) if task.path is not None else None,
            "num_classes": task.num_classes, "options": task.options}


def _settings_of(header: dict) -> dict:
    """What a resumed evaluation must share with the folder's: the encoder's weights, the tasks and
    the settings that change results (the checkpoint's path may differ: a copy of the same weights)."""
    return {"checkpoint": header["checkpoint"], "encoder_sha256": header["encoder_sha256"], "tasks": header["tasks"],
            **header["result_settings"]}


def _describe_conflict(key: str, then: dict, now: dict) -> str:
    if key == "encoder_sha256":
        return (f"encoder weights: {then['checkpoint']} then, {now['checkpoint']} now (a run folder means its "
                "newest checkpoint, which may have changed since)")
    if key == "tasks":
        before, after = {t["name"]: t for t in then["tasks"]}, {t["name"]: t for t in now["tasks"]}
        return (f"tasks: {', '.join(differing(after, before))} added, removed, or with another folder, group or "
                "class count")
    return f"{key} {then.get(key)} then, {now.get(key)} now"


def _write_json(path: Path, data) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _read_json(path: Path):
    """A finished unit's record, None when there is none; a damaged one (not JSON) is said in one
    line and counts as not done, so the unit runs again."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        print(f"vivi eval: {path} is damaged (not JSON): running its unit again", file=sys.stderr, flush=True)
        return None


class _Units:
    """The finished units of an output folder; ``run(task, name, compute)`` computes a unit only once."""

    def __init__(self, out: Path, bar) -> None:
        self.out, self.bar = out, bar

    def run(self, task: str, name: str, compute) -> dict:
        path = self.out / "units" / task / f"{name}.json"
        result = _read_json(path)
        if result is None:
            self.bar.set_postfix_str(f"{task} {name}")
            result = compute()
            _write_json(path, result)
        self.bar.update(1)
        return result


class _LazySplits:
    """Splits of a task read on first use (a resumed task whose units are done reads nothing)."""

    def __init__(self, task: Task) -> None:
        self.task, self.cache = task, {}

    def __getitem__(self, split: str):
        if split not in self.cache:
            self.cache[split] = load_split(self.task, split)
        return self.cache[split]

    def num_classes(self) -> int:
        return infer_num_classes(self.task, [self[s] for s in SPLITS])


def _vtab1k(encoder, tasks: list[Task], config: EvalConfig, units: _Units) -> dict[str, dict]:
    """The sweep of every task: each setting trained on train800 and scored on val200, the chosen
    setting (per task, or one for the suite by the mean val200 accuracy over its tasks) trained on
    train800val200 and scored on test; for every repetition, with seed ``seed + 1000 * rep``."""
    splits = {task.name: _LazySplits(task) for task in tasks}
    ft = config.finetune_config()
    settings = config.settings()

    def val_unit(task: Task, setting, seed: int) -> dict:
        s = splits[task.name]
        model = vtab.finetune(encoder, s["train800"], s.num_classes(), setting, ft, seed)
        return {"lr": setting.lr, "steps": setting.steps, "val_accuracy": vtab.accuracy(model, s["val200"], ft)}

    def test_unit(task: Task, setting, seed: int) -> dict:
        s = splits[task.name]
        model = vtab.finetune(encoder, s["train800val200"], s.num_classes(), setting, ft, seed)
        return {"lr": setting.lr, "steps": setting.steps, "test_accuracy": vtab.accuracy(model, s["test"], ft)}

    results = {task.name: {"test_accuracy": [], "selected": [], "val": []} for task in tasks}

    def test(task: Task, rep: int, best) -> None:
        seed = config.seed + 1000 * rep
        result = units.run(task.name, f"rep{rep}-test-{best.key}", lambda: test_unit(task, best, seed))
        results[task.name]["test_accuracy"].append(result["test_accuracy"])
        results[task.name]["selected"].append({"lr": best.lr, "steps": best.steps})

    for task in tasks:
        for rep in range(config.repetitions):
            seed = config.seed + 1000 * rep
            val = {s.key: units.run(task.name, f"rep{rep}-val-{s.key}",
                                    lambda s=s: val_unit(task, s, seed))["val_accuracy"] for s in settings}
            results[task.name]["val"].append(val)
            if config.select == "task":
                test(task, rep, max(settings, key=lambda s: val[s.key]))      # max keeps the first of ties
    if config.select == "suite":
        for rep in range(config.repetitions):
            best = max(settings, key=lambda s: np.mean([results[t.name]["val"][rep][s.key] for t in tasks]))
            for task in tasks:
                test(task, rep, best)
    return results


def resolve_selection(config: EvalConfig, checkpoint: str | Path) -> EvalConfig:
    """``config`` with ``select="auto"`` replaced by the rule of the paper the checkpoint's preset
    reproduces: the object-centric presets select per task (Object-centric §4.2), the others one
    setting for the suite (VIVI §4); a checkpoint without a preset (random init, a foreign
    export) per task."""
    if config.select != "auto":
        return config
    name = None
    if not str(checkpoint).startswith(RANDOM_PREFIX):
        from vivi.train.checkpoint import read_encoder_file
        name = (read_encoder_file(checkpoint).get("config") or {}).get("name")
    select = "task" if not name or name in ("custom",) or name.startswith("objcentric") else "suite"
    return dataclasses.replace(config, select=select)


def _split_features(encoder, splits: dict, config: EvalConfig) -> dict[str, np.ndarray]:
    """Frozen features of every split, each image encoded once: train800val200 is train800 +
    val200 in VTAB-1k, so its rows are copied from theirs (matched by image id), not recomputed."""
    feats: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}
    for name in sorted(splits, key=lambda n: n == "train800val200"):    # the union last
        split = splits[name]
        if name == "train800val200" and all(i in rows for i in split.ids):
            feats[name] = np.stack([rows[i] for i in split.ids])
            continue
        feats[name] = frozen_features(encoder, split, config.resolution, config.eval_batch_size, config.device)
        rows.update(zip(split.ids, feats[name]))
    return feats


def _frozen_task(encoder, task: Task, config: EvalConfig, units: _Units) -> dict:
    def compute():
        splits = _LazySplits(task)
        feats = _split_features(encoder, {s: splits[s] for s in SPLITS}, config)
        labels = {s: splits[s].labels for s in SPLITS}
        if config.protocol == "linear":
            return linear_probe(feats, labels, config.probe_cs, splits.num_classes())
        pred = knn_classify(feats["train800val200"], labels["train800val200"], feats["test"], config.knn_k,
                            splits.num_classes())
        return {"test_accuracy": float(np.mean(pred == labels["test"])), "selected": {"k": config.knn_k}}

    result = units.run(task.name, config.protocol, compute)
    return {"test_accuracy": [result["test_accuracy"]], "selected": [result.get("selected")],
            "val": [result.get("val")]}


def evaluate(checkpoint: str | Path, suite: str | Path, out: str | Path, config: EvalConfig = EvalConfig(),
             progress: bool = True) -> dict:
    """Evaluate ``checkpoint`` on every task of ``suite`` with ``config.protocol``; resumable.

    ``checkpoint``: a run folder, checkpoint, exported encoder, or ``random:NAME``.
    ``suite``: a suite file, or a synthetic world / its ``tasks`` folder.
    Returns the results dict also written to ``OUT/results.json`` (accuracies as fractions).
    """
    from .report import write_results_markdown
    out = Path(out)
    tasks = load_suite(suite)
    config = resolve_selection(config, checkpoint)
    encoder = load_eval_encoder(checkpoint, config.seed, config.device)
    if config.resolution is None:
        resolution = 224 if config.protocol == "vtab1k" else getattr(encoder, "input_size", 224)
        config = dataclasses.replace(config, resolution=resolution)
    header = json.loads(json.dumps({
        "checkpoint": str(checkpoint), "encoder_sha256": encoder_digest(encoder), "suite": str(Path(suite).resolve()),
        "tasks": [_task_record(t) for t in tasks], "result_settings": config.result_settings(),
        "config": dataclasses.asdict(config)}))
    with writer_lock(out, "eval"):         # a second evaluation into OUT would compute and write the same units
        refuse_other_settings(out / "eval_config.json", _settings_of(header), holds="an evaluation",
                              read=_settings_of, ignore=("checkpoint",), describe=_describe_conflict,
                              fix="use a new --out, or the same checkpoint, tasks and settings to resume")
        _write_json(out / "eval_config.json", header)
        entries = _run_units(encoder, tasks, config, out, progress)
        results = {task.name: {"group": task.group, "median": float(np.median(entries[task.name]["test_accuracy"])),
                               "chance": chance_accuracy(task), **entries[task.name]} for task in tasks}
        summary = {**header, "protocol": config.protocol, "tasks": results, **summarize(results)}
        _write_json(out / "results.json", summary)
        write_results_markdown(summary, out / "results.md")
    return summary


def _run_units(encoder, tasks: list[Task], config: EvalConfig, out: Path, progress: bool) -> dict[str, dict]:
    from tqdm.auto import tqdm
    per_task = config.repetitions * (len(config.settings()) + 1) if config.protocol == "vtab1k" else 1
    with tqdm(total=len(tasks) * per_task, desc=f"eval {config.protocol}", unit="unit", disable=not progress) as bar:
        units = _Units(out, bar)
        if config.protocol == "vtab1k":
            return _vtab1k(encoder, tasks, config, units)
        return {task.name: _frozen_task(encoder, task, config, units) for task in tasks}
