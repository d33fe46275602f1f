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

    Scope: VIVI app. B, "For exemplar SSL the triplet loss is computed per core": with 2048
    shots per step on 128 TPU cores, 16 shots (128 frames for F = 8) per triplet group.
    ``group_shots=G`` mines within consecutive groups of G shots of the global batch, in
    (video, shot) order, and averages the group losses (:func:`semi_hard_triplet_loss`). Rank r
    holds the global videos ``[r * N, (r + 1) * N)`` (the order of
    :func:`vivi.distributed.all_gather_with_grad`), so when each rank's N * K shots are a whole
    number of groups every group lies on one rank, nothing is gathered, and the loss and its
    gradients do not depend on the number of ranks; other batches are refused. ``group_shots=None``
    mines over all frames given to the loss, i.e. per device (docs/reference.md, "Loss scope").

    Args:
        margin: triplet margin (0.5 in VIVI app. B).
        eps: floor of the norm in the L2 normalisation.
        group_shots: shots per triplet group (16 in VIVI app. B); needs the (N, K, F, D) layout.

    Shapes:
        embeddings: (B, D) exemplar-head outputs, or (N, K, F, D) laid out as (video, shot,
            frame), which is flattened in that order.
        labels: (B,) shot identity per frame; may be omitted for the (N, K, F, D) layout, where
            :func:`shot_labels` supplies it.
        returns: scalar loss, dict of detached diagnostics (see
            :func:`vivi.losses.triplet.semi_hard_triplet_loss`).
    """

    def __init__(self, margin: float = 0.5, eps: float = 1e-12, group_shots: int | None = None) -> None:
        super().__init__()
        if group_shots is not None and group_shots < 1:
            raise ValueError(f"group_shots must be a positive number of shots or None, got {group_shots}")
        self.margin = margin
        self.eps = eps
        self.group_shots = group_shots

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        group_size = None
        if embeddings.ndim == 4:
            n, k, f, d = embeddings.shape
            if labels is None:
                labels = shot_labels(n, k, f, device=embeddings.device)
            embeddings = embeddings.reshape(n * k * f, d)
            if self.group_shots is not None:
                if (n * k) % self.group_shots:
                    raise ValueError(
                        f"exemplar group_shots={self.group_shots} does not divide this rank's {n * k} shots "
                        f"({n} videos x {k} shots): make videos per rank x shots a multiple of it"
                    )
                group_size = self.group_shots * f
        elif labels is None:
            raise ValueError("labels are required for (B, D) embeddings")
        elif self.group_shots is not None:
            raise ValueError(f"group_shots needs embeddings laid out as (N, K, F, D), got {tuple(embeddings.shape)}")
        embeddings = F.normalize(embeddings, dim=-1, eps=self.eps)
        return semi_hard_triplet_loss(embeddings, labels, self.margin, group_size=group_size)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, group_shots={self.group_shots}"
