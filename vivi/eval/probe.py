"""Quick proxies on frozen features: a linear probe and a k-nearest-neighbour classifier.

Features are the encoder's pooled pre-logits of the protocol's preprocessing (bilinear resize to
r x r, [0, 1], no augmentation), computed once per split with the encoder in eval mode.

* Linear probe: multinomial logistic regression (L-BFGS, scikit-learn's objective) on standardised
  features; the inverse regularisation C is picked on train800 -> val200 from ``cs``, then the
  probe is refit on train800val200 and scored on test (the shape of the VTAB sweep).
  :func:`frozen_features` asserts the encoder's state dict is bit-identical afterwards (moco-v3's
  sanity check: a probe must never move the backbone, batch-norm buffers included).
* kNN: cosine similarity, majority vote of the ``k`` most similar train800val200 images (ties
  broken by the summed similarity), scored on test.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .suite import Split

__all__ = ["assert_unchanged", "frozen_features", "knn_classify", "linear_probe", "state_snapshot"]


def state_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Raise AssertionError naming the first tensor of ``module`` that differs from ``snapshot``."""
    state = module.state_dict()
    assert state.keys() == snapshot.keys(), "the frozen encoder's state dict gained or lost entries"
    for key, value in state.items():
        assert torch.equal(value, snapshot[key]), f"the frozen encoder changed: {key} differs"


@torch.no_grad()
def frozen_features(encoder: nn.Module, split: Split, resolution: int, batch_size: int = 256,
                    device: str = "cpu") -> np.ndarray:
    """Pre-logits (n, D) float32 of a split, encoder in eval mode; asserts the encoder did not change."""
    snapshot = state_snapshot(encoder)
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(split), batch_size):
        index = np.arange(start, min(start + batch_size, len(split)))
        out.append(encoder(split.batch(index, resolution).to(device)).float().cpu())
    encoder.train(was_training)
    assert_unchanged(encoder, snapshot)
    return torch.cat(out).numpy()


class _LogisticProbe:
    """Multinomial logistic regression on standardised features, full-batch L-BFGS in torch
    (the objective of scikit-learn's ``LogisticRegression(C)``: mean cross-entropy +
    ||W||^2 / (2 C n); scikit-learn's solver took ~10 s per fit on 1000 x 512 features).
    ``start``: a probe whose weights start this fit (the sweep warm-starts each C from the last)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, c: float, num_classes: int, iterations: int = 200,
                 start: _LogisticProbe | None = None) -> None:
        x = torch.as_tensor(x, dtype=torch.float32)
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        y = torch.as_tensor(y)
        weight = start.weight.detach().clone() if start is not None else torch.zeros(x.shape[1], num_classes)
        bias = start.bias.detach().clone() if start is not None else torch.zeros(num_classes)
        self.weight, self.bias = weight.requires_grad_(), bias.requires_grad_()
        optimizer = torch.optim.LBFGS([self.weight, self.bias], lr=1, max_iter=iterations,
                                      tolerance_grad=1e-5, line_search_fn="strong_wolfe")
        l2 = 1.0 / (2 * c * len(y))

        def closure():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(x @ self.weight + self.bias, y) + l2 * self.weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        x = (torch.as_tensor(x, dtype=torch.float32) - self.mean) / self.std
        return (x @ self.weight + self.bias).argmax(1).numpy()


def linear_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                 cs=(0.01, 0.1, 1.0, 10.0), num_classes: int | None = None) -> dict:
    """Linear probe on precomputed features of the four splits (keys as in ``suite.SPLITS``).

    Returns ``{"test_accuracy", "selected": {"C"}, "val": {C: val200 accuracy}}``.
    """
    num_classes = num_classes or int(max(v.max() for v in labels.values())) + 1
    val, fits, last = {}, {}, None
    for c in sorted(cs):               # strong to weak regularisation, each fit starting from the last
        last = fits[c] = _LogisticProbe(features["train800"], labels["train800"], c, num_classes, start=last)
        val[f"{c:g}"] = float(np.mean(last.predict(features["val200"]) == labels["val200"]))
    best = max(cs, key=lambda c: val[f"{c:g}"])              # max keeps the first of ties
    model = _LogisticProbe(features["train800val200"], labels["train800val200"], best, num_classes, start=fits[best])
    test = float(np.mean(model.predict(features["test"]) == labels["test"]))
    return {"test_accuracy": test, "selected": {"C": best}, "val": {f"{c:g}": val[f"{c:g}"] for c in cs}}


def knn_classify(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, k: int = 20,
                 num_classes: int | None = None) -> np.ndarray:
    """Cosine kNN: predicted class of each query row (majority of its ``k`` nearest train rows)."""
    k = min(k, len(train))
    num_classes = num_classes or int(train_labels.max()) + 1

    def unit(a):
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    similarity = unit(query) @ unit(train).T
    nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(query), num_classes))
    weight = np.zeros((len(query), num_classes))
    rows = np.arange(len(query))[:, None]
    np.add.at(votes, (rows, train_labels[nearest]), 1.0)
    np.add.at(weight, (rows, train_labels[nearest]), similarity[rows, nearest])
    # the vote count decides; summed similarity (< k, scaled below 1) only breaks ties
    return np.argmax(votes + weight / (2 * k + 1), axis=1)
