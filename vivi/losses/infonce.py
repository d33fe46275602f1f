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
  ranks; with ``scope="group"``, of video i's group), not only those at time step l + m. VIVI
  footnote 2: "In practice, we use all shot embeddings from the other videos, not only those at
  time step l + m, which is known to improve performance"; Object-centric §3: "optimization is
  more stable when contrasting against shot representations from the entire batch of videos".

That is ``1 + (N_global - 1) * K`` candidates (``1 + (group_videos - 1) * K`` in a group), and
eq. (4) up to its additive constant (VIVI §3.3: the terms of (4) are, "up to an additive
constant", the cross-entropy of a classification with the correct label). There is no
temperature: neither paper has one.

The other shots of video i itself are not candidates: footnote 2 names the other videos only,
and the critic is "trained to assign high scores to pairs of shot embeddings from the same video"
(VIVI §3.3), so they are not negatives in the paper's sense (docs/reference.md, "Choices the
papers leave open").

Pairs (:func:`vivi.models.heads.prediction_pairs`). K = 2: one prediction per video, shot 1 ->
shot 2. K = 4: every pair l < l + m <= 4, i.e. (1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4), 6 per
video, as Object-centric eq. (1) sums over l and m.

Reduction (``pair_reduction``). ``"sum"``: Object-centric eq. (1), the sum over the pairs of a
video, averaged over videos (``-(1/N) sum_{i,l,m}``). ``"mean"`` (the class default): the mean
over videos and pairs, i.e. eq. (1) divided by the number of pairs P. For K = 2 (P = 1) they are
equal; for K = 4 ``"mean"`` makes the video-level weight lambda act as lambda / 6 of eq. (1).
VIVI §3.3 describes a single prediction and does not say how the K = 4 predictions combine;
Object-centric §3 summarises VIVI's shot-level loss as eq. (1) and takes lambda = 0.04 from VIVI
(Object-centric §4.1), so ``"sum"`` is the papers' reading for both (docs/reference.md,
"InfoNCE across shots").

Scope (``scope``). ``"global"`` (default): the keys of all ranks are gathered with
:func:`vivi.distributed.all_gather_with_grad`; queries stay local, so each rank's loss is the mean
over its *local* predictions, and with DDP averaging parameter gradients the gradients equal those
of the single-process loss on the global batch. ``"group"``: the candidates of a prediction are
the shots of the other videos of its group of ``group_videos`` consecutive videos of the global
batch; rank r holds the global videos ``[r * N, (r + 1) * N)``, so when N is a whole number of
groups every group lies on one rank, nothing is gathered and the loss does not depend on the
number of ranks (other batches are refused). VIVI app. B computes the loss "across all cores when
prediction is across 4 shots, and computed per core when prediction is across 2 shots as
computing the loss across all cores led to instabilities for that case": 2048 shots on 128 cores
are 8 videos of K = 2 per core, ``scope="group", group_videos=8``. Object-centric §3 contrasts
against "the entire batch of videos" (docs/reference.md, "Loss scope").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vivi.distributed import all_gather_with_grad, get_rank

__all__ = ["PAIR_REDUCTIONS", "SCOPES", "VideoInfoNCELoss", "group_info_nce_logits", "info_nce_logits"]

#: ``scope`` values: negatives from the whole global batch, or from a group of videos.
SCOPES = ("global", "group")
#: ``pair_reduction`` values: mean over the pairs of a video, or their sum (Object-centric eq. (1)).
PAIR_REDUCTIONS = ("mean", "sum")


def _candidate_mask(
    n: int, n_global: int, k: int, target_shot: torch.Tensor, video_offset: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N * P, N_global * K) mask of the non-target shots of each prediction's own video, and the
    (N * P,) column of its true shot."""
    p = target_shot.shape[0]
    own_video = video_offset + torch.arange(n, device=device)  # (N,)
    same_video = own_video[:, None] == torch.arange(n_global, device=device)[None, :]  # (N, Ng)
    not_target = torch.arange(k, device=device)[None, :] != target_shot[:, None]  # (P, K)
    excluded = same_video[:, None, :, None] & not_target[None, :, None, :]  # (N, P, Ng, K)
    labels = (own_video[:, None] * k + target_shot[None, :]).reshape(n * p)
    return excluded.reshape(n * p, n_global * k), labels


def _check_shapes(queries: torch.Tensor, keys: torch.Tensor, target_shot: torch.Tensor) -> None:
    p, d, d_keys = queries.shape[-2], queries.shape[-1], keys.shape[-1]
    if d != d_keys:
        raise ValueError(f"queries have dim {d}, keys {d_keys}")
    if target_shot.shape != (p,):
        raise ValueError(f"target_shot must be ({p},), got {tuple(target_shot.shape)}")


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
    _check_shapes(queries, keys_global, target_shot)
    n, p, d = queries.shape
    n_global, k, _ = keys_global.shape
    target_shot = target_shot.to(queries.device)
    logits = queries.reshape(n * p, d) @ keys_global.reshape(n_global * k, d).T
    excluded, labels = _candidate_mask(n, n_global, k, target_shot, video_offset, queries.device)
    return logits.masked_fill(excluded, float("-inf")), labels


def group_info_nce_logits(
    queries: torch.Tensor, keys: torch.Tensor, target_shot: torch.Tensor, group_videos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`info_nce_logits` within consecutive groups of ``group_videos`` videos.

    Args:
        queries: (N, P, D), keys: (N, K, D), with N a multiple of ``group_videos`` (G).
        target_shot: (P,) long.

    Returns:
        ``(logits, labels)``: logits (N * P, G * K), row (i, pair) scoring the shots of the G
        videos of video i's group; labels (N * P,) = column of the true shot within the group.
    """
    _check_shapes(queries, keys, target_shot)
    n, p, d = queries.shape
    k, g = keys.shape[1], group_videos
    target_shot = target_shot.to(queries.device)
    logits = queries.reshape(n // g, g * p, d) @ keys.reshape(n // g, g * k, d).transpose(1, 2)
    excluded, labels = _candidate_mask(g, g, k, target_shot, 0, queries.device)
    logits = logits.masked_fill(excluded, float("-inf")).reshape(n * p, g * k)
    return logits, labels.repeat(n // g)


class VideoInfoNCELoss(nn.Module):
    """InfoNCE over shot predictions, with all shots of all other videos as negatives.

    Paper: VIVI §3.3, eq. (4) and footnote 2; Object-centric §3, eq. (1). The module docstring
    gives the definition, the candidate set, the reduction and the scope.

    Args:
        scope: ``"global"`` (default): negatives from every rank; ``"group"``: from the other
            videos of the prediction's group of ``group_videos`` consecutive videos.
        group_videos: videos per group with ``scope="group"`` (8 for VIVI's K = 2 models).
        pair_reduction: ``"mean"`` (default, over videos and pairs) or ``"sum"`` (over the pairs
            of a video, mean over videos: Object-centric eq. (1)).

    Shapes:
        queries: (N, P, D) predictions, e.g. ``ShotPredictions.queries``.
        keys: (N, K, D) the local shots mapped to key space (``ShotPredictions.keys``).
        target_shot: (P,) long, index in 0..K-1 of the predicted shot.
        returns: scalar loss, dict of detached diagnostics: ``accuracy`` (fraction of predictions
            whose true shot scores highest among the candidates), ``num_candidates``.
    """

    def __init__(self, scope: str = "global", group_videos: int | None = None, pair_reduction: str = "mean") -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"InfoNCE scope must be one of {SCOPES}, got {scope!r}")
        if (scope == "group") != (group_videos is not None):
            raise ValueError(f"InfoNCE group_videos={group_videos} goes with scope='group' only, got scope={scope!r}")
        if group_videos is not None and group_videos < 2:
            raise ValueError(f"InfoNCE group_videos must be at least 2 (a group needs negatives), got {group_videos}")
        if pair_reduction not in PAIR_REDUCTIONS:
            raise ValueError(f"pair_reduction must be one of {PAIR_REDUCTIONS}, got {pair_reduction!r}")
        self.scope = scope
        self.group_videos = group_videos
        self.pair_reduction = pair_reduction

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, target_shot: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n, p, _ = queries.shape
        k = keys.shape[1]
        if keys.shape[0] != n:
            raise ValueError(f"{n} videos of queries but {keys.shape[0]} of keys")
        if self.scope == "group":
            if n % self.group_videos:
                raise ValueError(
                    f"InfoNCE group_videos={self.group_videos} does not divide this rank's {n} videos: "
                    "make the videos per rank a multiple of it"
                )
            logits, labels = group_info_nce_logits(queries, keys, target_shot, self.group_videos)
            candidate_videos = self.group_videos
        else:
            keys_global = all_gather_with_grad(keys)
            logits, labels = info_nce_logits(queries, keys_global, target_shot, get_rank() * n)
            candidate_videos = keys_global.shape[0]
        per_prediction = F.cross_entropy(logits, labels, reduction="none")  # (N * P,)
        loss = per_prediction.mean()
        if self.pair_reduction == "sum":
            loss = loss * p
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
            diagnostics = {
                "accuracy": accuracy,
                "num_candidates": torch.tensor(float(1 + (candidate_videos - 1) * k)),
            }
        return loss, diagnostics

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}, group_videos={self.group_videos}, pair_reduction={self.pair_reduction!r}"
