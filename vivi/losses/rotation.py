"""Rotation prediction (frame level).

Gidaris et al. 2018 as used in VIVI §3.2 and appendix A ("we compute the predicted
rotation after appending to the mini-batch 3 rotated copies of the mini-batch along the
batch dimension and compute the rotation loss for all rotated copies"); SPEC §1.

Pipeline: crop + colour distortion (shared by the four copies) -> :func:`rotate_batch`
-> encoder -> :class:`vivi.models.heads.RotationHead` (4-way linear) -> :class:`RotationLoss`.
Rotate *before* any resize: resizing a non-square crop after rotating changes the aspect
ratio differently for 90/270 than for 0/180 degrees, a shortcut the network would learn.
:func:`rotate_batch` therefore refuses non-square images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ROTATION_DEGREES", "RotationLoss", "rotate_batch"]

#: Label k means a counter-clockwise rotation by ``ROTATION_DEGREES[k]``.
ROTATION_DEGREES = (0, 90, 180, 270)


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the 90, 180 and 270 degree rotated copies of a batch along the batch dimension.

    Args:
        images: (B, C, H, W) with H == W (square crops, before any resize).

    Returns:
        ``(rotated, labels)``: rotated (4B, C, H, W) = ``[x, rot90(x), rot180(x), rot270(x)]``
        (rotation counter-clockwise as displayed, ``torch.rot90(x, k, dims=(-2, -1))``) and
        labels (4B,) long = ``[0]*B + [1]*B + [2]*B + [3]*B``.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(
            f"rotation needs square images (got {h}x{w}): rotate the square crop before any "
            "resize, otherwise the aspect-ratio change reveals the rotation"
        )
    b = images.shape[0]
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)], dim=0)
    labels = torch.arange(4, device=images.device).repeat_interleave(b)
    return rotated, labels


class RotationLoss(nn.Module):
    """Softmax cross-entropy of the 4-way rotation head over all four copies.

    VIVI appendix A; SPEC §1 ("Rotation"). Mean over the 4B images.

    Shapes:
        logits: (4B, 4) outputs of :class:`vivi.models.heads.RotationHead`.
        labels: (4B,) from :func:`rotate_batch`.
        returns: scalar loss, ``{"accuracy": ...}`` (detached).
    """

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.ndim != 2 or logits.shape[1] != 4:
            raise ValueError(f"logits must be (4B, 4), got {tuple(logits.shape)}")
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}
