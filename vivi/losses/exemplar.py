"""Exemplar loss with the shot as exemplar set (frame/shot level of the hierarchy).

VIVI §3.2: exemplar SSL scaled with a triplet loss, where the exemplar set of a frame is not a
set of augmented copies of it but the consecutive frames of its shot, each augmented once. The
frame encoder's pre-logits go through :class:`vivi.models.heads.ExemplarHead` (linear 2048 ->
1000, VIVI app. A); this loss L2-normalises those outputs and applies the semi-hard triplet loss
with margin 0.5 (VIVI app. B). See docs/reference.md, "Exemplar".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vivi.losses.triplet import semi_hard_triplet_loss

__all__ = ["ExemplarLoss", "shot_labels"]


def shot_labels(
    num_videos: int, num_shots: int, num_frames: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Exemplar labels for frames laid out as (video, shot, frame), flattened in that order.

    Returns:
        (num_videos * num_shots * num_frames,) long: frame (i, l, k) gets ``i * num_shots + l``.
        The Ex-YT-F baseline (8 augmented copies of one frame per video) is ``num_shots=1``.
    """
    shot_ids = torch.arange(num_videos * num_shots, device=device)
    return shot_ids.repeat_interleave(num_frames)


class ExemplarLoss(nn.Module):
    """L2-normalise the exemplar embeddings, then semi-hard triplet loss with the shot as label.

    Paper: VIVI §3.2 ("we employ a triplet loss encouraging augmentations of the same image to be
    close and augmentations of different images to be far apart"; "we pick consecutive frames
    from the same shot and augment each frame once"), VIVI app. A (linear head with 1000 outputs,
    L2-normalisation before the triplet loss), VIVI app. B (margin 0.5).

    Definition: e_x = h(x) / ||h(x)||, then :class:`vivi.losses.triplet.SemiHardTripletLoss` on
    the e_x with label = shot: the frames of one shot are positives of each other, the frames of
    every other shot are negatives. The Ex-YT-F baseline (VIVI §4) is the same loss with the F
    augmented copies of one frame per video as the exemplar set.

    Scope: the loss is computed over the frames given to it, i.e. per device; no negatives are
    gathered from other ranks. VIVI app. B: "For exemplar SSL the triplet loss is computed per
    core" (docs/reference.md, "Loss scope").

    Args:
        margin: triplet margin (0.5 in VIVI app. B).
        eps: floor of the norm in the L2 normalisation.

    Shapes:
        embeddings: (B, D) exemplar-head outputs, or (N, K, F, D) laid out as (video, shot,
            frame), which is flattened in that order.
        labels: (B,) shot identity per frame; may be omitted for the (N, K, F, D) layout, where
            :func:`shot_labels` supplies it.
        returns: scalar loss, dict of detached diagnostics (see
            :func:`vivi.losses.triplet.semi_hard_triplet_loss`).
    """

    def __init__(self, margin: float = 0.5, eps: float = 1e-12) -> None:
        super().__init__()
        self.margin = margin
        self.eps = eps

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if embeddings.ndim == 4:
            n, k, f, d = embeddings.shape
            if labels is None:
                labels = shot_labels(n, k, f, device=embeddings.device)
            embeddings = embeddings.reshape(n * k * f, d)
        elif labels is None:
            raise ValueError("labels are required for (B, D) embeddings")
        embeddings = F.normalize(embeddings, dim=-1, eps=self.eps)
        return semi_hard_triplet_loss(embeddings, labels, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
