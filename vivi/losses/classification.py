"""Softmax cross-entropy over a pretext label: the form shared by rotation and shot order.

VIVI §3.1 writes both levels of the hierarchy as a loss on pretext labels: the frame/shot-level
loss on shot-level labels (rotation, VIVI §3.2) and the video-level loss on video-level labels
(shot order, VIVI §3.3: "in (3) is the cross-entropy loss"). Both are a softmax cross-entropy of
a linear or MLP head, averaged over the examples; :class:`PretextClassificationLoss` is that
loss, and :class:`vivi.losses.rotation.RotationLoss` and
:class:`vivi.losses.shot_order.ShotOrderLoss` fix the number of classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PretextClassificationLoss"]


class PretextClassificationLoss(nn.Module):
    """Softmax cross-entropy over ``num_classes`` pretext classes, mean over the rows.

    Definition: loss = mean over rows r of -log softmax(logits_r)[label_r].

    Shapes:
        logits: (R, num_classes).
        labels: (R,) long in 0..num_classes-1.
        returns: scalar loss, ``{"accuracy": ...}`` (fraction of rows whose arg-max is the label,
            detached).
    """

    #: Number of pretext classes; a subclass sets it.
    num_classes: int
    #: What the rows are, for the error message ("4B" rotated images, "N" videos).
    rows: str = "R"

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be ({self.rows}, {self.num_classes}), got {tuple(logits.shape)}")
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}
