"""The VTAB-1k transfer protocol (VIVI §4, "Downstream evaluation"; Object-centric §4.2;
google-research/task_adaptation, "lightweight" sweep; docs/reference.md, "VTAB-1k").

For each task and repetition:

1. for each setting (learning rate, steps) of the sweep -- {0.1, 0.01} x {2500, 10000} --
   fine-tune on ``train800`` and measure top-1 on ``val200``;
2. take the setting with the best val200 accuracy (ties: the first in sweep order),
   fine-tune again from the pre-trained weights on ``train800val200`` (1000 images);
3. report top-1 on ``test``.

The setting is chosen per task, as Object-centric §4.2 does (VIVI §4 picks one setting for all
tasks by the val200 accuracy averaged over the 19 tasks), so that a task's result depends on
that task alone and a suite can grow without changing the results it already holds.

Fine-tuning (:func:`finetune`): the whole encoder plus a new linear head on the pre-logits,
zero-initialised; SGD with momentum 0.9, no weight decay; learning rate x0.1 at 30/60/90 % of the
steps, which is Object-centric §4.2's "10K steps with decay every 3K, or 2.5K steps with decay
every 750"; batches drawn from a seeded stream of shuffled epochs (as
``shuffle().repeat().batch()``), no augmentation.

Batch norm: the encoder is in train mode while fine-tuning (batch statistics normalise, the
running averages are updated, as TF-Hub modules fine-tuned with ``is_training=True`` in
task_adaptation) and in eval mode when measuring accuracy (running averages). The papers do not
give the running averages' momentum; vivi keeps PyTorch's 0.1 rather than the 0.01 of TF's BN
default decay in the BiT/VTAB ResNets, because a short fine-tuning run (a few hundred steps on a
CPU) leaves a slow average still close to its pre-training values (docs/reference.md, "Choices
the papers leave open"). GroupNorm encoders have no such state.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .suite import Split

__all__ = ["Classifier", "FinetuneConfig", "Setting", "accuracy", "finetune", "learning_rate_at",
           "predict", "sweep_settings"]


@dataclass(frozen=True)
class FinetuneConfig:
    """How one fine-tuning run is done (defaults: the protocol; scale them down for CPU smoke runs)."""
    resolution: int = 224                        # images resized (bilinear, ignoring aspect) to r x r
    batch_size: int = 512                        # images per SGD step (VTAB: 512)
    momentum: float = 0.9                        # SGD momentum (VTAB: 0.9); weight decay is always 0
    decay_at: tuple[float, ...] = (0.3, 0.6, 0.9)   # fractions of the steps where the lr is multiplied by 0.1
    eval_batch_size: int = 256                   # images per forward pass when measuring accuracy
    device: str = "cpu"                          # torch device for training and inference


@dataclass(frozen=True)
class Setting:
    """One point of the sweep."""
    lr: float                                    # peak learning rate
    steps: int                                   # SGD steps (already scaled)

    @property
    def key(self) -> str:
        return f"lr{self.lr:g}-steps{self.steps}"


def sweep_settings(learning_rates=(0.1, 0.01), steps=(2500, 10000), steps_scale: float = 1.0) -> list[Setting]:
    """The sweep in order: learning rate outer, steps inner. ``steps_scale`` shrinks the step
    counts for CPU smoke runs (at least 1 step each)."""
    return [Setting(float(lr), max(1, int(round(s * steps_scale)))) for lr in learning_rates for s in steps]


class Classifier(nn.Module):
    """Encoder + a linear head on its pre-logits, zero-initialised (VTAB's new head)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def learning_rate_at(step: int, base_lr: float, steps: int, decay_at=(0.3, 0.6, 0.9)) -> float:
    """lr of step ``step`` (0-based): x0.1 after each of the decay points ``floor(f * steps)``."""
    boundaries = [int(math.floor(f * steps)) for f in decay_at]
    return base_lr * 0.1 ** sum(step >= b for b in boundaries)


def _batch_indices(n: int, batch_size: int, steps: int, generator: np.random.Generator):
    """``steps`` batches from a stream of shuffled epochs (batches cross epoch boundaries)."""
    stream = np.empty(0, np.int64)
    for _ in range(steps):
        while len(stream) < batch_size:
            stream = np.concatenate([stream, generator.permutation(n)])
        yield stream[:batch_size]
        stream = stream[batch_size:]


def finetune(encoder: nn.Module, train: Split, num_classes: int, setting: Setting, config: FinetuneConfig,
             seed: int) -> Classifier:
    """Fine-tune a copy of ``encoder`` with a fresh zero head on ``train``; returns the classifier
    in eval mode. ``encoder`` itself is not modified."""
    torch.manual_seed(seed)
    model = Classifier(copy.deepcopy(encoder), num_classes).to(config.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr, momentum=config.momentum, weight_decay=0.0)
    labels = torch.from_numpy(train.labels)
    generator = np.random.default_rng(seed)
    for step, index in enumerate(_batch_indices(len(train), config.batch_size, setting.steps, generator)):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, setting.lr, setting.steps, config.decay_at)
        images = train.batch(index, config.resolution).to(config.device)
        loss = nn.functional.cross_entropy(model(images), labels[index].to(config.device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"fine-tuning on {train.task}/{train.name} diverged at step {step} "
                                     f"({setting.key}): loss {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, split: Split, config: FinetuneConfig) -> np.ndarray:
    """Predicted class of every image of ``split`` (model in eval mode)."""
    model.eval()
    out = []
    for start in range(0, len(split), config.eval_batch_size):
        index = np.arange(start, min(start + config.eval_batch_size, len(split)))
        out.append(model(split.batch(index, config.resolution).to(config.device)).argmax(1).cpu())
    return torch.cat(out).numpy()


def accuracy(model: nn.Module, split: Split, config: FinetuneConfig) -> float:
    """Top-1 accuracy (fraction) of ``model`` on ``split``."""
    return float(np.mean(predict(model, split, config) == split.labels))
