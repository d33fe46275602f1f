"""Losses of the video hierarchy: frame/shot level, video level, object level.

=================================  ==================================  =================================
loss                               level                               paper
=================================  ==================================  =================================
:class:`SemiHardTripletLoss`       building block                      VIVI §3.2, app. B; FaceNet mining
:class:`ExemplarLoss`              frame/shot (shot = exemplar set)    VIVI §3.2, app. A and B
:class:`RotationLoss`              frame (+ :func:`rotate_batch`)      VIVI §3.2, app. A and B
:class:`VideoInfoNCELoss`          video (predict later shots)         VIVI §3.3 eq. (4), footnote 2
:class:`ShotOrderLoss`             video (+ reverse_shots_randomly)    VIVI §3.3, app. A
:class:`ObjectLoss`                object (boxes on the feature grid)  Object-centric §3 eq. (2), §5.1
=================================  ==================================  =================================

Every loss takes embeddings or logits and labels and returns ``(loss, diagnostics)``: a
scalar tensor and a dict of detached scalars to log. Heads and predictors live in
:mod:`vivi.models.heads`. docs/losses.md shows one training step with all of them, and
docs/reference.md collects what the papers say about each.
"""

from vivi.losses.exemplar import ExemplarLoss, shot_labels
from vivi.losses.infonce import VideoInfoNCELoss, group_info_nce_logits, info_nce_logits
from vivi.losses.object import (
    OBJECT_ABLATIONS,
    ObjectClassificationLoss,
    ObjectLoss,
    ObjectTripletLoss,
    ablate_objects,
    box_grid_cells,
    extract_box_features,
)
from vivi.losses.rotation import ROTATION_DEGREES, RotationLoss, rotate_batch
from vivi.losses.shot_order import ShotOrderLoss, reverse_shots_randomly
from vivi.losses.triplet import SemiHardTripletLoss, pairwise_squared_distances, semi_hard_triplet_loss

__all__ = [
    "OBJECT_ABLATIONS",
    "ROTATION_DEGREES",
    "ExemplarLoss",
    "ObjectClassificationLoss",
    "ObjectLoss",
    "ObjectTripletLoss",
    "RotationLoss",
    "SemiHardTripletLoss",
    "ShotOrderLoss",
    "VideoInfoNCELoss",
    "ablate_objects",
    "box_grid_cells",
    "extract_box_features",
    "group_info_nce_logits",
    "info_nce_logits",
    "pairwise_squared_distances",
    "reverse_shots_randomly",
    "rotate_batch",
    "semi_hard_triplet_loss",
    "shot_labels",
]
