"""Video-level InfoNCE: predict later shot embeddings of a video from its earlier shots.

Paper: VIVI §3.3, eq. (4) and footnote 2; Object-centric §3, eq. (1). The predictors and critics
are model heads (:mod:`vivi.models.heads`; VIVI app. A, Object-centric §4.1); this module only
scores and contrasts. See docs/reference.md, "InfoNCE across shots".

Definition. A predictor turns the shots of video i up to shot l into a query q^i_{l,m} for shot
l + m, and every shot s into a key k(s); the critic score is g = q . k (see
:class:`vivi.models.heads.ShotPredictions`). Each prediction is a softmax cross-entropy

    -log( exp(q . k(s^i_{l+m})) / sum over candidates c of exp(q . k(c)) )

over the candidates

* the true shot s^i_{l+m} (the label), and
* **every** shot s^j_1..s^j_K of **every other** video j != i in the **global** batch (all
  ranks), not only those at time step l + m. VIVI footnote 2: "In practice, we use all shot
  embeddings from the other videos, not only those at time step l + m, which is known to improve
  performance"; Object-centric §3: "optimization is more stable when contrasting against shot
  representations from the entire batch of videos".

That is ``1 + (N_global - 1) * K`` candidates, and eq. (4) up to its additive constant (VIVI
§3.3: the terms of (4) are, "up to an additive constant", the cross-entropy of a classification
with the correct label). There is no temperature: neither paper has one.

The other shots of video i itself are not candidates: footnote 2 names the other videos only,
and the critic is "trained to assign high scores to pairs of shot embeddings from the same video"
(VIVI §3.3), so they are not negatives in the paper's sense (docs/reference.md, "Choices the
papers leave open").

Pairs. K = 2: one prediction per video (shot 1 -> shot 2). K = 4: every pair l < l + m <= 4,
6 per video, as Object-centric eq. (1) sums over l and m.

Reduction. The mean over videos and pairs. Object-centric eq. (1) sums over (l, m) and divides by
N; ``pair_reduction="sum"`` gives that (the mean times the number of pairs P). The two differ by
the constant P, which the video-level weight lambda absorbs (docs/reference.md, "Total loss and
weights").

Scope. With ``gather=True`` (the default) the keys of all ranks are gathered with
:func:`vivi.distributed.all_gather_with_grad`; queries stay local, so each rank's loss is the mean
over its *local* predictions, and with DDP averaging parameter gradients the gradients equal those
of the single-process loss on the global batch (tests/test_distributed.py). VIVI app. B computed
the loss across all cores for 4 shots and per core for 2 shots ("computing the loss across all
cores led to instabilities for that case"); vivi gathers for both, following Object-centric §3,
and ``gather=False`` gives the per-device loss (docs/reference.md, "Loss scope").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vivi.distributed import all_gather_with_grad, get_rank

__all__ = ["VideoInfoNCELoss", "info_nce_logits"]


def info_nce_logits(
    queries: torch.Tensor,
    keys_global: torch.Tensor,
    target_shot: torch.Tensor,
    video_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked critic scores and labels for the video-level InfoNCE loss.

    Args:
        queries: (N, P, D) local predictions.
        keys_global: (N_global, K, D) shot keys of the whole global batch.
        target_shot: (P,) long, the shot each prediction targets.
        video_offset: global index of the first local video (rank * N for equal shards).

    Returns:
        ``(logits, labels)``: logits (N * P, N_global * K) with ``-inf`` at the non-target
        shots of the prediction's own video, labels (N * P,) = column of the true shot.
    """
    n, p, d = queries.shape
    n_global, k, d_keys = keys_global.shape
    if d != d_keys:
        raise ValueError(f"queries have dim {d}, keys {d_keys}")
    if target_shot.shape != (p,):
        raise ValueError(f"target_shot must be ({p},), got {tuple(target_shot.shape)}")
    device = queries.device
    target_shot = target_shot.to(device)
    logits = queries.reshape(n * p, d) @ keys_global.reshape(n_global * k, d).T

    own_video = video_offset + torch.arange(n, device=device)  # (N,)
    same_video = own_video[:, None] == torch.arange(n_global, device=device)[None, :]  # (N, Ng)
    not_target = torch.arange(k, device=device)[None, :] != target_shot[:, None]  # (P, K)
    excluded = same_video[:, None, :, None] & not_target[None, :, None, :]  # (N, P, Ng, K)
    logits = logits.masked_fill(excluded.reshape(n * p, n_global * k), float("-inf"))
    labels = (own_video[:, None] * k + target_shot[None, :]).reshape(n * p)
    return logits, labels


class VideoInfoNCELoss(nn.Module):
    """InfoNCE over shot predictions, with all shots of all other videos as negatives.

    Paper: VIVI §3.3, eq. (4) and footnote 2; Object-centric §3, eq. (1). The module docstring
    gives the definition, the candidate set, the reduction and the distributed convention.

    Args:
        gather: take negatives from all ranks (default); False uses the local batch only.
        pair_reduction: ``"mean"`` (default) or ``"sum"`` over the (context, target) pairs.

    Shapes:
        queries: (N, P, D) predictions, e.g. ``ShotPredictions.queries``.
        keys: (N, K, D) the local shots mapped to key space (``ShotPredictions.keys``).
        target_shot: (P,) long, index in 0..K-1 of the predicted shot.
        returns: scalar loss, dict of detached diagnostics: ``accuracy`` (fraction of predictions
            whose true shot scores highest among the candidates), ``num_candidates``.
    """

    def __init__(self, gather: bool = True, pair_reduction: str = "mean") -> None:
        super().__init__()
        if pair_reduction not in ("mean", "sum"):
            raise ValueError(f"pair_reduction must be 'mean' or 'sum', got {pair_reduction!r}")
        self.gather = gather
        self.pair_reduction = pair_reduction

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, target_shot: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n, p, _ = queries.shape
        if keys.shape[0] != n:
            raise ValueError(f"{n} videos of queries but {keys.shape[0]} of keys")
        if self.gather:
            keys_global = all_gather_with_grad(keys)
            video_offset = get_rank() * n
        else:
            keys_global, video_offset = keys, 0
        logits, labels = info_nce_logits(queries, keys_global, target_shot, video_offset)
        per_prediction = F.cross_entropy(logits, labels, reduction="none")  # (N * P,)
        loss = per_prediction.mean()
        if self.pair_reduction == "sum":
            loss = loss * p
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
            k = keys.shape[1]
            diagnostics = {
                "accuracy": accuracy,
                "num_candidates": torch.tensor(float(1 + (keys_global.shape[0] - 1) * k)),
            }
        return loss, diagnostics

    def extra_repr(self) -> str:
        return f"gather={self.gather}, pair_reduction={self.pair_reduction!r}"
