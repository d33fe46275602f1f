"""Heads and predictors that sit on the frame encoder (they belong to the model).

VIVI app. A: "For each prediction task, we attach a different linear head to the
2048-dimensional pre-logits ResNet representation before applying the respective loss or
prediction function." Feature sizes are constructor arguments so that wider encoders
(w = 3: 6144-d pre-logits) and small test models plug in unchanged.

============================  ==========================================  ====================
head                          what                                        paper
============================  ==========================================  ====================
:class:`ExemplarHead`         linear pre-logits -> 1000                   VIVI app. A
:class:`RotationHead`         linear pre-logits -> 4                      VIVI app. A
:class:`ShotProjection`       mean over frames, linear -> 512             VIVI §3.1, app. A
:class:`MLPCritic`            phi(u)^T psi(v), MLPs 256 hidden, 128 out   VIVI app. A (K = 2)
:class:`BilinearCritic`       u^T W v                                     Object-centric §4.1
:class:`LSTMPredictor`        2-layer LSTM 256, one linear 256 -> 512     VIVI app. A (K = 4)
:class:`ShotOrderHead`        MLP 512 hidden on concatenated shots -> 2   VIVI §3.3, app. A
:class:`ObjectClassHead`      linear grid column -> 600 classes           Object-centric §5.1
============================  ==========================================  ====================

The video-level predictors return :class:`ShotPredictions`, which
:class:`vivi.losses.infonce.VideoInfoNCELoss` consumes: the critic score of a prediction
and a candidate shot is the dot product ``query . key``, so every critic above is written
as a query map of the context and a key map of the candidate. docs/reference.md, "InfoNCE
across shots", collects the papers' statements on the predictors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "BilinearCritic",
    "ExemplarHead",
    "LSTM_OUTPUTS",
    "LSTMPredictor",
    "MLPCritic",
    "ObjectClassHead",
    "RotationHead",
    "ShotOrderHead",
    "ShotPredictions",
    "ShotProjection",
    "prediction_pairs",
]


class ExemplarHead(nn.Linear):
    """Linear map of the pre-logits to the exemplar embedding (VIVI app. A: 1000 outputs).

    L2-normalisation happens in :class:`vivi.losses.exemplar.ExemplarLoss`.
    Shapes: (..., in_dim) -> (..., out_dim).
    """

    def __init__(self, in_dim: int = 2048, out_dim: int = 1000) -> None:
        super().__init__(in_dim, out_dim)


class RotationHead(nn.Linear):
    """4-way linear rotation classifier (VIVI app. A). Shapes: (..., in_dim) -> (..., 4)."""

    def __init__(self, in_dim: int = 2048) -> None:
        super().__init__(in_dim, 4)


class ShotProjection(nn.Module):
    """Shot embedding: average the frame embeddings of a shot, then project to 512.

    VIVI §3.1 and §4 ("Throughout, we rely on (parameter-free) average pooling") and app. A
    ("we project the pre-logits, average-pooled across the frames of the same shot, to 512
    dimensions using a linear head").

    Shapes: (..., F, in_dim) frame pre-logits, e.g. (N, K, F, 2048) -> (..., out_dim),
    e.g. (N, K, 512).
    """

    def __init__(self, in_dim: int = 2048, out_dim: int = 512) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, frame_embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(frame_embeddings.mean(dim=-2))


class ShotPredictions(NamedTuple):
    """Predictions of later shots for the video-level InfoNCE loss.

    Attributes:
        queries: (N, P, D) one prediction per (context, target) pair and video.
        keys: (N, K, D) every shot embedding mapped into the space of the queries; the
            critic score of query q and shot s is ``q . key(s)``.
        context_shot: (P,) long, index of the last shot the prediction has seen.
        target_shot: (P,) long, index of the shot it predicts (> context_shot).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    context_shot: torch.Tensor
    target_shot: torch.Tensor


def prediction_pairs(num_shots: int, device: torch.device | str | None = None):
    """All pairs (l, l + m), 0 <= l < l + m < num_shots, ordered by l then m.

    K = 2 gives [(0, 1)]; K = 4 gives (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).

    Returns:
        ``(context_shot, target_shot)``, two (P,) long tensors, P = K (K - 1) / 2.
    """
    if num_shots < 2:
        raise ValueError(f"need at least 2 shots per video, got {num_shots}")
    ctx, tgt = torch.triu_indices(num_shots, num_shots, offset=1, device=device)
    return ctx, tgt


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class MLPCritic(nn.Module):
    """Critic f(u, v) = phi(u)^T psi(v) with one-hidden-layer MLPs phi and psi.

    VIVI app. A: "when we sample 2 shots, we predict one from the other using an MLP, i.e.
    the function in (4) has the form phi(u)^T psi(v), where phi, psi are MLPs with a single
    hidden layer with 256 units and 128 outputs".

    With K = 2 the only pair is shot 0 -> shot 1. For K > 2 every pair (l, l + m) is
    scored with u = shot l alone (no aggregation of earlier shots; use
    :class:`LSTMPredictor` for that).

    Shapes: shots (N, K, dim) -> ShotPredictions(queries (N, P, out_dim) = phi(u),
    keys (N, K, out_dim) = psi(v), ...).
    """

    def __init__(self, dim: int = 512, hidden: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.phi = _mlp(dim, hidden, out_dim)
        self.psi = _mlp(dim, hidden, out_dim)

    def forward(self, shots: torch.Tensor) -> ShotPredictions:
        ctx, tgt = prediction_pairs(shots.shape[1], device=shots.device)
        return ShotPredictions(self.phi(shots[:, ctx]), self.psi(shots), ctx, tgt)


class BilinearCritic(nn.Module):
    """Critic f(u, v) = u^T W v (Object-centric §4.1: "We parameterize the critic function g as
    a bilinear form"; the critic of CPC, Oord et al. 2018).

    Pairs as in :class:`MLPCritic` (u = shot l). Keys are the shot embeddings themselves.

    Shapes: shots (N, K, dim) -> ShotPredictions(queries (N, P, dim) = W^T u,
    keys (N, K, dim) = v, ...).
    """

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.weight = nn.Linear(dim, dim, bias=False)

    def forward(self, shots: torch.Tensor) -> ShotPredictions:
        ctx, tgt = prediction_pairs(shots.shape[1], device=shots.device)
        return ShotPredictions(self.weight(shots[:, ctx]), shots, ctx, tgt)


LSTM_OUTPUTS = ("linear", "per_offset")


class LSTMPredictor(nn.Module):
    """Predict every later shot embedding from the preceding ones with an LSTM.

    VIVI app. A: "In the experiments with 4 shots, we use a 2-layer LSTM prediction function
    with 256 hidden units to predict every shot embedding from the previous ones. To match
    the dimension of the LSTM output (256) and that of the future shot embeddings (512) we
    employ another linear layer." Object-centric §4.1 uses the same LSTM with 256 hidden units,
    and its eq. (1) sums over l and m: the LSTM state after reading shots 0..l predicts shot
    l + m for every m >= 1.

    ``output="linear"`` (the default, the paper's): that one linear 256 -> 512 layer maps the
    state after shot l to the prediction of every later shot l + m. ``output="per_offset"``: one
    linear layer per offset m, as CPC (Oord et al. 2018, the InfoNCE reference of VIVI §3.3) has
    one W_m per step, so a context can predict a different vector for each later shot
    (docs/losses.md). The score of a prediction and a candidate shot is their dot product, i.e. a
    bilinear critic between the LSTM state and the candidate.

    The layers are ``heads.0`` (linear) or ``heads.0 .. heads.{max_offset - 1}`` (per offset), the
    names checkpoints store. A state dict with one layer per offset, e.g. of a checkpoint written
    when per-offset layers were vivi's only kind, loads into a ``"linear"`` predictor by turning it
    into a per-offset one, so the trained weights are used as trained.

    Args:
        dim: shot-embedding size (512).
        hidden: LSTM hidden units (256).
        num_layers: LSTM layers (2).
        max_offset: largest m to predict; K - 1 = 3 for K = 4.
        output: "linear" or "per_offset" (see above).
        shared_head: the older spelling of ``output``: True = "linear", False = "per_offset".

    Shapes: shots (N, K, dim), K - 1 <= max_offset -> ShotPredictions(queries (N, P, dim),
    keys = shots (N, K, dim), context_shot (P,), target_shot (P,)), P = K (K - 1) / 2.
    """

    def __init__(
        self,
        dim: int = 512,
        hidden: int = 256,
        num_layers: int = 2,
        max_offset: int = 3,
        output: str = "linear",
        shared_head: bool | None = None,
    ) -> None:
        super().__init__()
        if shared_head is not None:
            output = "linear" if shared_head else "per_offset"
        if output not in LSTM_OUTPUTS:
            raise ValueError(f"unknown LSTM output {output!r}; valid: {', '.join(LSTM_OUTPUTS)}")
        self.max_offset = max_offset
        self.output = output
        self.lstm = nn.LSTM(dim, hidden, num_layers=num_layers, batch_first=True)
        self.heads = self._layers(1 if output == "linear" else max_offset)

    def _layers(self, count: int) -> nn.ModuleList:
        lstm = self.lstm
        return nn.ModuleList(nn.Linear(lstm.hidden_size, lstm.input_size, device=lstm.weight_hh_l0.device,
                                       dtype=lstm.weight_hh_l0.dtype) for _ in range(count))

    @property
    def shared_head(self) -> bool:
        return self.output == "linear"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.output == "linear" and f"{prefix}heads.1.weight" in state_dict:
            self.output = "per_offset"
            self.heads = self._layers(self.max_offset)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, shots: torch.Tensor) -> ShotPredictions:
        n, k, _ = shots.shape
        if k - 1 > self.max_offset:
            raise ValueError(f"{k} shots need offsets up to {k - 1} > max_offset={self.max_offset}")
        ctx, tgt = prediction_pairs(k, device=shots.device)
        # The LSTM is causal: its state after step l has read shots 0..l only.
        states, _ = self.lstm(shots[:, : k - 1])  # (N, K-1, hidden)
        if self.output == "linear":
            return ShotPredictions(self.heads[0](states[:, ctx]), shots, ctx, tgt)
        queries = [self.heads[t - c - 1](states[:, c]) for c, t in zip(ctx.tolist(), tgt.tolist())]
        return ShotPredictions(torch.stack(queries, dim=1), shots, ctx, tgt)


class ShotOrderHead(nn.Module):
    """Forward/backward classifier on the concatenated shot embeddings.

    VIVI §3.3 (the shot order "from concatenated shot embeddings") and app. A ("a
    single-hidden-layer MLP with 512 hidden units as prediction function"); class 1 = reversed,
    0 = forward order.

    Shapes: shots (N, num_shots, dim) -> logits (N, 2).
    """

    def __init__(self, dim: int = 512, num_shots: int = 2, hidden: int = 512) -> None:
        super().__init__()
        self.mlp = _mlp(num_shots * dim, hidden, 2)

    def forward(self, shots: torch.Tensor) -> torch.Tensor:
        return self.mlp(shots.flatten(start_dim=1))


class ObjectClassHead(nn.Linear):
    """Linear classifier of box features into detector classes (Object-centric §5.1, Ablation 4:
    600 OpenImagesV4 classes, binary cross-entropy in :class:`vivi.losses.ObjectClassificationLoss`).

    Shapes: (..., in_dim) -> (..., num_classes).
    """

    def __init__(self, in_dim: int = 2048, num_classes: int = 600) -> None:
        super().__init__(in_dim, num_classes)
