"""The training entry point: ``train(config, data, out, resume=False)``.

Reads top to bottom in the sections of DINO's ``main_dino.py``: setup, data, model, losses,
optimizer, schedule, resume, loop. The same function runs as one CPU process, on one GPU
(bf16 autocast, channels_last, optional torch.compile) and under ``torchrun`` (DDP; gloo on
CPU, NCCL on GPU; each rank reads its own shard of the video stream; the InfoNCE negatives are
gathered from all ranks inside the loss).

Exact resume: parameters, buffers and SGD momentum come from the checkpoint; the learning rate
is ``lr_schedule[step]``; the data stream restarts at ``start_batch = step``; the augmentation,
shot reversal, random boxes and co-training images are drawn from seeds derived from
(seed, step, rank). So k steps + resume + (n - k) steps == n steps.

The run folder ``out`` holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON record per
``log_every`` steps: every weighted loss term, the total, the learning rate, the gradient norm,
the diagnostics, frames/s), TensorBoard events (when ``tensorboard`` is installed) and
``checkpoints/step-XXXXXXX.safetensors``.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vivi.data import make_loader
from vivi.distributed import all_reduce_mean, cleanup_distributed, init_distributed_from_env
from vivi.train.augment import build_augmentation
from vivi.train.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from vivi.train.config import TrainConfig, config_from_dict, config_json, config_to_dict, dump_config, load_config
from vivi.train.model import VIVIModel, encoder_spec, weighted_terms

__all__ = ["NonFiniteLossError", "build_optimizer", "learning_rate_schedule", "step_seed", "train", "train_step"]


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the run stops at once (nothing is written for that step)."""


def learning_rate_schedule(config: TrainConfig) -> np.ndarray:
    """lr for every step (DINO style: an array indexed by step).

    Peak = ``optim.lr`` × (N·K / ``optim.base_batch``) with N·K the global shots per step (linear
    scaling, VIVI §4); linear warm-up from 0 over ``warmup_steps``; ×``decay_factor`` at each of
    ``decay_steps``. The number of ranks does not enter: ``data.videos`` is already global.
    """
    o, d = config.optim, config.data
    shots = d.videos * (d.shots if d.mode == "shots" else 1)
    peak = o.lr * shots / o.base_batch
    steps = np.arange(o.steps)
    warmup = np.minimum(1.0, (steps + 1) / max(1, o.warmup_steps))
    decay = o.decay_factor ** np.searchsorted(np.asarray(o.decay_steps), steps, side="right")
    return peak * warmup * decay


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """A 63-bit seed for (run seed, step, rank, stream): resumable randomness without saved state."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on conv/linear weights, not on norm scales/offsets or biases
    (*unverified*: the papers do not say which parameters decay)."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": config.optim.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=0.0, momentum=config.optim.momentum)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, *, config: TrainConfig,
               augment: nn.Module, cotrain_augment: nn.Module | None, lr: float, step: int, rank: int,
               device: torch.device, autocast: bool) -> dict[str, float]:
    """One optimisation step; returns the measurements to log as is (big_vision style).

    Raises NonFiniteLossError naming the step and the term when any weighted term is not finite.
    """
    seed = config.run.seed
    frames = batch["frames"].to(device, non_blocking=True)
    boxes = labels = None
    if "boxes" in batch and hasattr(_unwrap(model), "object_loss"):
        boxes, labels = batch["boxes"].to(device), batch["box_labels"].to(device)
        frames, boxes, valid = augment(frames, boxes, labels >= 0, seed=step_seed(seed, step, rank, 0))
        labels = labels.masked_fill(~valid, -1)          # boxes whose centre left the crop
    else:
        frames, _, _ = augment(frames, seed=step_seed(seed, step, rank, 0))
    images = image_labels = None
    if "images" in batch:
        images, _, _ = cotrain_augment(batch["images"].to(device), seed=step_seed(seed, step, rank, 1))
        image_labels = batch["image_labels"].to(device)
    generator = torch.Generator(device=device).manual_seed(step_seed(seed, step, rank, 2))

    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        terms, diagnostics = model(frames, boxes, labels, images, image_labels, generator=generator)
    terms = weighted_terms(config, terms)
    total = sum(terms.values())
    # averaged over ranks (one small all-reduce): the log shows the global batch, and every rank
    # sees the same values, so all stop together on a non-finite term instead of hanging
    values = all_reduce_mean(torch.stack([total.detach().float()] + [t.detach().float() for t in terms.values()]))
    values = values.cpu()
    if not torch.isfinite(values).all():
        bad = [name for name, v in zip(terms, values[1:].tolist()) if not math.isfinite(v)] or ["total"]
        raise NonFiniteLossError(f"non-finite loss at step {step + 1}: term {bad[0]!r} = "
                                 f"{dict(zip(terms, values[1:].tolist()))[bad[0]] if bad[0] in terms else values[0].item()} "
                                 f"(all terms: {', '.join(f'{k}={v:.4g}' for k, v in zip(terms, values[1:].tolist()))})")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    optimizer.step()
    out = {"loss": values[0].item(), "lr": lr, "grad_norm": grad_norm.item()}
    out.update({f"loss/{name}": v for name, v in zip(terms, values[1:].tolist())})
    out.update({name: float(v) for name, v in diagnostics.items()})
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _CotrainBatches:
    """Adds ``images``/``image_labels`` to each video batch from a LabeledImages source."""

    def __init__(self, loader, source, per_rank: int, seed: int, rank: int, start: int):
        self.loader, self.source, self.per_rank = loader, source, per_rank
        self.seed, self.rank, self.step = seed, rank, start

    def __iter__(self):
        for batch in self.loader:
            batch["images"], batch["image_labels"] = self.source.batch(self.per_rank, [self.seed, self.step, self.rank, 3])
            self.step += 1
            yield batch


# What ``--resume`` may change: how the run is carried out, and how long it goes on. Anything else
# (the model, the data, the losses, the schedule) would no longer be the checkpoint's run.
RESUME_OVERRIDES = ("optim.steps", "run.log_every", "run.ckpt_every", "run.keep_checkpoints", "run.device",
                    "run.precision", "run.channels_last", "run.compile", "data.workers")


def _resumed_config(checkpoint: dict, asked, overrides, out: Path) -> TrainConfig:
    """The run's own config with the overrides that ``--resume`` allows (:data:`RESUME_OVERRIDES`)."""
    saved = config_from_dict(checkpoint["config"])
    if isinstance(asked, (str, Path)) and load_config(asked, validate=False).name != saved.name:
        raise ValueError(f"{out} is a {saved.name!r} run, not {str(asked)!r}: --resume continues the run's own "
                         f"config (pass --config {saved.name}, or a new --out for another run)")
    config = load_config(saved, overrides)
    before, after = config_to_dict(saved), config_to_dict(config)
    changed = sorted(f"{section}.{key}" for section, values in after.items() if isinstance(values, dict)
                     for key, value in values.items() if before[section][key] != value)
    refused = [key for key in changed if key not in RESUME_OVERRIDES]
    if refused:
        raise ValueError(f"--resume continues the run's own config; {', '.join(refused)} cannot change (the "
                         "checkpoint was trained without it): start another run with a new --out. On resume "
                         f"these may change: {', '.join(RESUME_OVERRIDES)}")
    if config.optim.steps < checkpoint["step"]:
        raise ValueError(f"{out} is at step {checkpoint['step']} already; pass optim.steps larger than that "
                         f"to train further (got {config.optim.steps})")
    return config


def _records_until(metrics: Path, step: int) -> list[str]:
    """The lines of ``metrics.jsonl`` logged at or before ``step``; a last line cut short (the
    process was killed while writing it) is dropped."""
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{metrics} line {number} is not JSON: repair or delete that line, then resume") from None
        if record.get("step", 0) <= step:
            kept.append(line)
    return kept


class _StopAtStepEnd:
    """Ctrl-C in a one-process run: the step under way is finished and a checkpoint written before
    the run stops (``requested``); a second Ctrl-C stops at once. Under torchrun every rank would
    have to agree on the step, so there Ctrl-C stops at once (the last periodic checkpoint stays)."""

    def __init__(self, enabled: bool):
        self.requested = False
        self._previous = None
        if enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def guard(self, batches):
        """``batches``; they end early when Ctrl-C also stopped the DataLoader's workers."""
        iterator = iter(batches)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError:     # "DataLoader worker ... exited unexpectedly": they took the Ctrl-C too
                if not self.requested:
                    raise
                return
            yield batch

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def train(config: TrainConfig | str | Path | None, data: str | Path, out: str | Path, resume: bool = False,
          overrides: list[str] | dict | None = None, progress: bool = True) -> dict:
    """Train a VIVI model; returns the last logged measurements and the run folder.

    Args:
        config: a TrainConfig, a preset name or a YAML file (with ``resume``: None, or the run's own).
        data: an ingested dataset (``vivi ingest``), with detections for the object loss.
        out: the run folder (created; one that holds checkpoints needs ``resume``).
        resume: continue from the newest checkpoint in ``out`` (the saved config is used;
            ``overrides`` may change only :data:`RESUME_OVERRIDES`, such as ``optim.steps``).
        overrides: ``section.field=value`` strings or a nested dict.
        progress: show the tqdm bar (rank 0).
    """
    # ============ setup: config, processes, device ... ============
    out = Path(out)
    checkpoint = None
    found = latest_checkpoint(out)
    if resume:
        if found is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out}/checkpoints (a run interrupted before its "
                                    "first checkpoint starts over: run the command without --resume)")
        checkpoint = read_checkpoint(found)
        config = _resumed_config(checkpoint, config, overrides, out)
    else:
        config = load_config(config, overrides)
        if found is not None:
            raise ValueError(f"{out} already holds a run (checkpoints up to {found.stem}): continue it with "
                             "--resume, or pass a new --out (or delete the folder) to start another")
    dist_info = init_distributed_from_env()
    rank, world_size = dist_info.rank, dist_info.world_size
    if config.run.device == "cpu" or (config.run.device == "auto" and dist_info.device.type == "cpu"):
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise ValueError("run.device='cuda' but CUDA is not available")
        device = dist_info.device if dist_info.device.type == "cuda" else torch.device("cuda", 0)
    autocast = device.type == "cuda" and config.run.precision == "bf16"
    if config.data.videos % world_size:
        raise ValueError(f"data.videos={config.data.videos} must divide over {world_size} ranks")
    main_process = rank == 0
    torch.manual_seed(config.run.seed)                 # initialisation: identical on every rank
    start_step = checkpoint["step"] if checkpoint else 0

    # ============ data: this rank's shard of the video stream (+ labelled images) ============
    d = config.data
    cotrain = None
    if config.loss.cotrain_weight > 0:
        from vivi.data.images import LabeledImages
        cotrain = LabeledImages(config.loss.cotrain_source, size=d.size or config.augment.size,
                                fraction=config.loss.cotrain_fraction)
        if cotrain.num_classes > config.model.image_classes:
            raise ValueError(f"the co-training source has {cotrain.num_classes} classes but "
                             f"model.image_classes={config.model.image_classes}")
        if config.loss.cotrain_images % world_size:
            raise ValueError(f"loss.cotrain_images={config.loss.cotrain_images} must divide over {world_size} ranks")
    loader = make_loader(data, d, batch_size=d.videos // world_size, seed=config.run.seed, workers=d.workers,
                         start_batch=start_step, rank=rank, world_size=world_size)
    if d.videos > len(loader.dataset) and main_process:
        print(f"note: data.videos={d.videos} but only {len(loader.dataset)} videos of {data} have {d.shots} shots: "
              "every batch holds some videos twice, whose clips are then each other's negatives; lower "
              "data.videos or ingest more videos", file=sys.stderr)
    detections = loader.dataset.detections
    if config.loss.object_weight > 0 and not any(any(frames) for frames in detections.videos.values()):
        raise ValueError(f"the detections {d.detector!r} in {data} hold no box for any video: the object loss "
                         "would be 0; re-run `vivi detect` (or set loss.object_weight=0)")
    batches = loader if cotrain is None else _CotrainBatches(
        loader, cotrain, config.loss.cotrain_images // world_size, config.run.seed, rank, start_step)
    augment = build_augmentation(config.augment.preset, size=config.augment.size).to(device)
    cotrain_augment = (build_augmentation(config.augment.cotrain_preset, size=config.augment.size).to(device)
                       if cotrain is not None else None)

    # ============ model: encoder + heads of the enabled losses ============
    model = VIVIModel(config).to(device)
    if config.run.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
        model.encoder_channels_last = True
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
    if config.run.compile:
        model.compile_encoder()
    ddp_model: nn.Module = model
    if world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    # ============ losses: inside the model (terms), weighted here ============
    # L = L_frame + λ L_video + ω L_object + γ L_supervised (vivi.train.model.weighted_terms)

    # ============ optimizer ============
    optimizer = build_optimizer(model, config)

    # ============ schedule ============
    lr_schedule = learning_rate_schedule(config)

    # ============ resume ============
    if checkpoint:
        params = dict(model.named_parameters())
        for name, buf in checkpoint["optim"].items():
            optimizer.state[params[name]]["momentum_buffer"] = buf.to(device)
    out.mkdir(parents=True, exist_ok=True)
    if main_process:
        (out / "config.yaml").write_text(dump_config(config))
        metrics_path = out / "metrics.jsonl"
        if checkpoint and metrics_path.exists():   # drop records logged after the checkpoint we resume from
            metrics_path.write_text("".join(line + "\n" for line in _records_until(metrics_path, start_step)))
        elif metrics_path.exists():                # a run stopped before its first checkpoint starts over
            metrics_path.unlink()
    writer = None
    if main_process:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"), purge_step=start_step)
        except ImportError:
            writer = None   # tensorboard is optional: metrics.jsonl has everything
    cfg_json, enc_spec = config_json(config), encoder_spec(config)

    # ============ loop ============
    steps = config.optim.steps
    frames_per_step = d.videos * d.shots * d.frames
    bar = tqdm(total=steps, initial=start_step, disable=not (progress and main_process), dynamic_ncols=True,
               desc=config.name)
    metrics_file = open(out / "metrics.jsonl", "a") if main_process else None
    record: dict = {}
    step = start_step
    model.train()
    tick = time.perf_counter()
    stop = _StopAtStepEnd(enabled=world_size == 1)
    try:
        for batch in stop.guard(batches):
            if step >= steps:
                break
            record = train_step(ddp_model, optimizer, batch, config=config, augment=augment,
                                cotrain_augment=cotrain_augment, lr=float(lr_schedule[step]), step=step, rank=rank,
                                device=device, autocast=autocast)
            step += 1
            if step % config.run.log_every == 0 or step == steps:
                now = time.perf_counter()
                record["frames_per_s"] = frames_per_step * config.run.log_every / max(now - tick, 1e-9)
                tick = now
                record["step"] = step
                if main_process:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        for key, value in record.items():
                            if key != "step":
                                writer.add_scalar(key, value, step)
                bar.set_postfix(loss=f"{record['loss']:.4g}", fps=f"{record['frames_per_s']:.0f}",
                                **{k.split('/')[1]: f"{v:.3g}" for k, v in record.items()
                                   if k.startswith("loss/")})
            bar.update(1)
            if main_process and (step % config.run.ckpt_every == 0 or step == steps):
                write_checkpoint(out, step, model, optimizer, cfg_json, enc_spec, keep=config.run.keep_checkpoints)
            if stop.requested:
                break
        if stop.requested:
            if main_process and step > start_step and step % config.run.ckpt_every and step != steps:
                write_checkpoint(out, step, model, optimizer, cfg_json, enc_spec, keep=config.run.keep_checkpoints)
            newest = latest_checkpoint(out)
            bar.write(f"interrupted after step {step}; " + (
                f"add --resume to the same command to continue from {newest.name}" if newest is not None
                else "no checkpoint yet: the same command starts over"))
            raise KeyboardInterrupt
    finally:
        stop.restore()
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if writer is not None:
            writer.close()
        cleanup_distributed()
    return {"run": str(out), "step": step, "last": record}
