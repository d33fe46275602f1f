"""Object-level loss: box features from the feature grid, semi-hard triplet over detector classes.

Paper: Object-centric §3 ("Extending the hierarchy with object-level losses", eq. (2);
"Representations of bounding boxes", Fig. 3), §4.1 (feature grid of ResNet block 4, at most 5
objects per frame, the detector's 600 OpenImagesV4 classes) and §5.1 (Ablations 1 and 4,
Table 1). See docs/reference.md, "Object-level triplet".

Pipeline::

    grid = encoder.forward_features(frames)            # (B, C', H', W'), last ResNet block
    boxes, labels = ablate_objects(...)                # only for the ablations
    r = extract_box_features(grid, boxes, (H, W))      # (B, M, C')
    loss, diag = ObjectLoss()(r, labels, valid)        # [+ class logits of ObjectClassHead(r)]

Box convention (vivi's everywhere: the loader, ``vivi.data.boxes``, ``vivi.train.augment``):
``boxes[..., :] = (x0, y0, x1, y1)`` = (xmin, ymin, xmax, ymax), either *normalised* to [0, 1]
by the network input's width and height (default) or in *pixels* of the network input, with
continuous pixel coordinates (pixel column j covers [j, j + 1), so the whole image is
(0, 0, W, H)). Boxes must already follow the crop, flip and resize of the frame
(:class:`vivi.train.augment.FrameAugmentation` returns them so).

Box feature (Object-centric §3: ``r = x'[floor(i H'/H), floor(j W'/W)]`` for the box "with
center index (i, j)", i the row, j the column): the centre pixel is ``i = floor((y0 + y1) / 2)``,
``j = floor((x0 + x1) / 2)`` (in pixels, clamped to 0..H-1 and 0..W-1); the grid cell is
``(i * H') // H, (j * W') // W`` in integer arithmetic, so no rounding of H'/H can move a box to
the neighbouring cell.

Padding: frames have at most 5 boxes (Object-centric §4.1); ``valid`` (B, M) marks the real
ones. Padded boxes may hold any value (NaN included); they never reach a loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vivi.losses.triplet import semi_hard_triplet_loss

__all__ = [
    "OBJECT_ABLATIONS",
    "ObjectClassificationLoss",
    "ObjectLoss",
    "ObjectTripletLoss",
    "ablate_objects",
    "box_grid_cells",
    "extract_box_features",
]


def _valid_rows(
    values: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., D) values and (...) labels flattened to (n, D) and (n,), padded boxes dropped."""
    values = values.reshape(-1, values.shape[-1])
    labels = labels.reshape(-1)
    if valid is None:
        return values, labels
    keep = valid.reshape(-1)
    return values[keep], labels[keep]


def _sanitise(boxes: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return boxes
    return torch.where(valid[..., None], boxes, torch.zeros_like(boxes))


def box_grid_cells(
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    normalized: bool = True,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid cell (row, col) of each box centre (see the module docstring for the rule).

    Args:
        boxes: (..., 4) as (x0, y0, x1, y1).
        image_size: (H, W) of the network input.
        grid_size: (H', W') of the feature grid.
        normalized: boxes in [0, 1] (True) or in pixels (False).
        valid: optional (...) bool; invalid boxes get cell (0, 0).

    Returns:
        ``(rows, cols)``: two long tensors of shape (...).
    """
    h, w = image_size
    gh, gw = grid_size
    boxes = _sanitise(boxes, valid).to(torch.float64)
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    if normalized:
        cy, cx = cy * h, cx * w
    i = cy.floor().clamp(0, h - 1).long()
    j = cx.floor().clamp(0, w - 1).long()
    return (i * gh) // h, (j * gw) // w


def extract_box_features(
    feature_grid: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    normalized: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """The feature-grid column at each box centre (Object-centric §3, Fig. 3).

    Args:
        feature_grid: (B, C', H', W') output of the last ResNet block, before pooling.
        boxes: (B, M, 4) as (x0, y0, x1, y1), normalised or pixels.
        image_size: (H, W) of the input the grid was computed from.
        normalized: see the module docstring.
        valid: optional (B, M) bool mask of real (not padded) boxes.

    Returns:
        (B, M, C') box features; rows of invalid boxes hold the column at cell (0, 0).
    """
    if feature_grid.ndim != 4:
        raise ValueError(f"feature_grid must be (B, C, H', W'), got {tuple(feature_grid.shape)}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != feature_grid.shape[0]:
        raise ValueError(f"boxes must be (B, M, 4), got {tuple(boxes.shape)}")
    b, _, gh, gw = feature_grid.shape
    rows, cols = box_grid_cells(boxes, image_size, (gh, gw), normalized, valid)
    frame = torch.arange(b, device=feature_grid.device)[:, None].expand_as(rows)
    return feature_grid.permute(0, 2, 3, 1)[frame, rows.to(frame.device), cols.to(frame.device)]


#: Names accepted by :func:`ablate_objects` (Object-centric §5.1, Ablation 1; Table 1).
OBJECT_ABLATIONS = ("detector", "random_boxes", "random_boxes_and_labels")


def ablate_objects(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    mode: str = "detector",
    num_classes: int = 600,
    normalized: bool = True,
    image_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace detector boxes and/or labels by random ones (Object-centric §5.1, Ablation 1).

    Modes:
        ``"detector"``: unchanged (the method).
        ``"random_boxes"``: Table 1's "Boxes at random coordinates": each box is moved to a
            centre drawn uniformly over the image (size kept); labels kept.
        ``"random_boxes_and_labels"``: Table 1's "Boxes and labels at random": as above, and
            labels drawn uniformly from ``0..num_classes-1``.

    The paper does not say how a random box is drawn; vivi keeps each box's size and draws its
    centre uniformly, since only the centre decides the box feature (docs/reference.md, "Choices
    the papers leave open").

    Args:
        boxes: (B, M, 4) (x0, y0, x1, y1); labels: (B, M) long.
        normalized: coordinate convention of ``boxes``; pixels need ``image_size`` (H, W).
        generator: optional torch.Generator on the boxes' device.

    Returns:
        ``(boxes, labels)`` with the same shapes; the validity mask is unchanged.
    """
    if mode not in OBJECT_ABLATIONS:
        raise ValueError(f"unknown object ablation {mode!r}; valid: {', '.join(OBJECT_ABLATIONS)}")
    if mode == "detector":
        return boxes, labels
    if normalized:
        scale = boxes.new_tensor([1.0, 1.0])
    elif image_size is None:
        raise ValueError("pixel boxes need image_size to draw random centres")
    else:
        scale = boxes.new_tensor([float(image_size[1]), float(image_size[0])])  # (x, y) = (W, H)
    centre = torch.rand(boxes.shape[:-1] + (2,), generator=generator, device=boxes.device)
    centre = centre.to(boxes.dtype) * scale
    half = (boxes[..., 2:] - boxes[..., :2]).nan_to_num(0.0).abs() / 2
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    if mode == "random_boxes_and_labels":
        labels = torch.randint(
            num_classes, labels.shape, generator=generator, device=labels.device
        ).to(labels.dtype)
    return boxes, labels


class ObjectTripletLoss(nn.Module):
    """Semi-hard triplet loss over the boxes of the batch, with the detector's class as label.

    Paper: Object-centric §3, eq. (2): sum over boxes b of max(||r_b - r_p||^2 - ||r_b - r_n||^2
    + alpha, 0), "objects from the same class form positive pairs, and objects from different
    classes form negative pairs", with semi-hard negative mining (FaceNet).

    Definition: the valid boxes of the (local) batch are pooled, across frames, shots and videos;
    each box feature r is L2-normalised (``normalize=True``), then
    :class:`vivi.losses.triplet.SemiHardTripletLoss` with label = detector class.

    The paper states neither the margin alpha nor a normalisation of r. vivi takes VIVI's margin
    0.5 (VIVI app. B) and L2-normalises the box features as VIVI app. A does for the exemplar
    embeddings: on raw features the loss could be lowered by scaling all features up, which says
    nothing about classes (docs/reference.md, "Choices the papers leave open").
    ``normalize=False`` uses the raw grid columns.

    Args:
        margin: triplet margin alpha.
        normalize: L2-normalise the box features first.

    Shapes:
        box_features: (B, M, C') or (n, C').
        labels: the same leading shape, long.
        valid: the same leading shape, bool (optional; all boxes when omitted).
        returns: scalar loss (an exact 0 with a graph when no box is valid), dict of detached
            diagnostics (see :func:`vivi.losses.triplet.semi_hard_triplet_loss`).
    """

    def __init__(self, margin: float = 0.5, normalize: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.normalize = normalize

    def forward(
        self, box_features: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feats, labels = _valid_rows(box_features, labels, valid)
        if self.normalize:
            feats = F.normalize(feats, dim=-1)
        if feats.shape[0] == 0:
            return box_features.sum() * 0.0, {"num_positive_pairs": box_features.new_zeros(())}
        return semi_hard_triplet_loss(feats, labels, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, normalize={self.normalize}"


class ObjectClassificationLoss(nn.Module):
    """Binary cross-entropy of the linear box classifier (Object-centric §5.1, Ablation 4).

    Paper: "we use a linear classifier to classify the bounding box representations r_b as one of
    600 OPENIMAGESV4 classes using a binary cross-entropy loss".

    Definition: target t = one-hot of the detector class; per box, the sigmoid cross-entropy
    -sum over classes c of [t_c log sigma(z_c) + (1 - t_c) log(1 - sigma(z_c))]; loss = the mean
    of that over the valid boxes.

    The paper does not say how the BCE is reduced. vivi sums over the classes and averages over
    the boxes: a mean over the 600 classes as well would shrink the term 600-fold next to the
    triplet term it is added to (docs/reference.md, "Choices the papers leave open").

    Shapes:
        logits: (B, M, num_classes) or (n, num_classes).
        labels: the leading shape, long.
        valid: the leading shape, bool (optional).
        returns: scalar loss, ``{"accuracy": ...}`` (arg-max equals the label, over valid boxes).
    """

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        num_classes = logits.shape[-1]
        logits, labels = _valid_rows(logits, labels, valid)
        targets = F.one_hot(labels.long(), num_classes).to(logits.dtype)
        per_box = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
        loss = per_box.sum() / max(per_box.shape[0], 1)
        with torch.no_grad():
            if labels.numel():
                accuracy = (logits.argmax(dim=1) == labels).float().mean()
            else:
                accuracy = logits.new_zeros(())
        return loss, {"accuracy": accuracy}


class ObjectLoss(nn.Module):
    """The object-level loss, with the paper's variants chosen by name.

    Paper: Object-centric §3 (eq. (2), the method) and §5.1, Ablation 4 (the linear classifier
    added to, or replacing, the triplet loss; Table 1).

    ``terms``:
        ``("triplet",)``: the method, :class:`ObjectTripletLoss` (default);
        ``("triplet", "classification")``: Ablation 4, the 600-way BCE head added
            (Table 1: "Also predict cross entropy");
        ``("classification",)``: the BCE head replacing the triplet loss.
    The class logits come from :class:`vivi.models.heads.ObjectClassHead` applied to the
    (un-normalised) box features. Random boxes / labels (Ablation 1) are :func:`ablate_objects`,
    applied before :func:`extract_box_features`.

    Definition: loss = [triplet] + classification_weight * [classification], the terms present.

    Args:
        terms: subset of ``("triplet", "classification")``.
        margin, normalize: see :class:`ObjectTripletLoss`.
        classification_weight: weight of the BCE term.

    Shapes:
        box_features (B, M, C'), labels (B, M), valid (B, M), class_logits (B, M, classes)
        -> scalar loss, dict with the ``triplet``/``classification`` term values and their
        diagnostics prefixed by the term name.
    """

    TERMS = ("triplet", "classification")

    def __init__(
        self,
        terms: tuple[str, ...] = ("triplet",),
        margin: float = 0.5,
        normalize: bool = True,
        classification_weight: float = 1.0,
    ) -> None:
        super().__init__()
        unknown = [t for t in terms if t not in self.TERMS]
        if unknown or not terms:
            raise ValueError(f"unknown object loss terms {unknown}; valid: {', '.join(self.TERMS)}")
        self.terms = tuple(terms)
        self.classification_weight = classification_weight
        self.triplet = ObjectTripletLoss(margin, normalize)
        self.classification = ObjectClassificationLoss()

    def forward(
        self,
        box_features: torch.Tensor,
        labels: torch.Tensor,
        valid: torch.Tensor | None = None,
        class_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = box_features.new_zeros(())
        diagnostics: dict[str, torch.Tensor] = {}
        if "triplet" in self.terms:
            loss, diag = self.triplet(box_features, labels, valid)
            total = total + loss
            diagnostics["triplet"] = loss.detach()
            diagnostics.update({f"triplet/{k}": v for k, v in diag.items()})
        if "classification" in self.terms:
            if class_logits is None:
                raise ValueError("the classification term needs class_logits (ObjectClassHead)")
            loss, diag = self.classification(class_logits, labels, valid)
            total = total + self.classification_weight * loss
            diagnostics["classification"] = loss.detach()
            diagnostics.update({f"classification/{k}": v for k, v in diag.items()})
        return total, diagnostics
