"""Frame augmentation: crop statistics, flips, boxes checked by drawing, colour bounds, determinism."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vivi.losses import rotate_batch
from vivi.train.augment import (
    AUGMENTATIONS,
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_config,
    build_augmentation,
    hsv_noise,
    linear_color,
    sample_crops,
)


def bright_rectangle(batch: int, height: int, width: int, x0: int, y0: int, x1: int, y1: int):
    """Black frames with one white rectangle (columns x0..x1-1, rows y0..y1-1) and its normalised box."""
    images = torch.zeros(batch, 3, height, width)
    images[:, :, y0:y1, x0:x1] = 1.0
    box = torch.tensor([x0 / width, y0 / height, x1 / width, y1 / height])
    return images, box.expand(batch, 1, 4).clone()


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_shapes_range_and_leading_dims(name):
    aug = build_augmentation(name, size=24)
    frames = torch.randint(0, 256, (2, 2, 3, 3, 40, 56), dtype=torch.uint8)   # (N, K, F, 3, H, W), uint8
    out, boxes, valid = aug(frames, seed=0)
    assert out.shape == (2, 2, 3, 3, 24, 24) and out.dtype == torch.float32
    assert boxes is None and valid is None
    assert out.min() >= 0 and out.max() <= 1
    rotated, _ = rotate_batch(out.reshape(-1, 3, 24, 24))   # square output: the rotation loss applies
    assert rotated.shape == (4 * 12, 3, 24, 24)
    if name != "autoaugment":
        b = torch.rand(2, 2, 3, 5, 4) * 0.5
        b[..., 2:] += 0.5
        out, boxes, valid = aug(frames, b, seed=0)
        assert boxes.shape == (2, 2, 3, 5, 4) and valid.shape == (2, 2, 3, 5) and valid.dtype == torch.bool
        assert boxes.min() >= 0 and boxes.max() <= 1


def test_crop_area_and_aspect_statistics():
    config = AugmentConfig()
    g = torch.Generator().manual_seed(0)
    H = W = 1000                                    # large, so rounding to pixels is negligible
    crops = sample_crops(20000, H, W, config, g)
    x0, y0, w, h = crops.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= W).all() and (y0 + h <= H).all()
    assert (x0 == x0.round()).all() and (w == w.round()).all()          # whole pixels
    area, log_ratio = w * h / (H * W), torch.log(w / h)
    assert area.min() >= 0.08 - 2e-3 and area.max() <= 1.0         # GoogLeNet's 8-100 %
    assert log_ratio.min() >= math.log(3 / 4) - 5e-3 and log_ratio.max() <= math.log(4 / 3) + 5e-3
    # Crops under half the frame always fit at the first attempt: there area is uniform and the
    # aspect ratio log-uniform, as drawn (quartile counts within a few percent).
    # Margins: ~10 900 of the draws are under half the frame, so a quartile's (third's) fraction has
    # a standard deviation of 0.004; 0.02 is ~5 of them, and a skew of the draw by 2 % fails.
    small = area < 0.5
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    quart = torch.floor((log_ratio[small] - lo) / (hi - lo) * 4).clamp(0, 3)
    frac = torch.bincount(quart.long(), minlength=4).float() / small.sum()
    assert (frac - 0.25).abs().max() < 0.02, frac
    area_bins = torch.floor((area[small] - 0.08) / 0.42 * 3).clamp(0, 2)
    frac = torch.bincount(area_bins.long(), minlength=3).float() / small.sum()
    assert (frac - 1 / 3).abs().max() < 0.02, frac
    # the position is uniform over the places the crop fits: ~17 000 draws, mean 0.5 +- 0.002
    rel = (x0 / (W - w).clamp(min=1))[w < W * 0.9]
    assert abs(rel.mean().item() - 0.5) < 0.01


def test_crop_fallback_is_torchvision_centred_crop():
    # A 10 x 1000 frame fits no 5-100 % crop of aspect 3/4..4/3: centred 13 x 10 crop (4/3 clamp).
    crops = sample_crops(4, 10, 1000, AugmentConfig(), torch.Generator().manual_seed(0))
    assert crops.tolist() == [[493.0, 0.0, 13.0, 10.0]] * 4
    # Square frame, only full-area candidates of aspect >= 1.2: none fits -> full width, h = W/1.2.
    config = AugmentConfig(area=(1.0, 1.0), aspect=(1.2, 1.3), attempts=3)
    crops = sample_crops(4, 100, 100, config, torch.Generator().manual_seed(0))
    assert crops.tolist() == [[0.0, 8.0, 100.0, 83.0]] * 4
    # A frame whose own ratio (400/600) is inside the range falls back to the whole frame. A
    # full-area candidate fits after rounding only for a ratio within 0.4 % of 2/3 (a chance of
    # 0.7 % a draw; it is then the whole frame within a pixel), so at most 4 of 50 may differ
    # (more has a chance under 1e-4).
    config = AugmentConfig(area=(1.0, 1.0), aspect=(0.5, 0.9), attempts=1)
    crops = sample_crops(50, 600, 400, config, torch.Generator().manual_seed(0))
    assert (crops[:, :2] <= 1).all() and (crops[:, 2] >= 399).all() and (crops[:, 3] >= 599).all()
    assert (crops != torch.tensor([0.0, 0.0, 400.0, 600.0])).any(dim=1).sum() <= 4


def test_center_and_resize_crops_match_plain_resampling():
    images = torch.rand(3, 3, 40, 60)
    out, _, _ = build_augmentation("eval", size=20)(images, seed=0)
    ref = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    same, _, _ = build_augmentation("eval", size=40)(images[..., :40], seed=0)
    assert torch.equal(same, images[..., :40])                    # no resampling at all when sizes match
    centre, _, _ = build_augmentation("eval", crop="center", size=40)(images, seed=0)
    torch.testing.assert_close(centre, images[..., 10:50], atol=1e-5, rtol=0)


def test_flip_mirrors_images_and_boxes():
    aug = build_augmentation("eval", flip=True, size=16)
    images = torch.rand(64, 3, 16, 16)
    boxes = torch.tensor([0.1, 0.2, 0.3, 0.9]).expand(64, 1, 4)
    params = aug.sample(64, 16, 16, generator=torch.Generator().manual_seed(3))
    out, out_boxes, valid = aug.apply(images, params, boxes)
    flipped = params.flip
    assert flipped.any() and (~flipped).any()                   # both branches are checked below
    # the flip's probability is 1/2: over 4000 draws the rate is 0.5 +- 0.008, and 0.45 or 0.55 fails
    rate = aug.sample(4000, 16, 16, generator=torch.Generator().manual_seed(4)).flip.float().mean().item()
    assert abs(rate - 0.5) < 0.025, rate
    torch.testing.assert_close(out[flipped], images[flipped].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[~flipped], images[~flipped], atol=1e-5, rtol=0)
    assert valid.all()
    torch.testing.assert_close(out_boxes[flipped, 0], torch.tensor([0.7, 0.2, 0.9, 0.9]).expand(int(flipped.sum()), 4))
    torch.testing.assert_close(out_boxes[~flipped, 0], boxes[~flipped, 0])


def test_determinism_from_seed_and_generator():
    aug = build_augmentation("inception_strong", size=16)
    images = torch.rand(8, 3, 32, 32)
    boxes = torch.tensor([0.2, 0.2, 0.6, 0.7]).expand(8, 1, 4)
    a = aug(images, boxes, seed=5)
    b = aug(images, boxes, seed=5)
    c = aug(images, boxes, seed=6)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    # seed=s is a fresh generator seeded with s on the images' device; a generator advances
    g = torch.Generator().manual_seed(5)
    first, second = aug(images, boxes, generator=g), aug(images, boxes, generator=g)
    assert torch.equal(first[0], a[0]) and not torch.equal(second[0], a[0])
    # the colour mode does not change the stream: same crops and flips for a seed
    p1 = aug.sample(8, 32, 32, generator=torch.Generator().manual_seed(1))
    p2 = build_augmentation("eval").sample(8, 32, 32, generator=torch.Generator().manual_seed(1))
    p3 = build_augmentation("inception").sample(8, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(p1.crop, p3.crop) and torch.equal(p1.flip, p3.flip) and torch.equal(p1.color, p2.color)
    with pytest.raises(ValueError, match="either"):
        aug(images, generator=g, seed=1)


@pytest.mark.parametrize("height, width", [(48, 80), (64, 64)])
def test_boxes_follow_crop_and_flip_by_drawing(height, width):
    """The transformed box tightly covers the transformed bright rectangle, over many crops."""
    size = 32
    images, boxes = bright_rectangle(300, height, width, x0=12, y0=10, x1=44, y1=30)
    aug = build_augmentation("inception", color="none", size=size)
    params = aug.sample(300, height, width, generator=torch.Generator().manual_seed(0))
    out, out_boxes, valid = aug.apply(images, params, boxes)
    assert valid.float().mean() > 0.3 and params.flip[valid[:, 0]].any() and (~params.flip[valid[:, 0]]).any()
    # validity = box centre inside the crop
    x0, y0, w, h = params.crop.unbind(1)
    cx, cy = 28.0, 20.0
    inside = (cx >= x0) & (cx < x0 + w) & (cy >= y0) & (cy < y0 + h)
    assert torch.equal(valid[:, 0], inside)
    for i in torch.nonzero(valid[:, 0]).squeeze(1).tolist():
        bright = out[i, 0] > 0.5
        rows = torch.nonzero(bright.any(dim=1)).squeeze(1)
        cols = torch.nonzero(bright.any(dim=0)).squeeze(1)
        expected = out_boxes[i, 0] * size                    # x0, y0, x1, y1 in output pixel edges
        drawn = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
        assert (drawn - expected).abs().max() <= 1.0, (i, drawn.tolist(), expected.tolist())
    assert (out_boxes[~valid] == 0).all()


def test_padding_boxes_stay_invalid():
    aug = build_augmentation("inception", size=16)
    boxes = torch.zeros(4, 3, 4)
    boxes[:, 0] = torch.tensor([0.3, 0.3, 0.7, 0.7])
    boxes[:, 2] = float("nan")
    given = torch.tensor([True, False, False]).expand(4, 3)
    _, out_boxes, valid = aug(torch.rand(4, 3, 32, 32), boxes, given, seed=0)
    assert not valid[:, 1:].any() and torch.isfinite(out_boxes).all()


def test_brightness_only_bounds_on_constant_image():
    aug = build_augmentation("inception", saturation=(1.0, 1.0), size=8)
    out, _, _ = aug(torch.full((500, 3, 16, 16), 0.5), seed=0)
    per_image = out.flatten(1)
    assert (per_image.max(1).values - per_image.min(1).values).max() < 1e-6   # one delta per image
    delta = per_image[:, 0] - 0.5
    assert delta.abs().max() <= 32 / 255 + 1e-6
    # the whole range is used: 500 uniform draws leave the outer 0.0055 of one side (beyond 0.12)
    # empty with a chance of 2e-5, and a range of 30/255 fails
    assert delta.min() < -0.12 and delta.max() > 0.12


def test_saturation_factor_bounds_and_kornia_agreement():
    kornia = pytest.importorskip("kornia")
    aug = build_augmentation("inception", brightness=0.0, size=8)
    colour = torch.tensor([0.6, 0.4, 0.2]).reshape(1, 3, 1, 1).expand(400, 3, 16, 16)   # S = 2/3
    out, _, _ = aug(colour, seed=0)
    pixel = out[:, :, 0, 0]
    s = (pixel.amax(1) - pixel.amin(1)) / pixel.amax(1)
    factor = s / (2 / 3)
    assert factor.min() >= 0.5 - 1e-5 and factor.max() <= 1.5 + 1e-5
    # the whole range is used: 400 uniform draws leave the outer 2 % of one side empty with a
    # chance of 3e-4, and a range of (0.55, 1.45) fails
    assert factor.min() < 0.52 and factor.max() > 1.48
    torch.testing.assert_close(pixel.amax(1), torch.full((400,), 0.6))                  # value kept
    images, f = torch.rand(6, 3, 8, 8), torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0, 10.0])
    torch.testing.assert_close(adjust_saturation(images, f), kornia.enhance.adjust_saturation(images, f),
                               atol=1e-5, rtol=0)


def test_hue_contrast_and_hsv_noise_against_references():
    kornia = pytest.importorskip("kornia")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 8, 8, generator=g)
    images[0] = 0.5                                   # grey
    images[1, :, :4] = torch.tensor([1.0, 0.0, 0.0]).reshape(3, 1, 1)
    delta = torch.tensor([0.2, -0.2, 0.5, 0.0, 0.1, -0.05])
    torch.testing.assert_close(adjust_hue(images, delta), kornia.enhance.adjust_hue(images, delta * 2 * math.pi),
                               atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)
    green = torch.tensor([0.0, 1.0, 0.0]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(adjust_hue(red, torch.tensor([1 / 3])), green)     # a third of a turn
    factor = torch.rand(6, generator=g) + 0.5
    out = adjust_contrast(images, factor)
    torch.testing.assert_close(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)))
    torch.testing.assert_close(adjust_brightness(images, delta), images + delta.reshape(-1, 1, 1, 1))
    # S4L's HSV noise, written with kornia's conversions (hue in radians)
    params = build_augmentation("cotrain_images").sample(6, 8, 8, generator=g).hsv
    hsv = kornia.color.rgb_to_hsv(images)
    h = torch.remainder(hsv[:, :1] / (2 * math.pi) + params[:, 0].reshape(-1, 1, 1, 1), 1.0)
    sv = hsv[:, 1:] ** params[:, 1:3, None, None] * params[:, 3:5, None, None] + params[:, 5:7, None, None]
    ref = torch.cat([h, sv], dim=1).clamp(0, 1)
    ref = kornia.color.hsv_to_rgb(torch.cat([ref[:, :1] * 2 * math.pi, ref[:, 1:]], dim=1))
    torch.testing.assert_close(hsv_noise(images, params), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode, overrides, order_count", [("inception", {}, 1),
                                                          ("inception", {"color_order": "random"}, 2),
                                                          ("inception_strong", {}, 4)])
def test_color_orders_follow_tf(mode, overrides, order_count):
    """The paper's ``inception`` preset distorts every image brightness-then-saturation, the only order
    of TF-slim's fast mode as its ``preprocess_for_train`` runs it (``num_distort_cases = 1``);
    ``color_order="random"`` gives image i order i of the fast mode's two, ``inception_strong`` order i
    of the full mode's four. Each is checked against the ops applied one by one here, so a preset that
    drew a random fast-mode order again, or a wrong order table, fails."""
    images = torch.rand(4, 3, 8, 8)
    aug = build_augmentation(mode, size=8, crop="resize", flip=False, **overrides)
    params = aug.sample(4, 8, 8, generator=torch.Generator().manual_seed(0))
    params.color[:, 0] = (torch.arange(4) % 4 + 0.5) / 4          # the order uniforms of orders 0..3 of four
    out, _, _ = aug.apply(images, params)
    ops = {"brightness": (adjust_brightness, 1), "saturation": (adjust_saturation, 2),
           "hue": (adjust_hue, 3), "contrast": (adjust_contrast, 4)}
    orders = ([["brightness", "saturation"], ["saturation", "brightness"]] if mode == "inception" else
              [["brightness", "saturation", "hue", "contrast"], ["saturation", "brightness", "contrast", "hue"],
               ["contrast", "hue", "brightness", "saturation"], ["hue", "saturation", "contrast", "brightness"]])
    for i in range(4):
        x = images[i:i + 1]
        for name in orders[i * order_count // 4]:
            op, column = ops[name]
            x = op(x, params.color[i:i + 1, column])
        torch.testing.assert_close(out[i:i + 1], x.clamp(0, 1), atol=1e-6, rtol=0)


def _linear_color_loop(image, brightness, saturation, hue, contrast, order):
    """One image, pixel by pixel, one operation after the other in ``order`` (no clamping between)."""
    axis = torch.ones(3, dtype=torch.float64) / math.sqrt(3)
    angle = 2 * math.pi * hue
    x = image.double().clone()
    for name in order:
        if name == "contrast":                                     # TF adjust_contrast
            mean = x.mean(dim=(1, 2), keepdim=True)
            x = (x - mean) * contrast + mean
            continue
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                p = x[:, i, j]
                grey = p.mean()
                if name == "brightness":
                    p = p + brightness
                elif name == "saturation":                        # towards the pixel's grey
                    p = grey + saturation * (p - grey)
                else:                                             # rotate about the grey axis (Rodrigues' vector form)
                    p = (p * math.cos(angle) + torch.linalg.cross(axis, p) * math.sin(angle)
                         + axis * (axis @ p) * (1 - math.cos(angle)))
                x[:, i, j] = p
    return x.clamp(0, 1).float()


def test_linear_color_against_a_per_pixel_loop_in_any_order():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 4, 5, generator=g)
    aug = build_augmentation("synth", size=5)
    params = aug.sample(5, 4, 5, generator=g).color
    out = linear_color(images, params)
    orders = [["brightness", "saturation", "hue", "contrast"], ["contrast", "hue", "saturation", "brightness"],
              ["hue", "contrast", "brightness", "saturation"]]
    for i in range(5):
        for order in orders:                                       # the four operations commute
            ref = _linear_color_loop(images[i], *params[i, 1:].tolist(), order)
            torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    # closed forms: a third of a turn maps R -> G -> B; a whole turn and the neutral values change nothing;
    # grey stays grey under hue and saturation
    rgb = torch.rand(2, 3, 3, 3, generator=g)
    neutral = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]]).repeat(2, 1)
    third, whole, grey_out = neutral.clone(), neutral.clone(), neutral.clone()
    third[:, 3], whole[:, 3] = 1 / 3, 1.0
    grey_out[:, 2:4] = torch.tensor([1.7, 0.37])
    torch.testing.assert_close(linear_color(rgb, third), rgb[:, [2, 0, 1]], atol=1e-6, rtol=0)
    torch.testing.assert_close(linear_color(rgb, whole), rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(linear_color(rgb, neutral), rgb, atol=1e-6, rtol=0)
    grey = rgb.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    torch.testing.assert_close(linear_color(grey, grey_out), grey, atol=1e-6, rtol=0)
    # through the module: the synth preset uses it after the crop
    crop_only, _, _ = build_augmentation("synth", size=5, color="none").apply(
        images, aug.sample(5, 4, 5, generator=g.manual_seed(1)))
    full, _, _ = aug.apply(images, aug.sample(5, 4, 5, generator=g.manual_seed(1)))
    torch.testing.assert_close(full, linear_color(crop_only, aug.sample(5, 4, 5, generator=g.manual_seed(1)).color))


def test_autoaugment_runs_deterministically_and_refuses_boxes():
    pytest.importorskip("kornia")
    aug = build_augmentation("autoaugment", size=16)
    images = torch.rand(12, 3, 24, 24)
    a, _, _ = aug(images, seed=0)
    b, _, _ = aug(images, seed=0)
    plain, _, _ = build_augmentation("inception", color="none", size=16)(images, seed=0)
    assert a.shape == (12, 3, 16, 16) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, plain)                    # the policy changed something
    state = torch.get_rng_state()
    aug(images, seed=1)
    assert torch.equal(state, torch.get_rng_state())        # global RNG untouched
    with pytest.raises(ValueError, match="AutoAugment"):
        aug(images, torch.zeros(12, 1, 4))


def test_config_names_and_validation():
    assert augment_config("eval", size=32).size == 32
    with pytest.raises(ValueError, match="inception"):
        augment_config("imagenet")
    with pytest.raises(ValueError, match="size"):
        augment_config("eval", sise=3)
    with pytest.raises(ValueError, match="distort"):
        AugmentConfig(color="strong")
    with pytest.raises(ValueError, match="resize"):
        AugmentConfig(crop="random")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_shapes_and_is_deterministic():
    aug = build_augmentation("inception_strong", size=32)
    images = torch.rand(16, 3, 64, 64, device="cuda")
    boxes = torch.tensor([0.2, 0.2, 0.6, 0.7], device="cuda").expand(16, 1, 4)
    a = aug(images, boxes, seed=0)
    b = aug(images, boxes, seed=0)
    assert a[0].device.type == "cuda" and all(torch.equal(x, y) for x, y in zip(a, b))
    cpu_gen = aug(images, boxes, generator=torch.Generator().manual_seed(0))   # CPU generator, CUDA images
    assert cpu_gen[0].device.type == "cuda"
