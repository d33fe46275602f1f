"""One-shot check of vivi on a GPU machine: tests, data, step speed, loader, torchrun, timm export.

    python bench/gpu_check.py [--out DIR] [--dry-run] [--steps N] [--budget-s S]

(``bench/gpu_check.sh`` installs the carried wheels and runs this.) Each step runs in its own
process group with its own timeout, so a step that hangs or crashes is killed and recorded, and
the next one runs; the exit status is 1 when any step failed. Steps:

1. ``cuda_tests``: the tests of ``tests/`` that skip without CUDA (found by their decorators);
2. ``world``: ``vivi synth`` + ``vivi ingest`` of a small synthetic world at 224 px;
3. ``step_eager`` and ``step_compiled``: VIVI-Ex(4) (preset ``vivi-ex4``, ResNet-50 v2, bf16,
   channels_last) on one GPU, with a batch that fits (16 videos x 4 shots x 8 frames, halved on
   out-of-memory), without and with ``run.compile``: steps/s, frames/s, peak GPU memory
   (``torch.cuda.max_memory_allocated``) and the first steps' time (compilation);
4. in the same processes, the same augmented frames through a plain supervised step (vivi's
   encoder + a 1000-way linear head + cross-entropy, bf16, channels_last) as the reference, and
   the ratio VIVI-Ex(4) steps/s / supervised steps/s against 0.9;
5. ``loader``: frames/s of the clip loader with 14 workers on camera-like footage (the dataset of
   ``bench/loader_throughput.py``) against the frames/s the faster step consumes, against 1.2;
6. ``torchrun``: ``vivi torchrun --standalone --nproc-per-node 1 train`` a few steps (NCCL);
7. ``timm_export``: ``vivi export --format timm`` of the torchrun run and of random GroupNorm + WS
   ResNet-50 (and 3x wide) encoders, loaded into timm with ``strict=True``, features compared.

It writes ``gpu_check.json`` (one record per step: ok, seconds, timeout, error or skip reason,
measurements; and a summary of the ratios against their thresholds) and ``gpu_check.txt`` to ``--out``
(default ``$OUT``, else ``./gpu_check``), and each step's output to ``logs/``.

``--dry-run`` runs the same steps on the CPU at toy sizes (a 64 px world, the tiny presets, a few
steps, 2 workers, gloo, torch.compile's eager backend): the JSON has the same keys
(tests/test_gpu_check.py runs it). Where timm is not importable the timm comparison is skipped
with that reason, and the export's names and shapes are still checked.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ("cuda_tests", "world", "step_eager", "loader", "torchrun", "timm_export", "step_compiled")
RATIO_THRESHOLD = 0.9            # VIVI-Ex(4) steps/s over the supervised step's
LOADER_THRESHOLD = 1.2           # loader frames/s over the frames/s the step consumes

# Sizes of the GPU check and of the dry run; timeouts in seconds.
MODES = {
    "gpu": dict(world=["--videos", "48", "--seconds", "20", "--size", "224"], short_side=224, preset="vivi-ex4",
                overrides=["data.videos=16", "data.size=224", "run.precision=bf16", "run.channels_last=true",
                           "model.sync_bn=false"],
                steps=100, warmup=3, footage_videos=16, footage=(456, 256), loader_workers=14, workers=16,
                torchrun_steps=5, torchrun_workers=8,
                timeouts=dict(cuda_tests=150, world=150, step_eager=150, loader=150, torchrun=180, timm_export=150,
                              step_compiled=300), budget_s=470, image=224),
    "dry": dict(world=["--videos", "6", "--seconds", "10", "--size", "64"], short_side=64, preset="tiny-vivi-ex4",
                overrides=["data.videos=4", "run.precision=fp32"],
                steps=4, warmup=1, footage_videos=2, footage=(114, 64), loader_workers=2, workers=2,
                torchrun_steps=2, torchrun_workers=0,
                timeouts=dict(cuda_tests=40, world=40, step_eager=40, loader=40, torchrun=60, timm_export=40,
                              step_compiled=60), budget_s=150, image=64),
}


# ---------------------------------------------------------------- the steps (each in its own process)

def _vivi(*argv: str) -> None:
    """A vivi command, in this process (its output goes to the step's log); raises on failure."""
    from vivi.cli import main
    status = main(list(argv))
    if status:
        raise RuntimeError(f"vivi {' '.join(argv[:2])} ... exited with status {status}")


def cuda_test_ids(tests: Path = REPO / "tests") -> list[str]:
    """Node ids of the test functions (and methods) whose decorators mention CUDA: the tests that
    skip on a machine without a GPU."""
    ids = []
    for path in sorted(tests.glob("test_*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        for node in tree.body:
            members = [(node, "")] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.ClassDef):
                members = [(m, f"{node.name}::") for m in node.body if isinstance(m, ast.FunctionDef)]
            for function, prefix in members:
                decorators = " ".join(ast.get_source_segment(source, d) or "" for d in function.decorator_list)
                if function.name.startswith("test") and "cuda" in decorators.lower():
                    ids.append(f"tests/{path.name}::{prefix}{function.name}")
    return ids


def step_cuda_tests(ctx: dict) -> dict:
    ids = cuda_test_ids()
    if not ids:
        return {"skipped": "no test in tests/ is marked as needing CUDA", "tests": []}
    import pytest

    class Outcomes:
        counts: dict[str, int] = {}

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                Outcomes.counts[report.outcome] = Outcomes.counts.get(report.outcome, 0) + 1

    status = pytest.main(["-q", "-p", "no:cacheprovider", "-rs", f"--rootdir={REPO}", *ids], plugins=[Outcomes()])
    counts = {f"tests_{k}": n for k, n in Outcomes.counts.items()}
    if status:
        raise RuntimeError(f"pytest exited with status {int(status)}: {counts}")
    return {"tests": ids, **counts}


def step_world(ctx: dict) -> dict:
    mode, work = MODES[ctx["mode"]], Path(ctx["work"])
    _vivi("synth", str(work / "world"), *mode["world"], "--workers", str(mode["workers"]), "--no-tasks")
    _vivi("ingest", str(work / "world" / "videos"), "--out", str(work / "data"), "--short-side",
          str(mode["short_side"]), "--workers", str(mode["workers"]))
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    return {key: manifest[key] for key in ("videos", "shots", "frames") if key in manifest}


def _training_setup(ctx: dict, compile: bool, videos: int):
    import torch

    from vivi.data import make_loader
    from vivi.train.config import load_config
    from vivi.train.loop import StepContext, build_model, build_optimizer, training_device
    mode = MODES[ctx["mode"]]
    config = load_config(mode["preset"], [*mode["overrides"], f"data.videos={videos}", "data.workers=0",
                                          f"run.compile={str(compile).lower()}"])
    device = training_device(config, torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    batch = next(iter(make_loader(Path(ctx["work"]) / "data", config.data, batch_size=videos, seed=0, workers=0)))
    torch.manual_seed(0)
    model = build_model(config, device)
    return config, device, batch, model, build_optimizer(model, config), StepContext.create(config, device)


def _supervised_step(config, device, frames, compile: bool, autocast: bool):
    """The reference: vivi's encoder + a linear 1000-way head + cross-entropy + SGD, on ``frames``."""
    import torch
    from torch import nn

    from vivi.train.model import CompiledOrEager, build_encoder, encoder_spec
    encoder = build_encoder(encoder_spec(config)).to(device)
    if config.run.channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
        frames = frames.contiguous(memory_format=torch.channels_last)
    head = nn.Linear(encoder.num_features, 1000).to(device)
    # the same compiled function as the VIVI model's (forward_features), so both steps run one graph
    features = CompiledOrEager(encoder.forward_features, "the supervised encoder") if compile else \
        encoder.forward_features
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=1e-3, momentum=0.9,
                                weight_decay=1e-4)
    labels = torch.randint(0, 1000, (frames.shape[0],), device=device, generator=torch.Generator(device).manual_seed(0))

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = head(features(frames)["pre_logits"])
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _measure(ctx: dict, compile: bool, videos: int) -> dict:
    import itertools

    import torch

    from vivi.train.loop import train_step
    mode = MODES[ctx["mode"]]
    config, device, batch, model, optimizer, context = _training_setup(ctx, compile, videos)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    counter = itertools.count()

    def vivi_step():
        train_step(model, optimizer, batch, context, next(counter), 1e-3)

    frames = context.augment(batch["frames"].to(device), seed=0)[0].flatten(0, 2)
    supervised_step = _supervised_step(config, device, frames, compile, context.autocast)
    out = {"videos": videos, "frames_per_step": int(frames.shape[0]), "image": int(frames.shape[-1]),
           "precision": context.precision, "channels_last": config.run.channels_last, "device": str(device)}
    for name, fn in (("vivi", vivi_step), ("supervised", supervised_step)):
        sync()
        start = time.perf_counter()
        for _ in range(mode["warmup"]):                          # compilation, allocator, cuDNN choices
            fn()
        sync()
        out[name] = {"first_steps_s": round(time.perf_counter() - start, 2), "seconds": 0.0, "steps": 0,
                     "peak_memory_gib": 0.0}
    for _ in range(2):                                          # alternating halves: both see the same machine
        for name, fn in (("vivi", vivi_step), ("supervised", supervised_step)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            n = max(1, ctx["steps"] // 2)
            sync()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            record = out[name]
            record["seconds"] += time.perf_counter() - start
            record["steps"] += n
            if cuda:
                record["peak_memory_gib"] = max(record["peak_memory_gib"], torch.cuda.max_memory_allocated() / 2**30)
    for name in ("vivi", "supervised"):
        record = out[name]
        record["steps_per_s"] = record["steps"] / record["seconds"]
        record["frames_per_s"] = record["steps_per_s"] * out["frames_per_step"]
        record["peak_memory_gib"] = round(record["peak_memory_gib"], 2)
    out["ratio"] = out["vivi"]["steps_per_s"] / out["supervised"]["steps_per_s"]
    out["ratio_threshold"], out["ratio_pass"] = RATIO_THRESHOLD, out["ratio"] >= RATIO_THRESHOLD
    if compile:
        out["compiled"] = model.compiled_features is not None and model.compiled_features.compiled is not None
    return out


def _step_training(ctx: dict, compile: bool) -> dict:
    import torch
    if ctx["mode"] == "dry" and compile:
        # the dry run traces with torch.compile's eager backend: C++ code generation would take
        # minutes on a small CPU, and the point is that the compiled path runs
        import functools
        torch.compile = functools.partial(torch.compile, backend="eager")
    videos = int(next(o for o in MODES[ctx["mode"]]["overrides"] if o.startswith("data.videos=")).split("=")[1])
    tried = []
    while True:
        try:
            return {**_measure(ctx, compile, videos), "out_of_memory_at_videos": tried}
        except torch.cuda.OutOfMemoryError:
            if videos <= 4:
                raise
            tried.append(videos)
        # out of the except block, the failed attempt's tensors are unreferenced and can be freed
        import gc
        gc.collect()
        torch.cuda.empty_cache()
        videos //= 2


def step_step_eager(ctx: dict) -> dict:
    return _step_training(ctx, compile=False)


def step_step_compiled(ctx: dict) -> dict:
    return _step_training(ctx, compile=True)


def drained_loader_rate(loader, workers: int, batches: int) -> float:
    """Frames/s of ``loader`` once its workers run and the batches they prefetched at the start are
    drained (otherwise the first batches come from the queue, not from decoding)."""
    it = iter(loader)
    next(it)
    time.sleep(1.0)
    for _ in range(2 * workers):
        next(it)
    start, frames = time.perf_counter(), 0
    for _ in range(batches):
        frames += next(it)["frames"].shape[:3].numel()
    return frames / (time.perf_counter() - start)


def step_loader(ctx: dict) -> dict:
    sys.path.insert(0, str(REPO / "bench"))
    from loader_throughput import make_footage

    from vivi.data import make_loader
    from vivi.train.augment import augment_config
    from vivi.train.config import load_config
    mode, work = MODES[ctx["mode"]], Path(ctx["work"])
    width, height = mode["footage"]
    make_footage(work / "footage", mode["footage_videos"], width=width, height=height)
    _vivi("ingest", str(work / "footage"), "--out", str(work / "footage-data"), "--workers", str(mode["workers"]))
    config = load_config(mode["preset"], mode["overrides"])
    workers = mode["loader_workers"]
    crop = augment_config(config.augment.preset, size=config.augment.size)     # the training loader's crops
    loader = make_loader(work / "footage-data", config.data, batch_size=config.data.videos, seed=0, workers=workers,
                         crop=crop)
    rate = drained_loader_rate(loader, workers, batches=max(8, 4 * workers))
    return {"workers": workers, "frames_per_s": rate, "batch_frames": config.data.videos * config.data.shots *
            config.data.frames, "size": config.data.size,
            "dataset": f"camera-like footage (bench/loader_throughput.py), {width}x{height} JPEG frames"}


def step_torchrun(ctx: dict) -> dict:
    import torch

    from vivi.train.checkpoint import read_checkpoint
    mode, work = MODES[ctx["mode"]], Path(ctx["work"])
    run = work / "torchrun-run"
    overrides = [*mode["overrides"], f"data.workers={mode['torchrun_workers']}",
                 f"optim.steps={mode['torchrun_steps']}", "run.log_every=1", "optim.warmup_steps=1"]
    _vivi("torchrun", "--standalone", "--nproc-per-node", "1", "train", "--config", mode["preset"], "--data",
          str(work / "data"), "--out", str(run), *overrides)
    checkpoint = read_checkpoint(run)
    if checkpoint["step"] != mode["torchrun_steps"] or checkpoint["world_size"] != 1:
        raise RuntimeError(f"the torchrun run stopped at step {checkpoint['step']} with world size "
                           f"{checkpoint['world_size']}")
    return {"steps": checkpoint["step"], "backend": "nccl" if torch.cuda.is_available() else "gloo",
            "run": str(run), "encoder": checkpoint["encoder"]}


def _encoder_file(path: Path, name: str, norm: str) -> Path:
    """A vivi encoder export of a randomly initialised encoder (no training run needed)."""
    import torch
    from safetensors.torch import save_file

    from vivi.models import create_encoder
    torch.manual_seed(0)
    encoder = create_encoder(name, norm=norm)
    with torch.no_grad():
        for module in encoder.modules():                 # norms away from their initial 1 / 0
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    spec = {"name": name, "overrides": {"norm": norm}}
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path),
              metadata={"kind": "vivi-encoder", "encoder": json.dumps(spec), "config": "null"})
    return path


def _compare_with_timm(source: Path, exported: Path, image: int, device) -> dict:
    """Features of vivi's encoder and of the timm model built from the export, on the same images."""
    import torch
    from safetensors.torch import load_file

    from vivi import load_encoder
    from vivi.models.timm_keys import timm_model, timm_target_of
    state = load_file(str(exported))
    target = timm_target_of(state)
    model = timm_model(target)
    model.load_state_dict(state, strict=True)
    model = model.to(device).eval()
    encoder = load_encoder(source, device)
    x = torch.rand(4, 3, image, image, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ours, theirs = encoder(x).float(), model((x - 0.5) / 0.5).float()
        result = {"timm": target.code(), "max_abs_diff": (ours - theirs).abs().max().item(),
                  "max_abs_feature": ours.abs().max().item()}
        result["max_rel_diff"] = result["max_abs_diff"] / max(result["max_abs_feature"], 1e-12)
        if target.layout and target.layout != target.model:
            import timm
            bit = timm.create_model(target.layout, num_classes=0)
            bit.load_state_dict(state, strict=True)         # the same names load, and compute otherwise:
            other = bit.to(device).eval()((x - 0.5) / 0.5).float()
            result[f"max_abs_diff_in_{target.layout}"] = (ours - other).abs().max().item()
    return result


def step_timm_export(ctx: dict) -> dict:
    import torch
    from safetensors.torch import load_file

    from vivi.api import export
    from vivi.models.timm_keys import timm_state_shapes, timm_target_of
    mode, work = MODES[ctx["mode"]], Path(ctx["work"])
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False   # compare in full fp32
    sources = {"torchrun_run": work / "torchrun-run",
               "resnet50_v2_gnws": _encoder_file(work / "resnet50-gnws.safetensors", "resnet50_v2", "gnws")}
    if ctx["mode"] == "gpu":
        sources["resnet50x3_v2_gnws"] = _encoder_file(work / "resnet50x3-gnws.safetensors", "resnet50x3_v2", "gnws")
    else:
        sources["resnet50_v2_bn"] = _encoder_file(work / "resnet50-bn.safetensors", "resnet50_v2", "bn")
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    out: dict = {"timm_version": timm_version}
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    for name, source in sources.items():
        exported = work / f"{name}-timm.safetensors"
        try:
            export(source, exported, format="timm")
        except ValueError as error:          # the tiny encoders of the dry run: refused, as they should be
            if "has no timm counterpart" not in str(error) or ctx["mode"] == "gpu":
                raise
            out[name] = {"refused": str(error)}
            continue
        target = timm_target_of(load_file(str(exported)))
        layout = target.layout or target.model
        shapes = {k: tuple(v.shape) for k, v in load_file(str(exported)).items()}
        record = {"timm": target.code(), "names_and_shapes_match": shapes == timm_state_shapes(layout)}
        if not record["names_and_shapes_match"]:
            raise RuntimeError(f"{name}: the export's names or shapes differ from timm's {layout}")
        if timm_version is not None:
            record.update(_compare_with_timm(source, exported, mode["image"], device))
            if record["max_rel_diff"] > 1e-4:
                raise RuntimeError(f"{name}: timm's features differ from vivi's by {record['max_rel_diff']:.3g} "
                                   "(relative to the largest feature)")
        out[name] = record
    if timm_version is None:
        out["skipped"] = "timm not importable"
    return out


# ---------------------------------------------------------------- the driver

def _child(args: argparse.Namespace) -> int:
    ctx = {"mode": args.mode, "work": args.work, "steps": args.steps, "log": args.log, "timeout": args.timeout}
    if args.mode == "dry":
        # one intra-op thread: on a small shared CPU, OpenMP's spinning threads under
        # oversubscription make the toy steps many times slower
        import torch
        torch.set_num_threads(1)
    try:
        result = {"ok": True, **globals()[f"step_{args.run_step}"](ctx)}
    except Exception as error:   # recorded in the report: the driver goes on with the next step
        import traceback
        with open(args.log, "a") as log:
            traceback.print_exc(file=log)
        result = {"ok": False, "error": f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"}
    Path(args.result).write_text(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the step's process group (its DataLoader workers, torchrun's agent), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(name: str, args: argparse.Namespace, work: Path, logs: Path, deadline: float) -> dict:
    timeout = min(MODES[args.mode]["timeouts"][name], deadline - time.monotonic())
    record: dict = {"name": name, "timeout_s": round(timeout)}
    if timeout < 5:
        return {**record, "ok": False, "seconds": 0.0, "error": "not run: the check's time budget is spent"}
    result_file, log = work / f"{name}.result.json", logs / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--run-step", name, "--mode", args.mode, "--work",
               str(work), "--steps", str(args.steps), "--log", str(log), "--result", str(result_file),
               "--timeout", str(timeout)]
    start = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
    record["seconds"] = round(time.monotonic() - start, 1)
    if process.returncode is None or not result_file.exists():
        reason = f"timed out after {timeout:.0f} s" if time.monotonic() - start >= timeout else \
            f"the step's process died (status {process.returncode}); see logs/{name}.log"
        return {**record, "ok": False, "error": reason}
    return {**record, **json.loads(result_file.read_text())}


def summary(steps: dict) -> dict:
    """The ratios against their thresholds, from the steps' measurements (None where a step failed)."""
    def get(step, *keys):
        value = steps.get(step, {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    consumed = [v for v in (get("step_eager", "vivi", "frames_per_s"), get("step_compiled", "vivi", "frames_per_s"))
                if v is not None]
    loader = get("loader", "frames_per_s")
    over = loader / max(consumed) if loader is not None and consumed else None
    timm_diffs = [r["max_rel_diff"] for r in steps.get("timm_export", {}).values()
                  if isinstance(r, dict) and "max_rel_diff" in r]
    return {
        "ratio_threshold": RATIO_THRESHOLD, "ratio_eager": get("step_eager", "ratio"),
        "ratio_compiled": get("step_compiled", "ratio"),
        "ratio_pass": {k: get(k, "ratio_pass") for k in ("step_eager", "step_compiled")},
        "loader_threshold": LOADER_THRESHOLD, "loader_over_step": over,
        "loader_pass": None if over is None else over >= LOADER_THRESHOLD,
        "timm_max_rel_diff": max(timm_diffs) if timm_diffs else None,
        "failed_steps": [name for name, record in steps.items() if not record.get("ok")],
    }


def text_report(report: dict) -> str:
    lines = [f"vivi GPU check ({'dry run, CPU' if report['dry_run'] else 'GPU'}) on {report['device']}, "
             f"torch {report['torch']}, {report['seconds']:.0f} s"]
    for name, record in report["steps"].items():
        state = "ok" if record.get("ok") else "FAILED"
        counts = ", ".join(f"{n} {key[len('tests_'):]}" for key, n in record.items() if key.startswith("tests_"))
        detail = record.get("error") or record.get("skipped") or counts
        lines.append(f"  {name:<14} {state:<7} {record.get('seconds', 0):6.1f} s  {detail}")
    for name in ("step_eager", "step_compiled"):
        r = report["steps"].get(name, {})
        if "vivi" in r:
            v = r["vivi"]
            lines.append(f"  {name}: VIVI-Ex(4) {v['steps_per_s']:.2f} steps/s ({v['frames_per_s']:.0f} "
                         f"frames/s, peak {v['peak_memory_gib']} GiB), supervised "
                         f"{r['supervised']['steps_per_s']:.2f} steps/s, ratio {r['ratio']:.3f} "
                         f"({'pass' if r['ratio_pass'] else 'below'} {RATIO_THRESHOLD}), "
                         f"{r['frames_per_step']} frames/step")
    s = report["summary"]
    if s["loader_over_step"] is not None:
        rate = report["steps"]["loader"]["frames_per_s"]
        lines.append(f"  loader {rate:.0f} frames/s = {s['loader_over_step']:.2f}x the step's"
                     f" ({'pass' if s['loader_pass'] else 'below'} {LOADER_THRESHOLD})")
    if s["timm_max_rel_diff"] is not None:
        lines.append(f"  timm features: largest relative difference {s['timm_max_rel_diff']:.2g}")
    lines.append("all steps ok" if not s["failed_steps"] else f"FAILED: {', '.join(s['failed_steps'])}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="report folder (default $OUT, else ./gpu_check)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of each step variant (GPU 100, dry 4)")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for the whole check (GPU 470, dry 150)")
    parser.add_argument("--only", nargs="+", choices=STEPS, default=None, help="run only these steps")
    parser.add_argument("--run-step", choices=STEPS, help=argparse.SUPPRESS)
    for hidden in ("--mode", "--work", "--log", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_step:
        args.steps = int(args.steps)
        return _child(args)

    import torch
    args.mode = "dry" if args.dry_run else "gpu"
    mode = MODES[args.mode]
    args.steps = args.steps or mode["steps"]
    if args.mode == "gpu" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; run with --dry-run for the CPU version", file=sys.stderr)
        return 2
    out = args.out or Path(os.environ.get("OUT") or "gpu_check")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + (args.budget_s or mode["budget_s"])
    report = {"dry_run": args.dry_run, "torch": torch.__version__, "python": sys.version.split()[0],
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU", "steps": {}}
    with tempfile.TemporaryDirectory(prefix="vivi-gpu-check-") as work:
        for name in args.only or STEPS:
            record = run_step(name, args, Path(work), logs, deadline)
            report["steps"][name] = record
            print(f"{name}: {'ok' if record.get('ok') else 'FAILED'} ({record.get('seconds', 0):.1f} s)"
                  + (f" {record['error']}" if record.get("error") else ""), flush=True)
    report["seconds"] = time.monotonic() - start
    report["summary"] = summary(report["steps"])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    text = text_report(report)
    (out / "gpu_check.txt").write_text(text)
    print(text, end="")
    return 1 if report["summary"]["failed_steps"] else 0


if __name__ == "__main__":
    sys.exit(main())
