"""The loader's crops: drawn on the whole frame at its aspect ratio, resized to S x S in the workers,
boxes following (VIVI §4 and app. A, Object-centric §4.1; docs/augment.md)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_INGEST, write_video

from vivi.data import ClipConfig, VideoClipDataset, make_loader
from vivi.data.images import LabeledImages, crop_generator, take_crops
from vivi.data.stream import _ClipBoxes
from vivi.ingest import ingest
from vivi.train.augment import AugmentConfig, _crop_resize_flip, build_augmentation

pytestmark = pytest.mark.usefixtures("one_thread")

RED, GREY, BLUE = (230, 20, 20), (128, 128, 128), (20, 20, 230)


def _banded(height: int, width: int, band: int) -> np.ndarray:
    """A frame whose outer ``band`` columns are red (left) and blue (right), grey between."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = GREY
    image[:, :band], image[:, width - band:] = RED, BLUE
    return image


def _share(frames: np.ndarray, colour) -> float:
    """Fraction of pixels of uint8 (..., H, W, 3) frames within 60 levels of ``colour`` in every channel."""
    return float((np.abs(frames.astype(int) - np.asarray(colour)) < 60).all(axis=-1).mean())


def test_crops_are_drawn_on_the_whole_frame_by_the_inception_rules():
    """On a 36 x 64 (16:9) frame the crops reach the outer 14 columns on each side, which a centre
    square never shows; they lie inside the frame, cover 8 % of its area or more (GoogLeNet's range,
    of the whole frame) up to the 75 % that a 4/3 aspect ratio allows on 16:9, and the same generator
    seed gives the same crops."""
    image = _banded(36, 64, 14)
    config = AugmentConfig(size=16)
    out, crops = take_crops([image] * 400, config, crop_generator([0, 1]))
    assert out.shape == (400, 16, 16, 3) and out.dtype == np.uint8
    x0, y0, x1, y1 = crops.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 1).all() and (y1 <= 1).all()
    area = (x1 - x0) * (y1 - y0)
    assert area.min() >= 0.08 - 2 / 36 and area.max() == 0.75     # whole pixels: a crop rounds by < 1 px a side
    assert (x0 < 14 / 64).sum() > 50 and (x1 > 50 / 64).sum() > 50
    assert _share(out, RED) > 0.05 and _share(out, BLUE) > 0.05
    again, same = take_crops([image] * 400, config, crop_generator([0, 1]))
    assert np.array_equal(again, out) and np.array_equal(same, crops)


def test_crop_and_resize_are_tfs_slice_then_bilinear_resize():
    """Each crop is the slice of its rectangle resized bilinearly (half-pixel centres, no
    antialiasing; TF's ``tf.slice`` then ``resize_images`` in inception preprocessing): it equals the
    device's ``grid_sample`` of the slice (``align_corners=False``, border padding), whose affine map
    the boxes follow, to within one grey level, for crops both shrunk and enlarged."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)
    out, crops = take_crops([image] * 64, AugmentConfig(size=24, area=(0.05, 1.0)), crop_generator([3]))
    rects = np.rint(crops * np.array([90, 50, 90, 50])).astype(int)
    widths = rects[:, 2] - rects[:, 0]
    assert (widths < 24).any() and (widths > 24).any()
    for (x0, y0, x1, y1), crop in zip(rects, out):
        part = torch.from_numpy(image[y0:y1, x0:x1]).permute(2, 0, 1).float()[None]
        whole = torch.tensor([[0.0, 0.0, x1 - x0, y1 - y0]])
        device = _crop_resize_flip(part, whole, torch.zeros(1, dtype=torch.bool), 24)[0]
        assert (torch.from_numpy(crop).permute(2, 0, 1).float() - device).abs().max() <= 1.0


def test_boxes_follow_each_frames_own_crop():
    """Per-frame crops map every frame's boxes into its own crop; a box centred outside is dropped
    before the ``max_boxes`` highest scores are kept, so a lower-scoring box inside takes its place."""
    boxes = np.array([[0.0, 0.0, 0.2, 0.2, 1, 0.9],          # left corner: inside crop 0 only
                      [0.6, 0.4, 1.0, 0.8, 2, 0.8],          # right side: inside crop 1 only
                      [0.35, 0.4, 0.55, 0.6, 3, 0.5]], np.float32)   # centred at x 0.45: inside crop 0
    crops = np.array([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]]], np.float32)     # (K, F, 4)
    out = _ClipBoxes({7: boxes}).boxes(0, [[7, 7]], crops, max_boxes=2)
    assert out["box_labels"][0].tolist() == [[1, 3], [2, -1]]
    np.testing.assert_allclose(out["boxes"][0, 0, 0].numpy(), [0.0, 0.0, 0.4, 0.2], atol=1e-6)
    np.testing.assert_allclose(out["boxes"][0, 0, 1].numpy(), [0.7, 0.4, 1.0, 0.6], atol=1e-6)   # clipped
    np.testing.assert_allclose(out["boxes"][0, 1, 0].numpy(), [0.2, 0.4, 1.0, 0.8], atol=1e-6)


@pytest.fixture(scope="module")
def wide_and_tall(tmp_path_factory):
    """Two videos of banded frames, one 16:9 (64 x 114 stored) and one 9:16, in one dataset."""
    root = tmp_path_factory.mktemp("aspect")
    (root / "videos").mkdir()
    write_video(root / "videos" / "wide.mp4", np.stack([_banded(72, 128, 24)] * 30))
    write_video(root / "videos" / "tall.mp4", np.stack([_banded(128, 72, 14)] * 30))
    ingest([root / "videos"], root / "ds", TINY_INGEST, workers=1, progress=False)
    return root / "ds"


def test_the_loader_batches_frames_of_any_aspect_and_shows_their_edges(wide_and_tall):
    """Frames of a 16:9 and a 9:16 video batch once each has taken its crop (without one, frames of
    two sizes need a centre square); the wide video's outer bands, which a centre square cuts away,
    reach the batches; the stream is seeded: the same seed gives the same batches, and a resumed
    loader (``start_batch``) continues it."""
    with pytest.raises(ValueError, match="different frame sizes"):
        VideoClipDataset(wide_and_tall, ClipConfig(shots=1, frames=4))
    config = ClipConfig(shots=1, frames=4, size=64)          # the stored short side: the frames as they are
    crop = AugmentConfig(size=16)
    loader = make_loader(wide_and_tall, config, batch_size=2, seed=5, workers=0, crop=crop)
    batches = [batch for batch, _ in zip(loader, range(12))]
    assert batches[0]["frames"].shape == (2, 1, 4, 3, 16, 16)
    wide = _wide(wide_and_tall)
    frames = torch.cat([b["frames"][b["video"] == wide] for b in batches]).flatten(0, 2).permute(0, 2, 3, 1)
    # the bands are 21 px of the 114 stored; a centre square leaves 25 px each side out: it shows none
    assert _share(frames.numpy(), RED) > 0.005 and _share(frames.numpy(), BLUE) > 0.005
    again = make_loader(wide_and_tall, config, batch_size=2, seed=5, workers=0, crop=crop)
    resumed = make_loader(wide_and_tall, config, batch_size=2, seed=5, workers=0, crop=crop, start_batch=3)
    assert torch.equal(next(iter(again))["frames"], batches[0]["frames"])
    assert torch.equal(next(iter(resumed))["frames"], batches[3]["frames"])
    other = make_loader(wide_and_tall, config, batch_size=2, seed=6, workers=0, crop=crop)
    assert not torch.equal(next(iter(other))["frames"], batches[0]["frames"])


def _wide(root) -> int:
    videos = VideoClipDataset(root, ClipConfig(shots=1, frames=1, size=8)).videos
    return next(i for i in range(len(videos)) if videos[i].frame_size[1] > videos[i].frame_size[0])


def test_cotraining_images_of_any_aspect_take_their_crop_from_the_whole_image(tmp_path):
    """Labelled images of different aspect ratios batch once cropped; the crops reach the outer
    bands of the wide image that a centre square would cut away; the same seed draws the same."""
    import cv2
    for name, image in (("a", _banded(30, 90, 20)), ("b", _banded(90, 30, 4))):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "0.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    source = LabeledImages(tmp_path, size=30, crop=AugmentConfig(size=12))
    images, labels = source.batch(64, [0, 7])
    assert images.shape == (64, 3, 12, 12) and images.dtype == torch.uint8
    wide = images[labels == 0].permute(0, 2, 3, 1).numpy()
    assert _share(wide, RED) > 0.03 and _share(wide, BLUE) > 0.03
    assert torch.equal(source.batch(64, [0, 7])[0], images)
    assert LabeledImages(tmp_path, size=30).batch(4, [0, 7])[0].shape == (4, 3, 30, 30)    # no crop: centre square


def test_the_device_only_flips_frames_the_loader_has_cropped():
    """With the loader's S x S crops the training step's augmentation (``crop="resize"`` at S) leaves
    the pixels as they are and mirrors the flipped images exactly: no second crop, no resampling."""
    frames = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out, _, _ = build_augmentation("inception", size=8, crop="resize", color="none")(frames, seed=3)
    expected = frames.float() * (1 / 255)
    flipped = (out == expected.flip(-1)).flatten(1).all(1)
    assert ((out == expected).flatten(1).all(1) | flipped).all()
    assert 16 < int(flipped.sum()) < 48
