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
    """Squared Euclidean distances ``||e_a - e_b||^2`` for all pairs (of each group).

    Args:
        embeddings: (B, D), or (G, B, D) for G independent groups.

    Returns:
        (B, B) (or (G, B, B)), clamped at 0 (the expansion ``|a|^2 + |b|^2 - 2ab`` can go slightly
        negative) with an exact zero diagonal, as in TF Addons' ``pairwise_distance(squared=True)``.
    """
    sq_norms = embeddings.pow(2).sum(dim=-1)
    gram = embeddings @ embeddings.transpose(-1, -2)
    dist = (sq_norms[..., :, None] + sq_norms[..., None, :] - 2.0 * gram).clamp_min(0.0)
    eye = torch.eye(dist.shape[-1], dtype=torch.bool, device=dist.device)
    return dist.masked_fill(eye, 0.0)


def semi_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.5, group_size: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Semi-hard triplet loss; see :class:`SemiHardTripletLoss` for the definition.

    Args:
        embeddings: (B, D) float. The caller normalises them if wanted (exemplar does).
        labels: (B,) integer labels; equal labels are positives, different are negatives.
        margin: alpha in ``max(0, margin + d(a, p) - d(a, n))``.
        group_size: mine within consecutive groups of this many rows (``B`` must be a multiple);
            the loss is then the mean over groups of each group's loss. None: one group of B rows.

    Returns:
        ``(loss, diagnostics)``: scalar loss (0 with a graph to ``embeddings`` when there is no
        usable positive pair) and a dict of detached scalars over all groups:
        ``num_positive_pairs`` (pairs in the divisors), ``frac_semi_hard`` (pairs for which a
        negative farther than the positive existed), ``frac_active`` (pairs with non-zero loss),
        ``mean_pos_dist``, ``mean_neg_dist`` (the chosen negatives).
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got {tuple(embeddings.shape)}")
    labels = labels.reshape(-1)
    b = embeddings.shape[0]
    if labels.shape[0] != b:
        raise ValueError(f"{labels.shape[0]} labels for {b} embeddings")
    size = b if group_size is None else group_size
    if size < 1 or b % size:
        raise ValueError(f"triplet group_size={group_size} does not divide the batch of {b} rows")
    groups = b // size
    embeddings, labels = embeddings.reshape(groups, size, -1), labels.reshape(groups, size)
    dist = pairwise_squared_distances(embeddings)                               # (G, S, S)

    same = labels[:, :, None] == labels[:, None, :]
    eye = torch.eye(size, dtype=torch.bool, device=embeddings.device)
    negative = ~same
    has_negative = negative.any(dim=2)
    # Anchors without any negative form no triplet: their pairs are left out (numerator and
    # divisor). TF Addons would use the row minimum (0, the diagonal) as d(a, n) instead.
    positive = same & ~eye & has_negative[:, :, None]

    # Per anchor, the distances to its negatives in increasing order, +inf behind them.
    # For each positive pair (a, p), searchsorted(right=True) finds the first negative with
    # d(a, n) > d(a, p) (strict). O(G S^2) memory, no S x S x S tensor.
    neg_sorted, _ = dist.masked_fill(~negative, float("inf")).sort(dim=2)
    num_negatives = negative.sum(dim=2)
    idx = torch.searchsorted(neg_sorted.detach().contiguous(), dist.detach().contiguous(), right=True)
    found = idx < num_negatives[:, :, None]
    # Fallback: the largest negative distance of the anchor (last finite sorted entry).
    largest = (num_negatives - 1).clamp_min(0)[:, :, None].expand_as(idx)
    chosen = torch.where(found, idx, largest).clamp_max(size - 1)
    neg_dist = neg_sorted.gather(2, chosen)
    # Rows without negatives hold +inf; keep them finite so 0 * inf never makes a NaN.
    neg_dist = torch.where(positive, neg_dist, torch.zeros_like(neg_dist))

    per_pair = (margin + dist - neg_dist).clamp_min(0.0) * positive
    pairs_per_group = positive.sum(dim=(1, 2))
    # Each group is one core's loss in VIVI app. B; the step's loss is the mean over groups (a
    # group without a usable pair counts as 0), as averaging over cores does.
    loss = (per_pair.sum(dim=(1, 2)) / pairs_per_group.clamp_min(1)).mean()

    with torch.no_grad():
        num_pos = pairs_per_group.sum()
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

    Groups (``group_size``): the rows split into consecutive groups of ``group_size``; each group
    is mined on its own (negatives only from the anchor's group) and the loss is the **mean over
    groups** of the group losses above. This is VIVI app. B's "the triplet loss is computed per
    core" with the per-core losses averaged over cores, independent of how the groups are spread
    over devices (docs/reference.md, "Loss scope"). The mean over groups equals the mean over
    all pairs whenever every group holds the same number of positive pairs, as with the exemplar
    loss's equal-sized shots.

    Memory is O(B S): one S x S distance matrix per group of S rows, one sort per anchor row and
    a ``searchsorted``, no S x S x S tensor.

    Args:
        margin: alpha; 0.5 in both papers.
        group_size: rows per mining group; None mines over all B rows.

    Shapes:
        embeddings: (B, D) float.
        labels: (B,) integer labels.
        returns: scalar loss, dict of detached diagnostics (see :func:`semi_hard_triplet_loss`).
    """

    def __init__(self, margin: float = 0.5, group_size: int | None = None) -> None:
        super().__init__()
        self.margin = margin
        self.group_size = group_size

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return semi_hard_triplet_loss(embeddings, labels, self.margin, group_size=self.group_size)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, group_size={self.group_size}"
