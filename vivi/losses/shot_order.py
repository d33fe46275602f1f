"""Shot-order prediction (video level of the hierarchy): was the sequence of shot embeddings reversed?

VIVI §3.3: "we randomly reverse the order of the shot embeddings and train a prediction function
to predict the shot order from concatenated shot embeddings, i.e., [the loss] in (3) is the
cross-entropy loss and [the label] is 1 if the sequence of shot embeddings is reversed and 0
otherwise". VIVI §4 and app. A: only with exemplar SSL and 2 shots per video, with "a
single-hidden-layer MLP with 512 hidden units as prediction function". See docs/reference.md,
"Shot order".

Pipeline: shot embeddings (N, 2, 512) -> :func:`reverse_shots_randomly` ->
:class:`vivi.models.heads.ShotOrderHead` -> :class:`ShotOrderLoss`.
"""

from __future__ import annotations

import torch

from vivi.losses.classification import PretextClassificationLoss

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


class ShotOrderLoss(PretextClassificationLoss):
    """Two-way softmax cross-entropy, forward (0) vs reversed (1), mean over videos.

    Paper: VIVI §3.3 (eq. (3) with the cross-entropy loss), VIVI app. A (the MLP head).

    Definition: loss = mean over videos i of -log softmax(head(shots_i))[y_i], y_i = 1 if the
    shots of video i were reversed.

    Shapes:
        logits: (N, 2) from :class:`vivi.models.heads.ShotOrderHead`.
        labels: (N,) long from :func:`reverse_shots_randomly`.
        returns: scalar loss, ``{"accuracy": ...}`` (detached).
    """

    num_classes = 2
    rows = "N"
