"""The training entry point: ``train(config, data, out, resume=False)``.

Reads top to bottom in the sections of DINO's ``main_dino.py``: run and device, data, model,
optimizer, schedule, resume, loop. The same function runs as one CPU process, on one GPU and
under ``torchrun`` (DDP; gloo on CPU, NCCL on GPU; each rank reads its own shard of the video
stream; the InfoNCE negatives are gathered from all ranks inside the loss), in bf16 autocast where
the device computes bf16 natively (``run.precision=auto``), with channels_last and optional
torch.compile.

The data is a folder, read by random access to its frames (``vivi.data.clips``), or a URL (or a
folder with ``data.stream``), streamed from whole shards (``vivi.data.stream``).

Exact resume: parameters, buffers and SGD momentum come from the checkpoint; the learning rate
is ``lr_schedule[step]``; the data stream restarts at ``start_batch = step`` (a streamed dataset:
exactly for the same ranks and workers); the augmentation,
shot reversal, random boxes and co-training images are drawn from seeds derived from
(seed, step, rank). So k steps + resume + (n - k) steps == n steps.

The run folder ``out`` holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one JSON record per
``log_every`` steps: every loss term weighted and unweighted, the total, the learning rate, the
gradient norm, the diagnostics with the terms' chance levels, frames/s, the precision the steps
ran in, and the probes of ``run.monitor_every``), TensorBoard events (when ``tensorboard`` is
installed) and ``checkpoints/step-XXXXXXX.safetensors``.
"""
from __future__ import annotations

import functools
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vivi.data import make_loader, make_stream_loader
from vivi.distributed import (
    all_reduce_mean,
    cleanup_distributed,
    collective_failure,
    init_distributed_from_env,
    max_over_ranks,
)
from vivi.files import writer_lock
from vivi.models.norm import convert_sync_batchnorm
from vivi.signals import Terminated
from vivi.storage import is_url
from vivi.train.augment import augment_config, build_augmentation
from vivi.train.checkpoint import latest_checkpoint, load_momentum, write_checkpoint
from vivi.train.config import TrainConfig, config_json
from vivi.train.log import RunLog
from vivi.train.model import VIVIModel, encoder_spec, weighted_terms
from vivi.train.monitor import Monitor
from vivi.train.resume import RESUME_OVERRIDES, open_run

__all__ = ["RESUME_OVERRIDES", "NonFiniteLossError", "StepContext", "build_model", "build_optimizer",
           "cpu_computes_bf16", "learning_rate_schedule", "resolve_precision", "step_seed", "train", "train_step",
           "training_device"]


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
    """SGD with momentum (VIVI §4); weight decay on the weight matrices (conv, linear, LSTM), not on
    norm scales/offsets or biases. The papers do not say which parameters decay; vivi decays the
    weights only, the usual choice of ResNet training recipes (docs/reference.md, "Choices the
    papers leave open")."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": config.optim.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=0.0, momentum=config.optim.momentum)


def training_device(config: TrainConfig, process_device: torch.device) -> torch.device:
    """``run.device`` resolved for this process (``process_device``: its rank's device, CUDA when
    there is one); raises when CUDA is asked for and missing."""
    if config.run.device == "cpu" or (config.run.device == "auto" and process_device.type == "cpu"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("run.device='cuda' but this PyTorch sees no CUDA GPU: on a machine with one, install a CUDA "
                         "build of PyTorch (pytorch.org/get-started/locally; `make TORCH=torch install`), or train "
                         "with run.device=cpu")
    return process_device if process_device.type == "cuda" else torch.device("cuda", 0)


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), so that bf16 autocast runs faster
    than fp32 rather than converting every operand in software.

    ``torch.backends.cpu.get_cpu_capability()`` names the vector ISA torch dispatches to ("AVX512"
    on AVX512-BF16 CPUs too, in torch 2.13); the bf16 instructions themselves come from torch's CPU
    probe, or from the ``avx512_bf16`` / ``amx_bf16`` flags of ``/proc/cpuinfo`` where torch lacks it.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if "AMX" in capability or "BF16" in capability:
        return True
    if not capability.startswith("AVX512"):
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(probe is not None for probe in probes):
        return any(probe() for probe in probes)
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """``run.precision`` on ``device``: "bf16" where the device computes bf16 natively (a CUDA GPU
    with bf16, :func:`cpu_computes_bf16`), else "fp32"; "fp32" stays. A forced "bf16" on a device
    without native bf16 also gives "fp32" (the run says so once): emulated bf16 is slower than fp32
    and rounds like bf16, so it buys nothing."""
    if precision == "fp32":
        return "fp32"
    native = (torch.cuda.is_bf16_supported(including_emulation=False) if device.type == "cuda"
              else device.type == "cpu" and cpu_computes_bf16())
    return "bf16" if native else "fp32"


def build_model(config: TrainConfig, device: torch.device, state: dict[str, torch.Tensor] | None = None) -> VIVIModel:
    """The model on ``device`` in the memory format and compilation that ``run`` asks for, with the
    parameters and buffers of ``state`` (a checkpoint's ``model``) when given."""
    model = VIVIModel(config).to(device)
    if config.run.channels_last:
        model.use_channels_last()
    if state is not None:
        model.load_state_dict(state)
    if config.run.compile:
        model.compile_encoder()
    return model


@dataclass(frozen=True)
class StepContext:
    """What every training step needs besides the model, the optimizer and the batch."""
    config: TrainConfig
    augment: nn.Module                 # the frames (and their boxes), on the device
    cotrain_augment: nn.Module | None  # the labelled images; None without co-training
    device: torch.device
    autocast: bool                     # bf16 autocast: run.precision resolved to "bf16" (resolve_precision)
    rank: int                          # enters every seed: each rank draws its own augmentation

    @classmethod
    def create(cls, config: TrainConfig, device: torch.device, rank: int = 0,
               precision: str | None = None) -> StepContext:
        """The context of ``config``'s steps on ``device``: its augmentations built and moved there;
        ``precision``: "bf16" or "fp32" as the run resolved it (default: :func:`resolve_precision`)."""
        precision = precision or resolve_precision(config.run.precision, device)
        a = config.augment
        cotrain = config.loss.cotrain_weight > 0
        # the loader has taken each frame's and image's crop (S x S): the device flips and distorts colour
        return cls(config=config, augment=build_augmentation(a.preset, size=a.size, crop="resize").to(device),
                   cotrain_augment=build_augmentation(a.cotrain_preset, size=a.size, crop="resize").to(device)
                   if cotrain else None,
                   device=device, autocast=precision == "bf16", rank=rank)

    @property
    def precision(self) -> str:
        """What the steps compute the encoder in: "bf16" (autocast) or "fp32"."""
        return "bf16" if self.autocast else "fp32"

    def seed(self, step: int, stream: int) -> int:
        """The seed of one random stream of ``step`` on this rank (:func:`step_seed`)."""
        return step_seed(self.config.run.seed, step, self.rank, stream)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, context: StepContext,
               step: int, lr: float) -> dict[str, float]:
    """One optimisation step (``step`` counted from 0); returns the measurements to log as is
    (big_vision style).

    Random streams of the step: 0 the frames' augmentation, 1 the labelled images', 2 the
    model's (shot reversal, random boxes); the loader draws the images of stream 3.
    Raises NonFiniteLossError naming the step and the term when any weighted term is not finite.
    """
    device = context.device
    frames = batch["frames"].to(device, non_blocking=True)
    boxes = labels = None
    if "boxes" in batch and _unwrap(model).uses_boxes:
        boxes, labels = batch["boxes"].to(device), batch["box_labels"].to(device)
        frames, boxes, valid = context.augment(frames, boxes, labels >= 0, seed=context.seed(step, 0))
        labels = labels.masked_fill(~valid, -1)          # boxes whose centre left the crop
    else:
        frames, _, _ = context.augment(frames, seed=context.seed(step, 0))
    images = image_labels = None
    frame_labels = batch["frame_labels"].to(device) if "frame_labels" in batch else None    # still images' classes
    if "images" in batch:
        images, _, _ = context.cotrain_augment(batch["images"].to(device), seed=context.seed(step, 1))
        image_labels = batch["image_labels"].to(device)
    generator = torch.Generator(device=device).manual_seed(context.seed(step, 2))

    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=context.autocast):
        raw, diagnostics = model(frames, boxes, labels, images, image_labels, generator=generator,
                                 frame_labels=frame_labels)
    terms = weighted_terms(context.config, raw)
    total = sum(terms.values())
    # averaged over ranks (one small all-reduce): the log shows the global batch, and every rank
    # sees the same values, so all stop together on a non-finite term instead of hanging
    values = all_reduce_mean(torch.stack([total.detach().float()] + [t.detach().float() for t in terms.values()]
                                         + [t.detach().float() for t in raw.values()]))
    values = values.cpu()
    named = dict(zip(terms, values[1:1 + len(terms)].tolist()))
    if not torch.isfinite(values).all():
        bad = next((name for name, value in named.items() if not math.isfinite(value)), "total")
        all_terms = ", ".join(f"{name}={value:.4g}" for name, value in named.items())
        raise NonFiniteLossError(f"non-finite loss at step {step + 1}: term {bad!r} = "
                                 f"{named.get(bad, values[0].item())} (all terms: {all_terms})")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    optimizer.step()
    out = {"loss": values[0].item(), "lr": lr, "grad_norm": grad_norm.item()}
    out.update({f"loss/{name}": value for name, value in named.items()})
    out.update({f"raw/{name}": value for name, value in zip(raw, values[1 + len(terms):].tolist())})
    out.update({name: float(v) for name, v in diagnostics.items()})
    return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _CotrainBatches:
    """Adds ``images``/``image_labels`` to each video batch from a LabeledImages source, drawn
    from (run seed, step, rank, stream 3) so that a resumed run draws the same images."""

    def __init__(self, loader, source, per_rank: int, seed: int, rank: int, start: int):
        self.loader, self.source, self.per_rank = loader, source, per_rank
        self.seed, self.rank, self.step = seed, rank, start

    def __iter__(self):
        for batch in self.loader:
            seed = [self.seed, self.step, self.rank, 3]
            batch["images"], batch["image_labels"] = self.source.batch(self.per_rank, seed)
            self.step += 1
            yield batch


def _video_loader(config: TrainConfig, data: str | Path, start_step: int, rank: int, world_size: int):
    """This rank's DataLoader of clip batches from ``start_step`` on: clips read at random from a
    local folder (``vivi.data.clips``), or streamed from whole shards for a URL or ``data.stream``
    (``vivi.data.stream``)."""
    d = config.data
    common = dict(batch_size=d.videos // world_size, seed=config.run.seed, workers=d.workers, start_batch=start_step,
                  rank=rank, world_size=world_size,
                  crop=augment_config(config.augment.preset, size=config.augment.size))
    if _streaming(config, data):
        return make_stream_loader(data, d, buffer=d.buffer, cache=d.cache, **common)
    return make_loader(data, d, **common)


def _still_loader(config: TrainConfig, data: str | Path, start_step: int, rank: int, world_size: int):
    """This rank's DataLoader of still images (``data.source: images``): each image a one-shot clip
    of F crops, its class as ``frame_labels`` (``vivi.data.stills``)."""
    from vivi.data.stills import make_still_loader
    d, loss = config.data, config.loss
    if is_url(data):
        raise ValueError(f"data.source=images reads a local folder of images (or .npz/.npy), got {data}")
    supervised = loss.cotrain_weight > 0 and loss.cotrain_source == "data"
    loader = make_still_loader(data, d.frames, d.size, batch_size=d.videos // world_size, seed=config.run.seed,
                               workers=d.workers, start_batch=start_step, rank=rank, world_size=world_size,
                               crop=augment_config(config.augment.preset, size=config.augment.size),
                               fraction=loss.cotrain_fraction if supervised else 1.0)
    classes = loader.dataset.num_classes
    if supervised and not classes:
        raise ValueError(f"loss.cotrain_source=data trains on the classes of the images of {data}, which has "
                         "none: give a folder of class folders (or .npz/.npy with labels)")
    if supervised and classes > config.model.image_classes:
        raise ValueError(f"the images of {data} have {classes} classes but model.image_classes="
                         f"{config.model.image_classes}")
    return loader


def _check_object_classes(config: TrainConfig, data: str | Path) -> None:
    """The detections' classes against ``model.object_classes``, where the object loss uses that
    number: the box classifier's outputs and the random labels of the label ablation. The triplet
    alone takes the labels as they are (same class = positive), for any number of classes."""
    from vivi.data.boxes import detector_classes
    loss, classes = config.loss, len(detector_classes(data, config.data.detector))
    used = "classification" in loss.object_terms or loss.object_mode == "random_boxes_and_labels"
    if used and classes != config.model.object_classes:
        raise ValueError(f"the detections {config.data.detector!r} have {classes} classes but "
                         f"model.object_classes={config.model.object_classes}: pass model.object_classes={classes}")


def _streaming(config: TrainConfig, data: str | Path) -> bool:
    """Whether training reads ``data`` with the streaming loader: a URL always, a folder with ``data.stream``."""
    return is_url(data) or config.data.stream


def _batches(config: TrainConfig, data: str | Path, start_step: int, rank: int, world_size: int):
    """This rank's batches from ``start_step`` on: its share of the videos, with labelled images
    added to each when co-training. Data that cannot give them raises before any compute."""
    d, loss = config.data, config.loss
    cotrain = None
    if loss.cotrain_weight > 0 and loss.cotrain_source != "data":
        from vivi.data.images import LabeledImages
        cotrain = LabeledImages(loss.cotrain_source, size=d.size or config.augment.size, fraction=loss.cotrain_fraction,
                                crop=augment_config(config.augment.cotrain_preset, size=config.augment.size))
        if cotrain.num_classes > config.model.image_classes:
            raise ValueError(f"the co-training source has {cotrain.num_classes} classes but "
                             f"model.image_classes={config.model.image_classes}")
        if loss.cotrain_images % world_size:
            raise ValueError(f"loss.cotrain_images={loss.cotrain_images} must divide over {world_size} ranks")
    if d.source == "images":
        loader = _still_loader(config, data, start_step, rank, world_size)
        return loader if cotrain is None else _CotrainBatches(loader, cotrain, loss.cotrain_images // world_size,
                                                              config.run.seed, rank, start_step)
    loader = _video_loader(config, data, start_step, rank, world_size)
    videos = loader.dataset.num_videos
    if rank == 0 and _streaming(config, data) and d.videos * max(1, d.workers) > videos:
        lanes = world_size * max(1, d.workers)
        print(f"note: a batch of {d.videos // world_size} videos comes from one stream ({lanes} in all), which "
              f"reads about {videos // lanes} of the {videos} videos of {data} with {d.shots} shots an epoch: "
              "batches hold some videos twice, whose clips are then each other's negatives; lower data.videos "
              "or data.workers, or ingest more videos", file=sys.stderr)
    elif rank == 0 and d.videos > videos:
        print(f"note: data.videos={d.videos} but only {videos} videos of {data} have {d.shots} shots: "
              "every batch holds some videos twice, whose clips are then each other's negatives; lower "
              "data.videos or ingest more videos", file=sys.stderr)
    if loss.object_weight > 0:
        _check_object_classes(config, data)
    if loss.object_weight > 0 and loader.dataset.num_boxes == 0:
        raise ValueError(f"the detections {d.detector!r} in {data} hold no box for any video: the object loss "
                         "would be 0; re-run `vivi detect` (or set loss.object_weight=0)")
    if cotrain is None:
        return loader
    return _CotrainBatches(loader, cotrain, loss.cotrain_images // world_size, config.run.seed, rank, start_step)


# The stop flag of a process that met more undecodable frames than data.max_damaged_frames: above
# every signal number, so that it wins the agreement over ranks.
TOO_MANY_DAMAGED = 1000


class _StopAtStepEnd:
    """Ctrl-C (SIGINT) and SIGTERM (a scheduler preempting the job, docker stop, torchrun's agent):
    the step under way is finished, a checkpoint written and the run stops (:attr:`signal`). A
    second Ctrl-C stops at once; SIGTERM stays a request however often it comes (a scheduler may
    signal the workers and their torchrun agent, which forwards it). Under torchrun the signal may
    reach one rank only, or ranks at different steps: :meth:`agreed` makes every rank take the
    largest signal number over the ranks before each step, so all stop after the same step."""

    def __init__(self, device: torch.device):
        self.signal = 0
        self._device = device
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)

    def _request(self, signum, frame) -> None:
        self.signal = max(self.signal, signum)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))

    def agreed(self) -> bool:
        """Whether any rank was asked to stop (one all-reduce of one integer under torchrun)."""
        self.signal = max_over_ranks(self.signal, self._device)
        return self.signal != 0

    def guard(self, batches):
        """``batches``; after a stop request that also stopped the DataLoader's workers, one None (the
        ranks still agree on the step before the loop ends)."""
        iterator = iter(batches)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError:     # "DataLoader worker ... exited unexpectedly": they took the signal too
                if not self.signal:
                    raise
                yield None
                return
            yield batch

    def interrupt(self) -> KeyboardInterrupt:
        """What the run raises once stopped: :class:`Terminated` for SIGTERM, KeyboardInterrupt for Ctrl-C."""
        return Terminated() if self.signal == signal.SIGTERM else KeyboardInterrupt()

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def _test_signal(step: int, rank: int) -> None:
    """Test hook, off unless ``VIVI_TEST_SIGNAL=RANK:STEP:NAME:MARKER`` is set: after step STEP, rank
    RANK writes its pid to the file MARKER and sends itself signal NAME (KILL, STOP, TERM), once
    (nothing happens while MARKER exists), so that tests can kill, stop or preempt one rank."""
    spec = os.environ.get("VIVI_TEST_SIGNAL")
    if not spec:
        return
    who, at, name, marker = spec.split(":", 3)
    if (int(who), int(at)) == (rank, step) and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def train(config: TrainConfig | str | Path | None, data: str | Path, out: str | Path, resume: bool = False,
          overrides: list[str] | dict | None = None, progress: bool = True) -> dict:
    """Train a VIVI model; returns the last logged measurements and the run folder.

    Args:
        config: a TrainConfig, a preset name or a YAML file (with ``resume``: None, or the run's own).
        data: an ingested dataset (``vivi ingest``), with detections for the object loss: a folder,
            or a URL (``s3://``, ``gs://``, ``https://``, any fsspec URL), streamed from whole shards
            (``vivi.data.stream``; a folder too with ``data.stream``).
        out: the run folder (created; one that holds checkpoints needs ``resume``).
        resume: continue from the newest checkpoint in ``out`` (the saved config is used;
            ``overrides`` may change only :data:`RESUME_OVERRIDES`, such as ``optim.steps``).
        overrides: ``section.field=value`` strings or a nested dict.
        progress: show the tqdm bar (rank 0).

    Rank 0 holds the run folder's lock (``vivi.files.writer_lock``) while it trains: a second
    run into the same folder is refused, naming this one.
    """
    out = Path(out)
    if os.environ.get("RANK", "0") != "0":
        return _train(config, data, out, resume, overrides, progress)
    existed = out.exists()
    try:
        with writer_lock(out, "train"):
            return _train(config, data, out, resume, overrides, progress)
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()        # a run refused before it wrote anything leaves no folder behind
        raise


def _train(config: TrainConfig | str | Path | None, data: str | Path, out: Path, resume: bool,
           overrides: list[str] | dict | None, progress: bool) -> dict:
    # ============ run, processes, device ============
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    config, checkpoint = open_run(config, out, resume, overrides, restarts=restarts)
    start_step = checkpoint["step"] if checkpoint else 0
    dist_info = init_distributed_from_env(timeout_s=config.run.timeout_s)
    rank, world_size = dist_info.rank, dist_info.world_size
    main_process = rank == 0
    trained_by = checkpoint["world_size"] if checkpoint else None
    if trained_by not in (None, world_size):
        cleanup_distributed()
        raise ValueError(f"{out} was trained by {trained_by} process(es), this run has {world_size}: each process "
                         "reads its share of every batch and draws its own augmentation, so the batches would "
                         f"differ from the run's; resume it with {trained_by} (torchrun --nnodes x --nproc-per-node), "
                         "or start another run with a new --out")
    workers_before = checkpoint["config"]["data"]["workers"] if checkpoint else config.data.workers
    if main_process and _streaming(config, data) and max(1, workers_before) != max(1, config.data.workers):
        print(f"note: data.workers changed from {workers_before} to {config.data.workers}: the run continues with "
              "the streams of the new worker count, as if it had had them from its start (its batches from here "
              "on are not those it would have read)", file=sys.stderr)
    device = training_device(config, dist_info.device)
    if config.data.videos % world_size:
        raise ValueError(f"data.videos={config.data.videos} must divide over {world_size} ranks")
    config.check_ranks(world_size)
    precision = resolve_precision(config.run.precision, device)
    if main_process and config.run.precision == "bf16" and precision == "fp32":
        print(f"warning: run.precision=bf16, but this {device.type.upper()} does not compute bf16 natively (bf16 "
              "autocast needs a GPU with bf16 or a CPU with AVX512-BF16 or AMX): the run computes in fp32",
              file=sys.stderr)
    # the probe's labelled images, read by rank 0 before any step, so that a suite it cannot read stops the run now
    monitor = None
    if main_process and config.run.monitor_every:
        monitor = Monitor(config, device, autocast=precision == "bf16")
    torch.manual_seed(config.run.seed)                 # initialisation: identical on every rank

    # ============ data: this rank's shard of the video stream (+ labelled images), augmentation ============
    batches = _batches(config, data, start_step, rank, world_size)
    context = StepContext.create(config, device, rank, precision)

    # ============ model: encoder + heads and losses of the enabled terms (weighted in train_step) ============
    model = build_model(config, device, checkpoint["model"] if checkpoint else None)
    ddp_model: nn.Module = model
    if config.model.sync_bn and world_size > 1:
        convert_sync_batchnorm(model, device)
    elif config.model.sync_bn and main_process:
        print("note: model.sync_bn has no effect in one process (its batch is the global batch)", file=sys.stderr)
    if world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    # ============ optimizer ============
    optimizer = build_optimizer(model, config)

    # ============ schedule: the learning rate of every step ============
    lr_schedule = learning_rate_schedule(config)

    # ============ resume: the momentum (parameters and buffers came with the model) ============
    if checkpoint:
        load_momentum(optimizer, model, checkpoint["optim"], device)

    # ============ loop: rank 0 logs and writes checkpoints ============
    steps, step, record = config.optim.steps, start_step, {}
    log = RunLog(out, config, start_step=start_step, resumed=checkpoint is not None, main_process=main_process,
                 progress=progress, precision=context.precision)
    save = functools.partial(write_checkpoint, out, model=model, optimizer=optimizer, config_json=config_json(config),
                             encoder=encoder_spec(config), keep=config.run.keep_checkpoints, world_size=world_size)
    model.train()
    stop = _StopAtStepEnd(device)
    damaged = 0          # frames of this process's clips that did not decode (replaced by a neighbour)
    try:
        for batch in stop.guard(batches):
            if batch is not None and "damaged" in batch:
                damaged += int(batch["damaged"].sum())
                if damaged > config.data.max_damaged_frames:
                    stop.signal = max(stop.signal, TOO_MANY_DAMAGED)
            # every rank takes both decisions alike: the same step count, and the stop flag agreed over ranks
            if step >= steps or stop.agreed():
                break
            record = train_step(ddp_model, optimizer, batch, context, step, float(lr_schedule[step]))
            if damaged:
                record["damaged_frames"] = damaged
            step += 1
            probed = config.run.monitor_every and step % config.run.monitor_every == 0    # alike on every rank
            if monitor is not None and probed:
                record.update(monitor(model.encoder))
            if step % config.run.log_every == 0 or step == steps or probed:
                log.write(step, record)
            log.advance()
            if main_process and (step % config.run.ckpt_every == 0 or step == steps):
                save(step=step)
            _test_signal(step, rank)
            if world_size == 1 and stop.signal:     # one process: no need to read another batch first
                break
        if stop.signal and step < steps:             # (a signal during the last step: the run is complete)
            if main_process and step > start_step and step % config.run.ckpt_every:
                save(step=step)
            newest = latest_checkpoint(out)
            if stop.signal == TOO_MANY_DAMAGED:
                raise ValueError(
                    f"more than data.max_damaged_frames={config.data.max_damaged_frames} frames of {data} read by a "
                    "process were not decodable JPEG images (named above): find them with `vivi inspect DATA "
                    "--verify`, repair the shards with `vivi ingest ... --repair`, and add --resume to continue "
                    f"from {newest.name if newest is not None else 'the start'}")
            if main_process:
                log.note(f"{'terminated' if stop.signal == signal.SIGTERM else 'interrupted'} after step {step}; " + (
                    f"add --resume to the same command to continue from {newest.name}" if newest is not None
                    else "no checkpoint yet: the same command starts over"))
            raise stop.interrupt()
        if step == steps:
            log.report_chance()
    except RuntimeError as error:
        failure = collective_failure(error, rank, config.run.timeout_s, f"at step {step + 1}")
        if failure is None:
            raise
        raise failure from None
    finally:
        stop.restore()
        log.close()
        cleanup_distributed()
    return {"run": str(out), "step": step, "last": record}
