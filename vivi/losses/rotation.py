"""Rotation prediction (frame level of the hierarchy).

VIVI §3.2 uses rotation prediction (Gidaris et al. 2018) as a frame-level loss without an explicit
shot-level term ("approach (i)"), on 4 consecutive frames per shot (VIVI §4). VIVI app. B: "we
compute the predicted rotation after appending to the mini-batch 3 rotated copies of the
mini-batch along the batch dimension and compute the rotation loss for all rotated copies"; VIVI
app. A: a linear head with 4 outputs. See docs/reference.md, "Rotation".

Pipeline: crop + colour distortion (shared by the four copies) -> :func:`rotate_batch` ->
encoder -> :class:`vivi.models.heads.RotationHead` -> :class:`RotationLoss`. Rotate *before* any
resize: resizing a non-square crop after rotating changes the aspect ratio differently for 90/270
than for 0/180 degrees, a shortcut the network would learn. :func:`rotate_batch` therefore refuses
non-square images.
"""

from __future__ import annotations

import torch

from vivi.losses.classification import PretextClassificationLoss

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


class RotationLoss(PretextClassificationLoss):
    """Softmax cross-entropy of the 4-way rotation head over all four copies.

    Paper: VIVI §3.2; VIVI app. A (linear head with 4 outputs) and app. B (loss over the batch
    and its 3 rotated copies).

    Definition: loss = mean over the 4B images x of -log softmax(head(x))[rotation of x].

    Shapes:
        logits: (4B, 4) outputs of :class:`vivi.models.heads.RotationHead`.
        labels: (4B,) from :func:`rotate_batch`.
        returns: scalar loss, ``{"accuracy": ...}`` (detached).
    """

    num_classes = len(ROTATION_DEGREES)
    rows = "4B"
