"""Frame augmentation: inception crop + flip, colour distortion, boxes; batched on the device.

VIVI §4 and app. A ("the augmentation mechanism from [55]", the inception preprocessing of
GoogLeNet, Szegedy et al. 2015; AutoAugment in its place; S4L's HSV randomisation for
co-training), Object-centric §4.1 ("random cropping, left-right flipping and color distortions.
The coordinates of object bounding boxes are recalculated accordingly"); docs/reference.md,
"Augmentation". Every frame is augmented independently: each image of the batch draws its own
crop, flip and colour parameters (the exemplar loss needs that: the frames of a shot are its
exemplars).

Where it runs. In training the loader's workers take each frame's crop from the whole frame at
its aspect ratio and resize it to S x S (:func:`vivi.data.images.take_crops`, which draws the
rectangles with :func:`sample_crops` below), so frames of any aspect ratio batch; the training
step then runs this module with ``crop="resize"`` at S, which only flips (exactly, without
resampling) and distorts colour. Given whole frames, the module crops them itself:

    crop (x0, y0, w, h) + flip  ->  ONE bilinear grid_sample to S x S  ->  colour  ->  clamp [0, 1]

Geometry. ``crop="inception"`` follows torchvision's ``RandomResizedCrop`` sampling (itself
modelled on TF's ``sample_distorted_bounding_box`` as used by inception preprocessing): area
fraction uniform in ``area`` (8-100 % of the frame, GoogLeNet's range), aspect ratio w/h
log-uniform in ``aspect``, w and h rounded to whole pixels, top-left corner uniform over the
integer positions where the crop fits. ``attempts`` candidates are drawn per image at once; the
first that fits the frame is taken. **Fallback** (no candidate fits, e.g. a 5 % crop of a very
wide frame): torchvision's, a centred crop of the whole frame whose aspect ratio is clamped into
``aspect`` (the whole frame when its own ratio is inside). ``crop="center"`` takes the largest
centred square, ``crop="resize"`` the whole frame (aspect ratio ignored, as VTAB's evaluation
preprocessing). The crop and the flip are folded into one affine sampling grid, so the frame is
resampled once (bilinear, ``align_corners=False``, no antialiasing: TF's ``resize_images``
default, which the papers used). The output is square, so
:func:`vivi.losses.rotation.rotate_batch` applies to it: the rotation loss appends its rotated
copies *after* this module, and all four copies share crop and colour (docs/reference.md, "Rotation").

Colour (``color=``): ``"distort"`` is inception preprocessing's ``distort_color(fast_mode=True)``:
brightness delta uniform in ±``brightness`` and HSV saturation factor uniform in ``saturation``.
Its order (``color_order``): ``"fixed"``, brightness then saturation for every image, is TF-slim's
``preprocess_for_train`` in its default fast mode (``num_distort_cases = 1 if fast_mode else 4``,
also in S4L's copy of it), the papers' mechanism; ``"random"`` draws one of the two orders per
image. ``"distort_strong"`` is its ``fast_mode=False``: adds hue (delta in turns, ±``hue``) and
contrast (factor around the per-channel spatial mean), in one of TF's four fixed orders (not all
24 permutations) drawn per image with ``"random"`` (TF's full mode, the ``inception_strong``
preset), the first of them with ``"fixed"``. As in TF, intermediate values are not clamped; the
result is clamped to [0, 1] once at the end. ``"autoaugment"`` replaces the
colour distortion by kornia's ImageNet AutoAugment policy, one sub-policy drawn *per image* (TF's
behaviour; kornia's own module draws one per batch). ``"linear"`` (vivi's, not the papers'; the
synthetic world's preset) draws the four parameters of ``"distort_strong"`` and applies them as
one affine map per image (see :func:`linear_color`): cheap, and the order does not matter.
``hsv_noise=True`` adds S4L's HSV-space randomisation after the colour distortion (see
:func:`hsv_noise`); VIVI uses it for co-trained models, read here as the labelled-image branch
(docs/augment.md and docs/reference.md, "Choices the papers leave open", discuss the reading).

Boxes (B, M, 4) are normalised (x0, y0, x1, y1) in the input frame, vivi's convention. They are
mapped into the crop (normalised in the S x S output), mirrored in x when flipped and clipped to
[0, 1]; a box whose centre (before clipping) falls outside the crop, ``0 <= c < 1`` as in
:mod:`vivi.data.boxes`, is marked invalid. Invalid boxes are returned as zeros.

Randomness. All parameters are drawn in a fixed order (crop, flip, colour, HSV, AutoAugment) from
one ``torch.Generator``: pass ``generator=`` (its state advances) or ``seed=`` (a fresh generator
on the images' device). The same generator state and batch shape give the same output, so a
resumed run reproduces its augmentation when the trainer derives the seed from (run seed, step,
rank). The draws do not depend on ``color``/``hsv_noise``, so switching the colour mode keeps the
crops of a seed. A generator on another device than the images (e.g. a CPU generator for CUDA
images) is allowed: parameters are drawn there and moved. CPU and CUDA generators give different
streams. Without either, the device's global RNG is used. AutoAugment runs kornia's operations
under ``torch.random.fork_rng`` seeded from the generator, so it is deterministic too and leaves
the global RNG untouched.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vivi.registry import from_registry

__all__ = ["AUGMENTATIONS", "COLORS", "COLOR_ORDERS", "CROPS", "AugmentConfig", "AugmentParams", "FrameAugmentation",
           "adjust_brightness", "adjust_contrast", "adjust_hue", "adjust_saturation", "augment_config",
           "build_augmentation", "hsv_noise", "linear_color", "sample_crops", "transform_boxes"]

CROPS = ("inception", "center", "resize")
COLORS = ("none", "distort", "distort_strong", "linear", "autoaugment")
COLOR_ORDERS = ("fixed", "random")


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 224                       # S: output frames are S x S (square, so rotate_batch applies);
                                          # the papers' 224, 32-64 for CPU presets
    crop: str = "inception"               # "inception" (random, training), "center" (largest centred square)
                                          # or "resize" (whole frame, aspect ignored: VTAB evaluation)
    area: tuple[float, float] = (0.08, 1.0)       # inception crop: fraction of the frame area, uniform; 8-100 %
                                                  # as GoogLeNet states, whose augmentation VIVI §4 cites (TF-slim
                                                  # draws 5-100 % with >= 10 % covered; docs/reference.md,
                                                  # "Augmentation")
    aspect: tuple[float, float] = (3 / 4, 4 / 3)  # inception crop: width/height, log-uniform (GoogLeNet's range)
    attempts: int = 10                    # inception crop: candidates per frame before the fallback
                                          # (torchvision's 10; TF's 100 changes the fallback rate only)
    flip: bool = True                     # random left-right flip with probability 1/2 (the papers' flip)
    color: str = "distort"                # "none", "distort" (brightness + saturation, see color_order),
                                          # "distort_strong" (+ hue, contrast), "linear" (the same four as
                                          # one affine colour map) or "autoaugment" (ImageNet policy)
    brightness: float = 32 / 255          # distort: delta added to every channel, uniform in [-b, b]; this and
                                          # the three below are TF's distort_color values (docs/reference.md,
                                          # "Augmentation")
    saturation: tuple[float, float] = (0.5, 1.5)  # distort: HSV saturation factor range
    color_order: str = "fixed"            # distort, distort_strong: "fixed" = TF's ordering 0 for every image
                                          # (brightness then saturation: the fast mode as TF-slim's
                                          # preprocess_for_train runs it), "random" = one of the mode's
                                          # orders per image (TF's full mode draws one of four)
    hue: float = 0.2                      # distort_strong, linear: hue delta in turns, uniform in [-h, h]
    contrast: tuple[float, float] = (0.5, 1.5)    # distort_strong, linear: contrast factor range
    hsv_noise: bool = False               # S4L's HSV randomisation after the colour (VIVI co-training images)

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; valid: {', '.join(CROPS)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color mode {self.color!r}; valid: {', '.join(COLORS)}")
        if self.color_order not in COLOR_ORDERS:
            raise ValueError(f"unknown color order {self.color_order!r}; valid: {', '.join(COLOR_ORDERS)}")
        if self.size < 1 or self.attempts < 1:
            raise ValueError(f"size and attempts must be positive, got {self.size}, {self.attempts}")
        if not (0 < self.area[0] <= self.area[1] <= 1):
            raise ValueError(f"area must satisfy 0 < min <= max <= 1, got {self.area}")
        if not (0 < self.aspect[0] <= self.aspect[1]):
            raise ValueError(f"aspect must satisfy 0 < min <= max, got {self.aspect}")


# Named configurations (big_vision style: chosen by name, an unknown name lists the valid ones).
AUGMENTATIONS: dict[str, AugmentConfig] = {
    "inception": AugmentConfig(),                                   # VIVI / object-centric training frames
    "inception_strong": AugmentConfig(color="distort_strong", color_order="random"),  # TF's full mode
    "autoaugment": AugmentConfig(color="autoaugment"),              # VIVI Table 2: AA in place of the colour
    "cotrain_images": AugmentConfig(hsv_noise=True),                # co-training's labelled images (VIVI §4)
    "eval": AugmentConfig(crop="resize", flip=False, color="none"),  # evaluation: plain resize to S x S
    # the synthetic world at 64 px: palettes are drawn per theme/shot and never tell a task's label, so
    # colour must not identify a shot/video -- full hue wheel, wide saturation/contrast; crops keep
    # >= 20 % of the frame so the small objects survive (docs/design-notes.md); the affine "linear" colour
    # map, much cheaper than the HSV round trips of "distort_strong" against a tiny encoder
    "synth": AugmentConfig(area=(0.2, 1.0), color="linear", hue=0.5, saturation=(0.2, 1.8),
                           contrast=(0.4, 1.6), brightness=64 / 255),
}


def augment_config(name: str, **overrides) -> AugmentConfig:
    """The configuration named ``name`` in :data:`AUGMENTATIONS` with fields replaced by ``overrides``."""
    return from_registry(AUGMENTATIONS, name, "augmentation", **overrides)


@dataclass
class AugmentParams:
    """The random draws of one batch (all on the images' device)."""
    crop: torch.Tensor      # (B, 4) float32: x0, y0, w, h of the crop in input pixels (whole pixels)
    flip: torch.Tensor      # (B,) bool: mirror left-right
    color: torch.Tensor     # (B, 5) float32: order uniform, brightness delta, saturation, hue delta, contrast
    hsv: torch.Tensor       # (B, 7) float32: hue delta, S/V powers, S/V multipliers, S/V offsets (S4L)
    policy: torch.Tensor | None = None  # (B,) long: AutoAugment sub-policy per image
    policy_seed: int | None = None      # seed of kornia's RNG while AutoAugment runs


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def _uniform(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniforms in [0, 1) from ``generator`` (on its own device), moved to ``device``."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def sample_crops(batch: int, height: int, width: int, config: AugmentConfig,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Crop rectangles (B, 4) = (x0, y0, w, h) in whole input pixels, float32 (see module docstring).

    ``crop="inception"``: torchvision ``RandomResizedCrop`` semantics, vectorised over the batch
    and the ``attempts`` candidates (first fitting candidate, else the clamped centred fallback).
    Draws ``(B, attempts, 2)`` then ``(B, 2)`` uniforms for every crop mode, so the random stream
    does not depend on the mode.
    """
    device = torch.device(device)
    u = _uniform((batch, config.attempts, 2), generator, device)
    u_pos = _uniform((batch, 2), generator, device)
    H, W = float(height), float(width)
    if config.crop == "resize":
        return torch.tensor([0.0, 0.0, W, H], device=device).expand(batch, 4).clone()
    if config.crop == "center":
        side = float(min(height, width))
        x0, y0 = float((width - min(height, width)) // 2), float((height - min(height, width)) // 2)
        return torch.tensor([x0, y0, side, side], device=device).expand(batch, 4).clone()

    area = H * W * (config.area[0] + (config.area[1] - config.area[0]) * u[..., 0])
    lo, hi = math.log(config.aspect[0]), math.log(config.aspect[1])
    ratio = torch.exp(lo + (hi - lo) * u[..., 1])
    w = torch.round(torch.sqrt(area * ratio))
    h = torch.round(torch.sqrt(area / ratio))
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)                          # (B, attempts)
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)           # first fitting candidate
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # Fallback: centred crop of the whole frame with its aspect ratio clamped into range.
    in_ratio = W / H
    if in_ratio < config.aspect[0]:
        fw, fh = W, float(round(W / config.aspect[0]))
    elif in_ratio > config.aspect[1]:
        fw, fh = float(round(H * config.aspect[1])), H
    else:
        fw, fh = W, H
    found = fits.any(dim=1)
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    x0 = torch.where(found, torch.floor(u_pos[:, 0] * (W - w + 1)), torch.floor((W - w) / 2))
    y0 = torch.where(found, torch.floor(u_pos[:, 1] * (H - h + 1)), torch.floor((H - h) / 2))
    return torch.stack([x0, y0, w, h], dim=1)


def _crop_resize_flip(images: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """One bilinear ``grid_sample`` that crops, flips and resizes every image to size x size.

    Output pixel edges -1..1 (``align_corners=False``) map to the crop's pixel edges x0..x0+w, so
    a box follows the same affine map (:func:`transform_boxes`).
    """
    b, c, H, W = images.shape
    x0, y0, w, h = (t[:, None] for t in crop.unbind(1))
    u = (torch.arange(size, device=images.device, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres
    gx = torch.where(flip[:, None], -u, u) * (w / W) + (2 * x0 + w) / W - 1    # (B, S): the separable
    gy = u * (h / H) + (2 * y0 + h) / H - 1                                    # affine_grid of the crop
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def transform_boxes(boxes: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, height: int, width: int,
                    valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Map normalised (x0, y0, x1, y1) boxes (B, M, 4) of an H x W input into the crops.

    Returns ``(boxes, valid)``: boxes normalised in the output (= the crop), mirrored in x where
    ``flip``, clipped to [0, 1], zero where invalid; valid (B, M) = ``valid`` (if given) and the
    box centre inside the crop (``0 <= c < 1`` before clipping).
    """
    x0, y0, w, h = (t[:, None] for t in crop.unbind(1))
    boxes = boxes.to(torch.float32)
    bx0 = (boxes[..., 0] * width - x0) / w
    bx1 = (boxes[..., 2] * width - x0) / w
    by0 = (boxes[..., 1] * height - y0) / h
    by1 = (boxes[..., 3] * height - y0) / h
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    inside = (cx >= 0) & (cx < 1) & (cy >= 0) & (cy < 1)      # False for NaN padding too
    valid = inside if valid is None else inside & valid.to(torch.bool)
    f = flip[:, None]
    bx0, bx1 = torch.where(f, 1 - bx1, bx0), torch.where(f, 1 - bx0, bx1)
    out = torch.stack([bx0, by0, bx1, by1], dim=-1).clamp(0, 1)
    return torch.where(valid[..., None], out, torch.zeros_like(out)), valid


# --------------------------------------------------------------------------------------
# Colour: TF's float semantics (tf.image.adjust_*), per-image factors of shape (B,)
# --------------------------------------------------------------------------------------


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.reshape(-1, 1, 1, 1)


def adjust_brightness(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + delta`` (TF ``adjust_brightness``; no clamping)."""
    return images + _per_image(delta)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """HSV saturation ``S -> min(S * factor, 1)``, hue and value kept (TF ``adjust_saturation``).

    Without an HSV round trip: with V = max and m = min over the channels, every channel is
    ``V - S V g(H)``, so scaling S is ``c -> V - f (V - c)`` with f = min(factor, V / (V - m)).
    Pixels with V <= 0 are left unchanged (TF maps them to grey V; both clamp to 0).
    """
    v = images.amax(dim=1, keepdim=True)
    f = torch.minimum(_per_image(factor), v / (v - images.amin(dim=1, keepdim=True)))
    f = f.masked_fill_(v <= 0, 1.0)
    return torch.addcmul(v, f, v - images, value=-1.0)


def adjust_hue(images: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``delta`` turns, saturation and value kept (TF ``adjust_hue``).

    Hue in sixths from the max channel, then the closed-form HSV -> RGB
    ``c_n = V - C clamp(min(k, 4 - k), 0, 1)``, ``k = (n + h) mod 6``, n = 5, 3, 1 for R, G, B.
    """
    h, v, chroma = _rgb_to_hue(images)
    return _hsv_to_rgb(torch.remainder(h + 6 * _per_image(delta), 6), v, chroma)


def _rgb_to_hue(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue in sixths [0, 6) (0 for grey), value V = max and chroma C = max - min, each (B, 1, H, W)."""
    r, g, b = images.split(1, dim=1)
    v = images.amax(dim=1, keepdim=True)
    chroma = v - images.amin(dim=1, keepdim=True)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return torch.remainder(h, 6), v, chroma


def _hsv_to_rgb(h: torch.Tensor, v: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """RGB from hue in sixths, value and chroma (= V S): ``c_n = V - C clamp(min(k, 4 - k), 0, 1)``."""
    k = torch.remainder(h + h.new_tensor([5.0, 3.0, 1.0]).reshape(1, 3, 1, 1), 6)
    return v - chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``(x - mean) * factor + mean``, mean per image and channel over space (TF ``adjust_contrast``)."""
    mean = images.mean(dim=(2, 3), keepdim=True)
    return (images - mean) * _per_image(factor) + mean


# inception_preprocessing.distort_color: fast_mode orders, then the four orders of the full mode.
_COLOR_OPS = {"brightness": (adjust_brightness, 1), "saturation": (adjust_saturation, 2),
              "hue": (adjust_hue, 3), "contrast": (adjust_contrast, 4)}   # op, column of AugmentParams.color
_ORDERS = {
    "distort": (("brightness", "saturation"), ("saturation", "brightness")),
    "distort_strong": (("brightness", "saturation", "hue", "contrast"),
                       ("saturation", "brightness", "contrast", "hue"),
                       ("contrast", "hue", "brightness", "saturation"),
                       ("hue", "saturation", "contrast", "brightness")),
}


def _distort_color(images: torch.Tensor, params: torch.Tensor, mode: str, order: str = "random") -> torch.Tensor:
    """Colour distortion, every image in TF's ordering 0 (``order="fixed"``) or in one of the
    mode's orders drawn per image (``"random"``).

    ``"distort"``: brightness, saturation, brightness, with the delta zeroed in the place the
    image's order does not use (adding 0 is exact), so one saturation pass serves both orders.
    ``"distort_strong"``: the batch is split by order (four index groups), each group in its order.
    """
    orders = _ORDERS[mode]
    if order == "fixed":
        x = images
        for name in orders[0]:
            op, column = _COLOR_OPS[name]
            x = op(x, params[:, column])
        return x.clamp_(0, 1)
    choice = torch.floor(params[:, 0] * len(orders)).long().clamp_(max=len(orders) - 1)
    if mode == "distort":
        brightness_first = choice == 0
        delta = params[:, 1]
        x = adjust_brightness(images, torch.where(brightness_first, delta, torch.zeros_like(delta)))
        x = adjust_saturation(x, params[:, 2])
        x = adjust_brightness(x, torch.where(brightness_first, torch.zeros_like(delta), delta))
        return x.clamp_(0, 1)
    out = torch.empty_like(images)
    for k, order in enumerate(orders):
        idx = torch.nonzero(choice == k).squeeze(1)
        x, p = images[idx], params[idx]
        for name in order:
            op, column = _COLOR_OPS[name]
            x = op(x, p[:, column])
        out[idx] = x
    return out.clamp_(0, 1)


def linear_color(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness, saturation, hue and contrast as one affine colour map per image (``"linear"``).

    ``params`` are :class:`AugmentParams`'s colour columns (order, brightness delta, saturation
    factor, hue delta in turns, contrast factor). Hue turns the RGB cube about its grey axis
    n = (1, 1, 1)/sqrt(3) by 2 pi delta (Rodrigues: ``R = cos I + sin [n]x + (1 - cos) n n^T``; a
    third of a turn maps R -> G -> B exactly); saturation moves every pixel towards its grey
    ``(r + g + b)/3`` by ``S = s I + (1 - s) n n^T``; contrast scales around the per-channel spatial
    mean as TF's ``adjust_contrast``; brightness adds a delta to every channel. All four commute
    (each fixes the grey axis and is a polynomial in the same rotation), so with no clamping in
    between the order is immaterial and the whole distortion is
    ``L (c x + (1 - c) mean(x)) + delta`` with ``L = R S``, clamped to [0, 1] once.
    """
    B = images.shape[0]
    turn = 2 * math.pi * params[:, 3]
    cos, sin = torch.cos(turn).reshape(B, 1, 1), torch.sin(turn).reshape(B, 1, 1)
    eye = torch.eye(3, dtype=images.dtype, device=images.device)
    grey = torch.full((3, 3), 1 / 3, dtype=images.dtype, device=images.device)     # n n^T
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]],
                         dtype=images.dtype, device=images.device) / math.sqrt(3)   # [n]x
    rotate = cos * eye + sin * cross + (1 - cos) * grey
    saturate = _per_image(params[:, 2]).squeeze(-1) * (eye - grey) + grey
    contrast = _per_image(params[:, 4])
    x = torch.lerp(images.mean(dim=(2, 3), keepdim=True), images, contrast)
    out = torch.bmm(rotate @ saturate, x.flatten(2)).view_as(images)
    return out.add_(_per_image(params[:, 1])).clamp_(0, 1)


def hsv_noise(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """S4L's HSV randomisation (google-research/s4l ``preprocess.get_hsvnoise_preprocess``).

    Per image: ``H <- (H + dh) mod 1`` with dh uniform in ±0.1 turns; for S and V independently
    ``x <- x ** 2**p * 2**q + a`` with p in [-2, 2], q in [-0.5, 0.5], a in [-0.1, 0.1]; then HSV
    clipped to [0, 1] and converted back. ``params`` (B, 7) holds those values (see
    :meth:`FrameAugmentation.sample`). Input and output in [0, 1]. Closed-form HSV conversions
    (as :func:`adjust_hue`); tests compare with kornia's ``rgb_to_hsv``/``hsv_to_rgb``.
    """
    h, v, chroma = _rgb_to_hue(images.clamp(0, 1))
    s = torch.where(v > 0, chroma / v, torch.zeros_like(v))
    h = torch.remainder(h + 6 * _per_image(params[:, 0]), 6)
    power, scale, shift = (params[:, i:i + 2, None, None] for i in (1, 3, 5))
    sv = torch.cat([s, v], dim=1) ** power * scale + shift
    s, v = sv.clamp_(0, 1).split(1, dim=1)
    return _hsv_to_rgb(h, v, v * s)


# --------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------


class FrameAugmentation(nn.Module):
    """Batched augmentation of frames (and their boxes) on the device; see the module docstring.

    ``forward(images, boxes=None, valid=None, *, generator=None, seed=None)``:

    * images: (..., 3, H, W) float in [0, 1] (uint8 is accepted and divided by 255), any leading
      shape, e.g. the loader's (N, K, F); computed in float32.
    * boxes: optional (..., M, 4) normalised (x0, y0, x1, y1) in the input frame, same leading shape;
      valid: optional (..., M) bool of real boxes (pass ``box_labels >= 0``).
    * returns ``(images (..., 3, S, S) float32 in [0, 1], boxes (..., M, 4) or None, valid (..., M)
      or None)``. Set the labels of invalid boxes to -1: ``labels.masked_fill(~valid, -1)``.
    """

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        super().__init__()
        self.config = config
        self._policies = None
        if config.color == "autoaugment":
            from kornia.augmentation.auto import AutoAugment  # optional path: import only when used
            self._policies = nn.ModuleList(AutoAugment("imagenet").children())

    def extra_repr(self) -> str:
        return repr(self.config)

    def sample(self, batch: int, height: int, width: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> AugmentParams:
        """Draw the parameters of a batch, in a fixed order whatever the colour mode."""
        device = torch.device(device)
        crop = sample_crops(batch, height, width, self.config, generator, device)
        u = _uniform((batch, 13), generator, device)
        flip = (u[:, 0] < 0.5) if self.config.flip else torch.zeros(batch, dtype=torch.bool, device=device)
        c = self.config

        def between(x, lo, hi):
            return lo + (hi - lo) * x

        color = torch.stack([u[:, 1], between(u[:, 2], -c.brightness, c.brightness),
                             between(u[:, 3], *c.saturation), between(u[:, 4], -c.hue, c.hue),
                             between(u[:, 5], *c.contrast)], dim=1)
        hsv = torch.stack([between(u[:, 6], -0.1, 0.1),
                           2 ** between(u[:, 7], -2.0, 2.0), 2 ** between(u[:, 8], -2.0, 2.0),
                           2 ** between(u[:, 9], -0.5, 0.5), 2 ** between(u[:, 10], -0.5, 0.5),
                           between(u[:, 11], -0.1, 0.1), between(u[:, 12], -0.1, 0.1)], dim=1)
        params = AugmentParams(crop=crop, flip=flip, color=color, hsv=hsv)
        if self._policies is not None:
            n = len(self._policies)
            params.policy = torch.floor(_uniform((batch,), generator, device) * n).long().clamp_(max=n - 1)
            if generator is None:
                seed = torch.randint(2**62, (1,), device=device)
            else:
                seed = torch.randint(2**62, (1,), generator=generator, device=generator.device)
            params.policy_seed = int(seed.item())                    # one sync per batch, AutoAugment only
        return params

    def apply(self, images: torch.Tensor, params: AugmentParams, boxes: torch.Tensor | None = None,
              valid: torch.Tensor | None = None, *, scale: float = 1.0):
        """Augment a (B, 3, H, W) float32 batch with drawn ``params``; see :meth:`forward`.

        ``scale`` multiplies the images after resampling (:meth:`forward` passes 1/255 for uint8
        frames): bilinear resampling is linear, so scaling its smaller output is the same as
        scaling the input first, up to float rounding, and costs a fraction of it.
        """
        c = self.config
        if boxes is not None and c.color == "autoaugment":
            raise ValueError("boxes cannot follow AutoAugment's rotate/shear operations; use color='distort' "
                             "(the object-centric paper's augmentation) when training with boxes")
        H, W = images.shape[-2:]
        if c.crop == "resize" and (H, W) == (c.size, c.size):
            # frames the loader has cropped already: flipping is exact without resampling
            out = images * scale if scale != 1.0 else images
            if c.flip:
                out = torch.where(params.flip[:, None, None, None], out.flip(-1), out)
        else:
            out = _crop_resize_flip(images, params.crop, params.flip, c.size)
            if scale != 1.0:
                out.mul_(scale)
        if c.color in _ORDERS:
            out = _distort_color(out, params.color, c.color, c.color_order)
        elif c.color == "linear":
            out = linear_color(out, params.color)
        elif c.color == "autoaugment":
            out = self._autoaugment(out, params)
        if c.hsv_noise:
            out = hsv_noise(out, params.hsv)
        if boxes is None:
            return out, None, None
        boxes, valid = transform_boxes(boxes, params.crop, params.flip, H, W, valid)
        return out, boxes, valid

    def _autoaugment(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        devices = [images.device.index if images.device.index is not None else torch.cuda.current_device()] \
            if images.device.type == "cuda" else []
        out = images.clone()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(params.policy_seed)
            for k, policy in enumerate(self._policies):
                idx = torch.nonzero(params.policy == k).squeeze(1)
                if idx.numel():
                    out[idx] = policy(images[idx])
        return out.clamp_(0, 1)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None, valid: torch.Tensor | None = None,
                *, generator: torch.Generator | None = None, seed: int | None = None):
        if images.ndim < 4 or images.shape[-3] != 3:
            raise ValueError(f"images must be (..., 3, H, W), got {tuple(images.shape)}")
        if generator is not None and seed is not None:
            raise ValueError("pass either a generator or a seed, not both")
        if seed is not None:
            generator = torch.Generator(device=images.device).manual_seed(seed)
        lead, (H, W) = images.shape[:-3], images.shape[-2:]
        x = images.reshape(-1, 3, H, W)
        scale = 1 / 255 if x.dtype == torch.uint8 else 1.0
        x = x.float()
        if boxes is not None:
            if boxes.shape[:-2] != lead or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (..., M, 4) with the images' leading shape {tuple(lead)}, "
                                 f"got {tuple(boxes.shape)}")
            m = boxes.shape[-2]
            boxes = boxes.reshape(-1, m, 4)
            valid = None if valid is None else valid.reshape(-1, m)
        params = self.sample(x.shape[0], H, W, x.device, generator)
        out, boxes, valid = self.apply(x, params, boxes, valid, scale=scale)
        out = out.reshape(*lead, 3, out.shape[-2], out.shape[-1])
        if boxes is not None:
            boxes, valid = boxes.reshape(*lead, -1, 4), valid.reshape(*lead, -1)
        return out, boxes, valid


def build_augmentation(config: AugmentConfig | str = "inception", **overrides) -> FrameAugmentation:
    """The augmentation module for a config or the name of one in :data:`AUGMENTATIONS`."""
    if isinstance(config, str):
        config = augment_config(config, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return FrameAugmentation(config)
