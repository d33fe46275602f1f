"""Shot-order prediction (video level): was the sequence of shot embeddings reversed?

VIVI §3.3 ("we randomly reverse the order of the shot embeddings and train a prediction
function to predict the shot order from concatenated shot embeddings ... the cross-entropy
loss and y is 1 if the sequence of shot embeddings is reversed and 0 otherwise") and
appendix A (used with 2 shots, MLP with 512 hidden units); SPEC §1.

Pipeline: shot embeddings (N, 2, 512) -> :func:`reverse_shots_randomly` ->
:class:`vivi.models.heads.ShotOrderHead` -> :class:`ShotOrderLoss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShotOrderLoss", "reverse_shots_randomly"]


def reverse_shots_randomly(
    shots: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse the shot order of each video independently with probability ``p``.

    Args:
        shots: (N, K, D) shot embeddings in temporal order.
        generator: optional torch.Generator on ``shots.device`` for reproducibility.
        p: reversal probability (0.5: balanced classes).

    Returns:
        ``(shots_out, labels)``: shots_out (N, K, D), ``shots_out[i] = shots[i].flip(0)``
        where labels[i] == 1 (reversed) and ``shots[i]`` where labels[i] == 0 (forward).
    """
    n = shots.shape[0]
    labels = (torch.rand(n, generator=generator, device=shots.device) < p).long()
    out = torch.where(labels[:, None, None].bool(), shots.flip(1), shots)
    return out, labels


class ShotOrderLoss(nn.Module):
    """Two-way softmax cross-entropy, forward (0) vs reversed (1). Mean over videos.

    Shapes:
        logits: (N, 2) from :class:`vivi.models.heads.ShotOrderHead`.
        labels: (N,) long from :func:`reverse_shots_randomly`.
        returns: scalar loss, ``{"accuracy": ...}`` (detached).
    """

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if logits.ndim != 2 or logits.shape[1] != 2:
            raise ValueError(f"logits must be (N, 2), got {tuple(logits.shape)}")
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy}
