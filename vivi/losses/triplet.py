"""Semi-hard triplet loss: FaceNet's online mining, with TensorFlow Addons' ``triplet_semihard_loss`` semantics.

The building block of two losses of the hierarchy:

* the exemplar loss (VIVI §3.2; VIVI app. A and B): L2-normalised exemplar-head outputs, margin
  0.5, label = the frame's shot (:class:`vivi.losses.exemplar.ExemplarLoss`);
* the object-level loss (Object-centric §3, eq. (2), with "semi-hard negative mining", i.e.
  FaceNet's): box features, label = the detector's class (:class:`vivi.losses.object.ObjectLoss`).

Neither paper spells the mining out; vivi follows FaceNet (Schroff et al. 2015) as TensorFlow
Addons' ``triplet_semihard_loss`` implements it. The definition is in :class:`SemiHardTripletLoss`
and in docs/reference.md, "Semi-hard triplet mining".
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SemiHardTripletLoss", "pairwise_squared_distances", "semi_hard_triplet_loss"]


def pairwise_squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``||e_a - e_b||^2`` for all pairs.

    Args:
        embeddings: (B, D).

    Returns:
        (B, B), clamped at 0 (the expansion ``|a|^2 + |b|^2 - 2ab`` can go slightly negative)
        with an exact zero diagonal, as in TF Addons' ``pairwise_distance(squared=True)``.
    """
    sq_norms = embeddings.pow(2).sum(dim=1)
    dist = sq_norms[:, None] + sq_norms[None, :] - 2.0 * (embeddings @ embeddings.T)
    dist = dist.clamp_min(0.0)
    eye = torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
    return dist.masked_fill(eye, 0.0)


def semi_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Semi-hard triplet loss; see :class:`SemiHardTripletLoss` for the definition.

    Args:
        embeddings: (B, D) float. The caller normalises them if wanted (exemplar does).
        labels: (B,) integer labels; equal labels are positives, different are negatives.
        margin: alpha in ``max(0, margin + d(a, p) - d(a, n))``.

    Returns:
        ``(loss, diagnostics)``: scalar loss (0 with a graph to ``embeddings`` when there is no
        usable positive pair) and a dict of detached scalars:
        ``num_positive_pairs`` (pairs in the divisor), ``frac_semi_hard`` (pairs for which a
        negative farther than the positive existed), ``frac_active`` (pairs with non-zero loss),
        ``mean_pos_dist``, ``mean_neg_dist`` (the chosen negatives).
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}")
    labels = labels.reshape(-1)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
    b = embeddings.shape[0]
    dist = pairwise_squared_distances(embeddings)

    same = labels[:, None] == labels[None, :]
    eye = torch.eye(b, dtype=torch.bool, device=embeddings.device)
    negative = ~same
    has_negative = negative.any(dim=1)
    # Anchors without any negative form no triplet: their pairs are left out (numerator and
    # divisor). TF Addons would use the row minimum (0, the diagonal) as d(a, n) instead.
    positive = same & ~eye & has_negative[:, None]

    # Per anchor, the distances to its negatives in increasing order, +inf behind them.
    # For each positive pair (a, p), searchsorted(right=True) finds the first negative with
    # d(a, n) > d(a, p) (strict). O(B^2) memory, no B x B x B tensor.
    neg_sorted, _ = dist.masked_fill(~negative, float("inf")).sort(dim=1)
    num_negatives = negative.sum(dim=1)
    idx = torch.searchsorted(neg_sorted.detach().contiguous(), dist.detach().contiguous(), right=True)
    found = idx < num_negatives[:, None]
    # Fallback: the largest negative distance of the anchor (last finite sorted entry).
    largest = (num_negatives - 1).clamp_min(0)[:, None].expand(b, b)
    chosen = torch.where(found, idx, largest).clamp_max(b - 1)
    neg_dist = neg_sorted.gather(1, chosen)
    # Rows without negatives hold +inf; keep them finite so 0 * inf never makes a NaN.
    neg_dist = torch.where(positive, neg_dist, torch.zeros_like(neg_dist))

    per_pair = (margin + dist - neg_dist).clamp_min(0.0) * positive
    num_pos = positive.sum()
    loss = per_pair.sum() / num_pos.clamp_min(1)

    with torch.no_grad():
        denom = num_pos.clamp_min(1).to(embeddings.dtype)
        diagnostics = {
            "num_positive_pairs": num_pos.to(embeddings.dtype),
            "frac_semi_hard": (found & positive).sum() / denom,
            "frac_active": ((per_pair > 0) & positive).sum() / denom,
            "mean_pos_dist": (dist * positive).sum() / denom,
            "mean_neg_dist": (neg_dist * positive).sum() / denom,
        }
    return loss, diagnostics


class SemiHardTripletLoss(nn.Module):
    """Semi-hard triplet loss of FaceNet (Schroff et al. 2015), as in TensorFlow Addons.

    Paper: VIVI §3.2 (exemplar SSL with a triplet loss), VIVI app. B ("We set the margin
    parameter in the semi-hard triplet loss to 0.5"); Object-centric §3, eq. (2). See
    docs/reference.md, "Semi-hard triplet mining".

    Definition:
        * d(a, b) = ||e_a - e_b||^2, the squared Euclidean distance (no normalisation here: the
          exemplar and object losses normalise before calling).
        * Positive pairs: every ordered pair (a, p), a != p, with the same label.
        * Negative of (a, p): the smallest d(a, n) over the negatives n of a (other label) with
          d(a, n) > d(a, p), strictly; if there is none, the largest d(a, n) over all negatives of a.
        * loss = sum over positive pairs of max(0, margin + d(a, p) - d(a, n)), divided by the
          number of positive pairs (pairs with zero loss count in the divisor).

    Two edge cases differ from TensorFlow Addons, on purpose: pairs whose anchor has no negative
    at all (every label in the batch equal) are left out of sum and divisor (TF Addons takes the
    row minimum, 0, as d(a, n)); with no usable pair the loss is an exact 0 that still has a graph
    to the embeddings, so a step with one shot per device does not fail.

    Memory is O(B^2): one distance matrix, one sort per anchor row and a ``searchsorted``, no
    B x B x B tensor.

    Args:
        margin: alpha; 0.5 in both papers.

    Shapes:
        embeddings: (B, D) float.
        labels: (B,) integer labels.
        returns: scalar loss, dict of detached diagnostics (see :func:`semi_hard_triplet_loss`).
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return semi_hard_triplet_loss(embeddings, labels, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
