"""The training configuration: typed sections with a comment on every field (nanoGPT style).

A run is described by a :class:`TrainConfig`. Presets live as YAML files in
``vivi/train/presets/``, one per row of the papers' tables (plus tiny CPU versions); a preset
only lists the fields that differ from the defaults below, or from its ``base:`` preset, and names
the paper row it reproduces in ``row:`` (``vivi train --list-presets``). Command-line overrides
``section.field=value`` are parsed as YAML scalars and type-checked against the field.

Defaults are the recipe of VIVI-Ex(4), the VIVI paper's main model (VIVI §4, app. A-B, Table 5;
docs/reference.md, "Training schedule"): ResNet-50 v2 with BatchNorm, exemplar + InfoNCE with
the LSTM predictor, N·K = 2048 shots per step, SGD momentum 0.9, learning rate 0.8 at batch
2048, 120k steps, ×0.1 at 90k and 110k.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from vivi.data.clips import FRAME_CHOICES, MODES, ClipConfig
from vivi.losses.object import OBJECT_ABLATIONS
from vivi.registry import typed_value

__all__ = ["AugmentSection", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "PRESET_DIR",
           "PaperRow", "RunConfig", "TrainConfig", "UnknownKeyError", "apply_overrides", "config_from_dict",
           "config_to_dict", "list_presets", "load_config", "preset_path", "preset_rows"]

PRESET_DIR = Path(__file__).parent / "presets"

FRAME_LOSSES = ("exemplar", "rotation", "none")
VIDEO_LOSSES = ("infonce", "shot_order", "none")
PREDICTORS = ("mlp", "bilinear", "lstm")
OBJECT_TERMS = ("triplet", "triplet+classification", "classification")
SOURCES = ("videos", "images")
PRECISIONS = ("auto", "bf16", "fp32")
MONITOR_PROBES = ("knn", "linear", "knn+linear")


@dataclass
class DataConfig(ClipConfig):
    """The clips (``ClipConfig``: shots K, frames F, mode, frame_choice, detector, max_boxes) and
    how many of them a step takes."""
    size: int | None = 256           # the loader resizes the frames' shorter side to this (aspect kept), then
                                     # takes each frame's augment crop from the whole frame; 256 = ingest's
                                     # default short side, so such frames are not resampled twice (None: as stored)
    videos: int = 512                # N: videos per step over all ranks, split over them (N·K = 2048, VIVI §4)
    workers: int = 4                 # DataLoader worker processes per rank, decoding JPEGs while the step
                                     # runs (the batches do not depend on it, except when streaming: one
                                     # stream per worker)
    stream: bool = False             # read a local folder as a URL is read: whole shards in order, through
                                     # shuffle buffers (vivi.data.stream); a URL always streams. Off: frames
                                     # read at random by offset, which a local disk does fastest
    buffer: int = 256                # streaming: videos in each stream's shuffle buffer, so that a batch mixes
                                     # several shards (32 videos each by default); each holds its clip's JPEGs
                                     # (~20 KB a 456 x 256 frame: ~160 MB a worker at K x F = 32)
    cache: str | None = None         # streaming: a folder that keeps the shards read, so later epochs and
                                     # runs read them there; None reads them from the store every time
    source: str = "videos"           # "videos": --data is an ingested dataset; "images": --data is a folder of
                                     # images (or of class folders, or .npz/.npy), each image a one-shot clip of
                                     # F crops (VIVI Table 4's Ex-ImageNet, Rot-ImageNet; vivi.data.stills)


@dataclass
class ModelConfig:
    encoder: str = "resnet50_v2"     # name in vivi.models.ENCODERS: the papers' ResNet-50 v2 (VIVI §4;
                                     # resnet50x3_v2 for the "Big" rows)
    norm: str = "bn"                 # "bn" (VIVI §4) or "gnws" (GroupNorm + weight standardisation: co-training)
    width: int | None = None         # width multiplier override (None: the encoder's own, 3 for resnet50x3_v2)
    exemplar_dim: int = 1000         # exemplar head outputs (VIVI app. A)
    shot_dim: int = 512              # shot projection size for the video-level losses (VIVI app. A)
    predictor_hidden: int = 256      # LSTM units / MLP-critic hidden units (VIVI app. A: 256)
    lstm_output: str = "linear"      # LSTM predictor's output: "linear" = one linear layer 256 -> 512 for every
                                     # predicted shot (VIVI app. A: "another linear layer"), "per_offset" = one
                                     # per shot offset m (CPC's W_m); a checkpoint with per-offset layers loads
                                     # as per_offset
    order_hidden: int = 512          # hidden units of the shot-order MLP (VIVI app. A: 512)
    object_classes: int = 600        # detector classes (OpenImages V4: 600, Object-centric §4.1); random
                                     # labels of the ablation are drawn from these
    image_classes: int = 1000        # co-training classifier outputs (ImageNet: 1000, VIVI app. A)
    sync_bn: bool = False            # BatchNorm statistics over the global batch of all ranks, not each rank's
                                     # share (no effect in one process or with norm gnws; docs/train.md)


@dataclass
class AugmentSection:
    preset: str = "inception"        # frame augmentation, name in vivi.train.augment.AUGMENTATIONS: inception
                                     # crop + colour distortion (VIVI §4; docs/reference.md, "Augmentation");
                                     # the loader's workers take its crop, the device flips and colours
    size: int = 224                  # output frames are size x size (the papers' ResNet input, 224)
    cotrain_preset: str = "cotrain_images"  # augmentation of the co-training images (VIVI §4: + HSV noise)


@dataclass
class LossConfig:
    frame: str = "exemplar"          # frame/shot-level loss: "exemplar" (triplet over shots), "rotation" or "none"
    video: str = "infonce"           # video-level loss: "infonce" (predict later shots), "shot_order" or "none"
    predictor: str = "lstm"          # InfoNCE critic: "mlp" (K = 2), "lstm" (K = 4, VIVI app. A) or "bilinear"
                                     # (Object-centric §4.1)
    video_weight: float = 0.04       # λ (β in Object-centric): weight of the video-level loss; VIVI swept it,
                                     # 0.04 is the value Object-centric §4.1 takes from VIVI
                                     # (docs/reference.md, "Choices the papers leave open")
    margin: float = 0.5              # triplet margin of the exemplar and object losses (VIVI app. B)
    exemplar_group_shots: int | None = None  # mine the exemplar triplet within groups of this many consecutive
                                     # shots of the global batch, mean over groups (VIVI app. B: per core,
                                     # 2048 / 128 = 16); None: over all frames of a device
    infonce_scope: str = "global"    # InfoNCE negatives: "global" (every rank's videos) or "group"
                                     # (infonce_group_videos consecutive videos; VIVI app. B: per core for K = 2)
    infonce_group_videos: int | None = None  # videos per InfoNCE group with infonce_scope="group" (VIVI K = 2: 8)
    infonce_pairs: str = "mean"      # over a video's predicted shot pairs: "sum" (Object-centric eq. (1), the paper
                                     # presets) or "mean" (the same for K = 2; 1/6 of the sum for K = 4)
    object_weight: float = 0.0       # ω: weight of the object loss (Object-centric §4.1: 5); 0, VIVI, disables it
    object_mode: str = "detector"    # boxes: "detector", or the ablations "random_boxes", "random_boxes_and_labels"
                                     # (Object-centric §5.1)
    object_terms: str = "triplet"    # "triplet" (Object-centric eq. (2)), "triplet+classification" (an extra
                                     # 600-way BCE head) or "classification" (the head replacing the triplet)
    cotrain_weight: float = 0.0      # γ: weight of the supervised image loss; 0, the unsupervised rows, disables it
    cotrain_source: str | None = None  # labelled images: a folder with one sub-folder per class, or .npz/.npy;
                                       # "data": the classes of the training images themselves (data.source:
                                       # images; the supervised rows Sup-100%, Sup-Rot-100%)
    cotrain_images: int = 2048       # labelled images per step over all ranks (VIVI Table 5: 2048 or 256)
    cotrain_fraction: float = 1.0    # class-balanced fraction of the source used (Co(10%): 0.1)


@dataclass
class OptimConfig:
    lr: float = 0.8                  # peak learning rate at batch base_batch (VIVI §4: 0.8 at 2048)
    base_batch: int = 2048           # batch (N·K shots, all ranks) at which lr applies; lr scales linearly
    momentum: float = 0.9            # SGD momentum (VIVI §4)
    weight_decay: float = 1e-4       # on weight matrices only; not stated for the unsupervised rows: vivi
                                     # takes Kolesnikov et al. 2019's value, whose recipes VIVI §4's baselines
                                     # follow (docs/reference.md, "Choices the papers leave open")
    warmup_steps: int = 5000         # linear warm-up from 0 (VIVI Table 5: 5k shot/video models, 17k frame ones)
    steps: int = 120000              # total optimisation steps (VIVI §4)
    decay_steps: list[int] = field(default_factory=lambda: [90000, 110000])  # lr ×decay_factor at each (VIVI §4)
    decay_factor: float = 0.1        # multiplicative decay at each of decay_steps (VIVI §4)


@dataclass
class RunConfig:
    seed: int = 0                    # seeds the initialisation, the data stream and the augmentation: a run
                                     # is repeatable
    device: str = "auto"             # "auto" (cuda if available: one command for CPU and GPU), "cpu" or "cuda"
    precision: str = "auto"          # "auto": bf16 autocast where the device computes bf16 natively (a CUDA GPU
                                     # with bf16, a CPU with AVX512-BF16 or AMX), fp32 elsewhere; "bf16" or "fp32"
                                     # force it (bf16 without native support: a warning and fp32). The heads and
                                     # losses run in fp32 either way
    channels_last: bool = True       # NHWC memory format for the encoder (faster convolutions on GPU)
    compile: bool = False            # torch.compile the encoder (CPU or GPU; a compile failure: a note and eager
                                     # steps); off: compiling delays the first steps, which short runs do not repay
    log_every: int = 10              # steps between metrics.jsonl / TensorBoard records (a record is a few
                                     # scalars: cheap enough for a curve with every tenth step)
    ckpt_every: int = 5000           # steps between checkpoints (one is always written at the end); a crash
                                     # repeats at most this many steps
    keep_checkpoints: int = 3        # newest checkpoints kept (older ones are deleted); more than one, so a
                                     # damaged newest file leaves an older one to resume from
    timeout_s: float = 600.0         # under torchrun, seconds a collective operation waits for the other ranks
                                     # before the run stops with an error: a rank that stops responding blocks
                                     # the others this long (a step, or rank 0's checkpoint, must take less)
    monitor_every: int = 0           # steps between probes of the encoder on monitor_suite, logged as monitor/*
                                     # (rank 0; 0: off, since there is no suite to default to)
    monitor_suite: str | None = None  # a suite as `vivi eval --suite` takes (a suite file, or a world's tasks/)
    monitor_probe: str = "knn"       # "knn" (cosine, k=20: cheap), "linear" (L-BFGS probe) or "knn+linear"
    monitor_images: int = 200        # labelled images per task for each of the bank (from train800val200) and
                                     # the queries (from test): few, so that a probe costs well under a second


@dataclass
class TrainConfig:
    name: str = "custom"             # preset name (the paper row), recorded in the run folder; --resume
                                     # refuses another preset
    description: str = ""            # one line shown by `vivi train --list-presets`
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentSection = field(default_factory=AugmentSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def _check_loss_groups(self) -> None:
        """The loss groups (VIVI app. B's per-core losses) must tile the global batch."""
        loss, shots = self.loss, self.data.videos * self.data.shots
        group = loss.exemplar_group_shots
        if group is not None:
            if loss.frame != "exemplar":
                raise ValueError(f"loss.exemplar_group_shots needs loss.frame='exemplar', got {loss.frame!r}")
            if group < 1 or shots % group:
                raise ValueError(f"loss.exemplar_group_shots={group} must divide data.videos x data.shots = {shots}")
        videos = loss.infonce_group_videos
        if (loss.infonce_scope == "group") != (videos is not None):
            raise ValueError("loss.infonce_scope='group' and loss.infonce_group_videos go together: set both, or "
                             "neither for the global scope")
        if videos is not None and (videos < 2 or self.data.videos % videos):
            raise ValueError(f"loss.infonce_group_videos={videos} must be at least 2 and divide data.videos="
                             f"{self.data.videos}")

    def check_ranks(self, world_size: int) -> None:
        """Each rank's share of the batch must be whole loss groups (else a group would straddle ranks)."""
        per_rank = self.data.videos // world_size
        group, videos = self.loss.exemplar_group_shots, self.loss.infonce_group_videos
        if group is not None and (per_rank * self.data.shots) % group:
            raise ValueError(f"loss.exemplar_group_shots={group} does not divide the {per_rank * self.data.shots} "
                             f"shots of each of {world_size} ranks: use a number of ranks that keeps groups whole")
        if videos is not None and per_rank % videos:
            raise ValueError(f"loss.infonce_group_videos={videos} does not divide the {per_rank} videos of each of "
                             f"{world_size} ranks: use a number of ranks that keeps groups whole")

    def validate(self) -> None:
        """Check the choices between fields; raises ValueError naming the field and the valid values."""
        def one_of(value, valid, name):
            if value not in valid:
                raise ValueError(f"{name}={value!r} is not valid; valid: {', '.join(valid)}")
        one_of(self.data.mode, MODES, "data.mode")
        one_of(self.data.frame_choice, FRAME_CHOICES, "data.frame_choice")
        one_of(self.model.norm, ("bn", "gnws"), "model.norm")
        one_of(self.loss.frame, FRAME_LOSSES, "loss.frame")
        one_of(self.loss.video, VIDEO_LOSSES, "loss.video")
        one_of(self.loss.predictor, PREDICTORS, "loss.predictor")
        from vivi.models.heads import LSTM_OUTPUTS
        one_of(self.model.lstm_output, LSTM_OUTPUTS, "model.lstm_output")
        one_of(self.loss.object_mode, OBJECT_ABLATIONS, "loss.object_mode")
        one_of(self.loss.object_terms, OBJECT_TERMS, "loss.object_terms")
        one_of(self.run.precision, PRECISIONS, "run.precision")
        one_of(self.run.device, ("auto", "cpu", "cuda"), "run.device")
        one_of(self.run.monitor_probe, MONITOR_PROBES, "run.monitor_probe")
        if self.run.monitor_every < 0 or self.run.monitor_images < 10:
            raise ValueError(f"run.monitor_every must be >= 0 and run.monitor_images >= 10, got "
                             f"{self.run.monitor_every}, {self.run.monitor_images}")
        if self.run.monitor_every and not self.run.monitor_suite:
            raise ValueError("run.monitor_every > 0 needs run.monitor_suite (a suite file, or a world's tasks/ folder)")
        if self.run.monitor_every and not Path(self.run.monitor_suite).exists():
            raise FileNotFoundError(f"run.monitor_suite {self.run.monitor_suite} does not exist: pass a suite file, "
                                    "or the tasks/ folder of `vivi synth` (or set run.monitor_every=0)")
        from vivi.models import ENCODERS
        from vivi.train.augment import AUGMENTATIONS
        one_of(self.model.encoder, tuple(ENCODERS), "model.encoder")
        one_of(self.augment.preset, tuple(AUGMENTATIONS), "augment.preset")
        one_of(self.augment.cotrain_preset, tuple(AUGMENTATIONS), "augment.cotrain_preset")
        if self.loss.video != "none" and self.data.shots < 2:
            raise ValueError(f"loss.video={self.loss.video!r} needs data.shots >= 2, got {self.data.shots}")
        if self.loss.video == "shot_order" and self.data.shots != 2:
            raise ValueError("loss.video='shot_order' is defined for data.shots=2 (VIVI §4)")
        from vivi.losses.infonce import PAIR_REDUCTIONS, SCOPES
        one_of(self.loss.infonce_scope, SCOPES, "loss.infonce_scope")
        one_of(self.loss.infonce_pairs, PAIR_REDUCTIONS, "loss.infonce_pairs")
        self._check_loss_groups()
        one_of(self.data.source, SOURCES, "data.source")
        if self.data.source == "images" and (self.data.shots != 1 or self.loss.video != "none"
                                             or self.loss.object_weight > 0 or self.data.stream):
            raise ValueError("data.source=images makes each image a clip of one shot: it needs data.shots=1, "
                             "loss.video=none, loss.object_weight=0 and data.stream=false")
        if self.loss.cotrain_source == "data" and self.data.source != "images":
            raise ValueError("loss.cotrain_source=data takes the classes of the training images: it needs "
                             "data.source=images (or name a folder of labelled images)")
        if (self.loss.frame == "none" and self.loss.video == "none" and self.loss.object_weight == 0
                and self.loss.cotrain_weight == 0):
            raise ValueError("no loss is enabled: set loss.frame, loss.video, loss.object_weight or "
                             "loss.cotrain_weight")
        if self.loss.object_weight > 0 and not self.data.detector:
            raise ValueError("loss.object_weight > 0 needs data.detector (the detections to read boxes from)")
        if self.loss.cotrain_weight > 0 and not self.loss.cotrain_source:
            raise ValueError("loss.cotrain_weight > 0 needs loss.cotrain_source (an image folder or .npz/.npy)")
        if self.loss.cotrain_weight > 0 and self.loss.cotrain_source != "data" \
                and not Path(self.loss.cotrain_source).exists():
            raise FileNotFoundError(f"co-training source {self.loss.cotrain_source} does not exist")
        if sorted(self.optim.decay_steps) != list(self.optim.decay_steps):
            raise ValueError(f"optim.decay_steps must be increasing, got {self.optim.decay_steps}")
        for name in ("videos", "workers", "frames", "shots"):
            if getattr(self.data, name) < (0 if name == "workers" else 1):
                raise ValueError(f"data.{name} must be positive, got {getattr(self.data, name)}")
        for section in ("data", "model", "augment", "loss", "optim", "run"):
            for name, value in vars(getattr(self, section)).items():
                if isinstance(value, float) and not math.isfinite(value):     # nan passes every range check below
                    raise ValueError(f"{section}.{name}={value} is not a finite number")
        if self.optim.steps < 1 or self.run.log_every < 1 or self.run.ckpt_every < 1:
            raise ValueError("optim.steps, run.log_every and run.ckpt_every must be positive")
        at_least = {
            "data.max_boxes": (self.data.max_boxes, 1), "data.buffer": (self.data.buffer, 1),
            "augment.size": (self.augment.size, 8),
            "model.exemplar_dim": (self.model.exemplar_dim, 1), "model.shot_dim": (self.model.shot_dim, 1),
            "model.predictor_hidden": (self.model.predictor_hidden, 1),
            "model.order_hidden": (self.model.order_hidden, 1),
            "model.object_classes": (self.model.object_classes, 1),
            "model.image_classes": (self.model.image_classes, 1),
            "optim.base_batch": (self.optim.base_batch, 1), "optim.warmup_steps": (self.optim.warmup_steps, 0),
            "run.keep_checkpoints": (self.run.keep_checkpoints, 1), "run.timeout_s": (self.run.timeout_s, 1),
            "loss.cotrain_images": (self.loss.cotrain_images, 1), "optim.lr": (self.optim.lr, 0),
            "optim.weight_decay": (self.optim.weight_decay, 0), "loss.margin": (self.loss.margin, 0),
            "loss.video_weight": (self.loss.video_weight, 0), "loss.object_weight": (self.loss.object_weight, 0),
            "loss.cotrain_weight": (self.loss.cotrain_weight, 0)}
        if self.data.size is not None:
            at_least["data.size"] = (self.data.size, 8)
        if self.model.width is not None:
            at_least["model.width"] = (self.model.width, 1)
        for name, (value, low) in at_least.items():
            if value < low:
                raise ValueError(f"{name} must be at least {low}, got {value}")
        if not (0 <= self.optim.momentum < 1 and 0 < self.optim.decay_factor <= 1
                and 0 < self.loss.cotrain_fraction <= 1 and min(self.optim.decay_steps, default=0) >= 0):
            raise ValueError(f"optim.momentum must lie in [0, 1), optim.decay_factor and loss.cotrain_fraction in "
                             f"(0, 1], optim.decay_steps be >= 0; got {self.optim.momentum}, "
                             f"{self.optim.decay_factor}, {self.loss.cotrain_fraction}, {self.optim.decay_steps}")
        if self.loss.frame == "exemplar" and self.data.frames < 2:
            raise ValueError("loss.frame='exemplar' needs data.frames >= 2: the frames of a shot are each other's "
                             f"positives (got {self.data.frames}, which leaves the loss nothing to learn)")


class UnknownKeyError(KeyError):
    """An unknown config key; the message lists the valid ones (printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def config_from_dict(raw: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from nested dicts (a YAML preset); unknown keys and wrong types raise."""
    config = base or TrainConfig()
    top = _hints(TrainConfig)
    for section, values in raw.items():
        if section not in top:
            raise UnknownKeyError(f"unknown config key {section!r}; valid: {', '.join(top)}")
        if section in ("name", "description"):
            setattr(config, section, typed_value(values, top[section], section))
            continue
        if not isinstance(values, dict):
            raise TypeError(f"config section {section!r} must be a mapping, got {values!r}")
        target = getattr(config, section)
        hints = _hints(type(target))
        for key, value in values.items():
            if key not in hints:
                raise UnknownKeyError(f"unknown config key {section}.{key}; valid: "
                               + ", ".join(f"{section}.{k}" for k in hints))
            setattr(target, key, typed_value(value, hints[key], f"{section}.{key}"))
    return config


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def apply_overrides(config: TrainConfig, overrides: list[str] | dict | None) -> TrainConfig:
    """Apply ``section.field=value`` strings (values parsed as YAML scalars) or a nested dict."""
    if not overrides:
        return config
    if isinstance(overrides, dict):
        return config_from_dict(overrides, config)
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: {text!r} is not a value (quote it, or write a number, "
                             "true/false or [a, b])") from None
        parts = key.strip().split(".")
        if len(parts) == 1 and parts[0] in ("name", "description"):
            nested[parts[0]] = str(text)
            continue
        if len(parts) != 2:
            valid = ", ".join(f"{s}.{k}" for s, t in _hints(TrainConfig).items()
                              if s not in ("name", "description") for k in _hints(t))
            raise UnknownKeyError(f"unknown config key {key!r}; valid: {valid}")
        nested.setdefault(parts[0], {})[parts[1]] = value
    return config_from_dict(nested, config)


@dataclass(frozen=True)
class PaperRow:
    """The table row of a paper that a preset reproduces (a preset file's ``row:``)."""
    paper: str                       # "VIVI" (Tschannen et al. 2020) or "Object-centric" (Romijnders et al.)
    table: str                       # where the row is printed, e.g. "Table 4"
    name: str                        # the row's name in that table, e.g. "VIVI-Ex(4)"
    vtab: float | None = None        # the VTAB-1k mean (%) the paper reports for it


def list_presets() -> dict[str, str]:
    """{preset name: one-line description} of the YAML files in :data:`PRESET_DIR`."""
    return {path.stem: (yaml.safe_load(path.read_text()) or {}).get("description", "")
            for path in sorted(PRESET_DIR.glob("*.yaml"), key=lambda path: path.stem)}


def preset_rows() -> dict[str, PaperRow | None]:
    """{preset name: the paper row it reproduces, or None for the small CPU presets}."""
    rows = {}
    for path in sorted(PRESET_DIR.glob("*.yaml"), key=lambda path: path.stem):
        row = (yaml.safe_load(path.read_text()) or {}).get("row")
        rows[path.stem] = PaperRow(**row) if row else None
    return rows


def _read_yaml(path: Path, reading: tuple[Path, ...] = ()) -> dict:
    """The sections of the config file ``path``, with those of its ``base:`` preset (or file)
    under them: a file lists only what differs from its base, section by section."""
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if raw is None:
        raise ValueError(f"{path} is empty: a config file holds sections (data:, model:, augment:, loss:, optim:, "
                         "run:) with the fields that differ from the defaults; or pass a preset name")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config file holds sections (data:, model:, augment:, loss:, optim:, run:) "
                         f"with fields, got {type(raw).__name__}")
    raw.pop("row", None)              # what the file reproduces; not a setting, and not inherited
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ValueError(f"{path}: base must be a preset name or a YAML file, got {base!r}")
    base_path = path.parent / base if base.endswith((".yaml", ".yml")) else preset_path(base)
    reading = (*reading, path.resolve())
    if base_path.resolve() in reading:
        raise ValueError(f"{path}: its base {base!r} leads back to itself")
    merged = _read_yaml(base_path, reading)
    merged.pop("description", None)
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged



def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(list_presets())}")
    return path


def load_config(preset_or_file: str | Path | TrainConfig, overrides: list[str] | dict | None = None,
                validate: bool = True) -> TrainConfig:
    """The config of a preset name, a YAML file (a preset or a run's ``config.yaml``) or a TrainConfig,
    with ``overrides`` applied and the result validated."""
    if isinstance(preset_or_file, TrainConfig):
        config = config_from_dict(config_to_dict(preset_or_file))
    else:
        path = Path(preset_or_file)
        if path.suffix in (".yaml", ".yml", ".json"):
            if not path.is_file():
                raise FileNotFoundError(f"config file {path} does not exist (or pass a preset name: "
                                        f"{', '.join(list_presets())})")
        else:
            path = preset_path(str(preset_or_file))
        config = config_from_dict(_read_yaml(path))
        if config.name == "custom" and path.parent == PRESET_DIR:
            config.name = path.stem
    config = apply_overrides(config, overrides)
    if validate:
        config.validate()
    return config


def dump_config(config: TrainConfig) -> str:
    """The resolved config as YAML (the run folder's ``config.yaml``)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_json(config: TrainConfig) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)
