"""Cost of a training step against the bare encoder, and the loader against the trainer.

Prints, measured in one run on the same frames:

* the time of a full training step (augmentation on the device, encoder forward, heads, losses,
  backward, SGD update) and of the bare encoder forward + backward (+ the same SGD update) on
  the augmented frames flattened to (N·K·F, 3, S, S), and their ratio: what the losses, heads and
  augmentation add to the encoder's own cost;
* loader batches/s with the preset's worker count against training steps/s;
* the training step in fp32, in bf16 autocast and in bf16 autocast with ``torch.compile`` of the
  encoder, interleaved step by step, and their ratios (the compile time apart: the first compiled
  step less a compiled step). bf16 is measured only where the device computes it natively (where
  ``run.precision=auto`` picks it); ``--no-compile`` leaves the compiled variant out.

Usage (a synthetic dataset: `vivi synth W && vivi ingest W/videos --out D --short-side 64`)::

    python bench/train_step.py --data D [--config tiny-vivi-ex4] [--steps 10] [--no-compile] \
        [section.field=value ...]
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from vivi.data import make_loader
from vivi.train.augment import augment_config
from vivi.train.config import load_config
from vivi.train.loop import (
    StepContext,
    build_model,
    build_optimizer,
    resolve_precision,
    train_step,
    training_device,
)


def timed(fn, repeats: int, sync) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an ingested dataset")
    parser.add_argument("--config", default="tiny-vivi-ex4", help="preset or YAML (default tiny-vivi-ex4)")
    parser.add_argument("--steps", type=int, default=10, help="timed repeats of each measurement")
    parser.add_argument("--no-compile", action="store_true", help="leave out the bf16 + torch.compile variant")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    device = training_device(config, torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    d = config.data

    # ---- loader alone
    crop = augment_config(config.augment.preset, size=config.augment.size)    # as training: crops in the loader
    loader = make_loader(args.data, d, batch_size=d.videos, seed=0, workers=d.workers, crop=crop)
    it = iter(loader)
    batch = next(it)                                   # workers started, first batch ready
    time.sleep(1.0)                                    # let the prefetch queue fill, then drain it
    for _ in range(4 * max(1, d.workers)):
        next(it)
    t = time.perf_counter()
    n_loader = max(5 * args.steps, 8 * max(1, d.workers))
    for _ in range(n_loader):
        next(it)
    loader_rate = n_loader / (time.perf_counter() - t)
    del it, loader

    # ---- full training step on one in-memory batch
    torch.manual_seed(0)
    model = build_model(config, device)
    optimizer = build_optimizer(model, config)
    context = StepContext.create(config, device)
    if config.loss.cotrain_weight > 0:
        from vivi.data.images import LabeledImages
        source = LabeledImages(config.loss.cotrain_source, size=d.size or config.augment.size,
                               crop=augment_config(config.augment.cotrain_preset, size=config.augment.size))
        batch["images"], batch["image_labels"] = source.batch(config.loss.cotrain_images, [0])
    lr = 1e-3
    counter = itertools.count()

    def step():
        train_step(model, optimizer, batch, context, next(counter), lr)

    # ---- bare encoder on the same (augmented) frames
    frames, _, _ = context.augment(batch["frames"].to(device), seed=0)
    flat = frames.flatten(0, 2)
    if config.loss.frame == "rotation":
        flat = torch.cat([flat] * 4)
    if config.run.channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last)

    def encoder_only():
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=context.autocast):
            loss = model.encoder(flat).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):                                  # warm-up (allocator, compile)
        step()
        encoder_only()
    step_times, encoder_times = [], []
    for _ in range(args.steps):                         # interleaved: both see the same machine load
        step_times += timed(step, 1, sync)
        encoder_times += timed(encoder_only, 1, sync)
    s, e = statistics.median(step_times), statistics.median(encoder_times)
    frames_per_step = flat.shape[0]
    print(f"config {config.name} on {device}: {d.videos} videos x {d.shots} shots x {d.frames} frames "
          f"-> {frames_per_step} images of {config.augment.size} px, encoder {config.model.encoder}")
    print(f"training step (augment + encoder + heads + losses + update): median {s * 1e3:.1f} ms, "
          f"min {min(step_times) * 1e3:.1f} ms")
    print(f"bare encoder forward + backward + update:                    median {e * 1e3:.1f} ms, "
          f"min {min(encoder_times) * 1e3:.1f} ms")
    print(f"ratio step / encoder: median {s / e:.3f}, min/min {min(step_times) / min(encoder_times):.3f}")
    print(f"loader ({d.workers} workers): {loader_rate:.2f} batches/s; training: {1 / s:.2f} steps/s "
          f"-> {'loader-bound' if loader_rate < 1 / s else 'compute-bound'}")
    precisions(args, batch, device, sync)


def precisions(args, batch: dict, device: torch.device, sync) -> None:
    """The training step in fp32, bf16 and bf16 + compile, each with its own model from the same
    initialisation, timed in turns (so all see the same machine load)."""
    variants = {"fp32": ["run.precision=fp32", "run.compile=false"]}
    if resolve_precision("auto", device) == "bf16":
        variants["bf16"] = ["run.precision=bf16", "run.compile=false"]
        if not args.no_compile:
            variants["bf16 + compile"] = ["run.precision=bf16", "run.compile=true"]
    steps, first = {}, {}
    for name, overrides in variants.items():
        config = load_config(args.config, [*args.overrides, *overrides])
        torch.manual_seed(0)
        model = build_model(config, device)
        optimizer = build_optimizer(model, config)
        context = StepContext.create(config, device)
        counter = itertools.count()
        steps[name] = (lambda m=model, o=optimizer, c=context, n=counter:
                       train_step(m, o, batch, c, next(n), 1e-3))
        first[name] = timed(steps[name], 1, sync)[0]          # compiles the compiled variant
        timed(steps[name], 2, sync)                            # warm-up
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, step in steps.items():
            times[name] += timed(step, 1, sync)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"precision ({device}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; bf16 {'native' if 'bf16' in variants else 'not native: not measured'}):")
    for name, value in median.items():
        ratio = f"; fp32 / {name} = {median['fp32'] / value:.2f}" if name != "fp32" else ""
        print(f"  {name:15s} median {value * 1e3:7.1f} ms, min {min(times[name]) * 1e3:7.1f} ms{ratio}")
    if "bf16 + compile" in median:
        compiling = first["bf16 + compile"] - median["bf16 + compile"]
        print(f"  compiling (the first compiled step less a compiled step): {compiling:.1f} s")


if __name__ == "__main__":
    main()
