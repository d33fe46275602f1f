"""A probe of the encoder while it trains: every ``run.monitor_every`` steps, rank 0 scores the
current encoder on a small labelled suite (``run.monitor_suite``, what ``vivi eval --suite``
takes) with the frozen-feature proxies of :mod:`vivi.eval.probe` (cosine kNN and/or the linear
probe), and the run logs ``monitor/<task>/<probe>`` and their means ``monitor/<probe>`` beside
the losses.

It is cheap by construction: ``run.monitor_images`` images per task as the labelled bank (the
first ones of train800val200) and as many queries (the first ones of test), decoded once when the
run starts and encoded at the training resolution (``augment.size``) in the run's precision (bf16
autocast where the steps use it: the encoder's forward passes are nearly all of a probe's time).

It does not change the run: the encoder is probed in eval mode under no_grad and put back into
training mode (:func:`vivi.eval.probe.frozen_features` asserts its parameters and batch-norm
buffers are bit-identical afterwards), and torch's global random state is restored, so a run
with the monitor trains exactly the parameters of a run without it (and resumes exactly). The
other ranks do not take part; they wait for rank 0 at the next step's first collective.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vivi.data.images import read_image
from vivi.eval.probe import frozen_features, knn_classify, linear_probe
from vivi.eval.suite import Split, infer_num_classes, load_split, load_suite
from vivi.train.config import TrainConfig

__all__ = ["KNN_K", "Monitor"]

KNN_K = 20                 # the neighbours of `vivi eval --protocol knn`'s default
BANK_VAL_FRACTION = 0.2    # the linear probe picks its C on the last fifth of the bank (VTAB-1k's 800 / 200)


def _first(split: Split, count: int, name: str) -> Split:
    """The first ``count`` images of ``split``, decoded (a test split keeps paths until read)."""
    count = min(count, len(split))
    images = [read_image(image) if not isinstance(image, np.ndarray) else image for image in split.images[:count]]
    return Split(split.task, name, images, split.labels[:count], split.ids[:count])


@dataclass
class _TaskImages:
    name: str
    bank: Split
    queries: Split
    num_classes: int


class Monitor:
    """The monitor of one run (built on rank 0 when the run starts; see the module docstring).

    Args:
        config: the run's config (``run.monitor_*``, ``augment.size``).
        device: where the encoder is.
        autocast: encode in bf16 autocast (the run's steps do).

    Raises FileNotFoundError / ValueError (one line, from :func:`vivi.eval.suite.load_suite` and
    the split readers) when the suite cannot be read, before any step.
    """

    def __init__(self, config: TrainConfig, device: torch.device, autocast: bool = False) -> None:
        run = config.run
        self.device, self.resolution, self.autocast = device, config.augment.size, autocast
        self.probes = run.monitor_probe.split("+")
        self.tasks = []
        for task in load_suite(run.monitor_suite):
            bank = _first(load_split(task, "train800val200"), run.monitor_images, "bank")
            queries = _first(load_split(task, "test"), run.monitor_images, "queries")
            self.tasks.append(_TaskImages(task.name, bank, queries, infer_num_classes(task, [bank, queries])))

    def __call__(self, encoder: nn.Module) -> dict[str, float]:
        """``monitor/<task>/<probe>`` test accuracies, their means ``monitor/<probe>`` over the
        tasks and ``monitor/seconds`` (what the probe cost)."""
        start = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        out: dict[str, float] = {}
        with (torch.random.fork_rng(devices=devices),
              torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)):
            for task in self.tasks:
                bank, queries = (frozen_features(encoder, split, self.resolution, device=str(self.device))
                                 for split in (task.bank, task.queries))
                for probe in self.probes:
                    out[f"monitor/{task.name}/{probe}"] = self._accuracy(probe, task, bank, queries)
        for probe in self.probes:
            out[f"monitor/{probe}"] = float(np.mean([out[f"monitor/{task.name}/{probe}"] for task in self.tasks]))
        out["monitor/seconds"] = time.perf_counter() - start
        return out

    @staticmethod
    def _accuracy(probe: str, task: _TaskImages, bank: np.ndarray, queries: np.ndarray) -> float:
        bank_labels, query_labels = task.bank.labels, task.queries.labels
        if probe == "knn":
            predicted = knn_classify(bank, bank_labels, queries, KNN_K, task.num_classes)
            return float(np.mean(predicted == query_labels))
        cut = int(round(len(bank) * (1 - BANK_VAL_FRACTION)))
        features = {"train800": bank[:cut], "val200": bank[cut:], "train800val200": bank, "test": queries}
        labels = {"train800": bank_labels[:cut], "val200": bank_labels[cut:], "train800val200": bank_labels,
                  "test": query_labels}
        return linear_probe(features, labels, num_classes=task.num_classes)["test_accuracy"]
