"""Still images as training data (`data.source: images`): Ex-ImageNet, Rot-ImageNet and the supervised
rows train on an image folder through the same loop as videos, with exact resume."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vivi.data.stills import StillImages, make_still_loader
from vivi.train.augment import augment_config
from vivi.train.checkpoint import read_checkpoint
from vivi.train.config import load_config
from vivi.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.source=images", "data.size=48", "data.workers=0", "data.videos=4", "optim.warmup_steps=1",
        "run.log_every=1", "model.image_classes=3"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three classes of 6 images each, of two aspect ratios: a colour per class, with noise."""
    root = tmp_path_factory.mktemp("stills")
    rng = np.random.default_rng(0)
    for label, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (root / f"class{label}").mkdir()
        for i in range(6):
            shape = (40, 72, 3) if i % 2 else (64, 48, 3)
            image = np.clip(rng.normal(colour, 30, shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"class{label}" / f"{i}.png"), image)
    return root


def test_an_image_is_a_one_shot_clip_of_independent_crops_with_its_class(images, tmp_path):
    """Catches copies that share one crop (the exemplar loss would see identical positives), crops
    that change between two reads of the same draw (resume would differ), and a lost class."""
    crop = augment_config("inception", size=32)
    dataset = StillImages(images, frames=4, size=48, crop=crop)
    item = dataset[(7, 7)]
    assert item["frames"].shape == (1, 4, 3, 32, 32) and item["frames"].dtype == torch.uint8
    copies = item["frames"][0]
    assert all(not torch.equal(copies[0], copies[i]) for i in range(1, 4))
    assert torch.equal(dataset[(7, 7)]["frames"], item["frames"]) and not torch.equal(dataset[(7, 8)]["frames"],
                                                                                        item["frames"])
    assert item["frame_labels"].tolist() == [[1] * 4]        # sorted class folders: image 7 is class1's second
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(images.rglob("*.png"))[:5]:
        (flat / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    unlabelled = StillImages(flat, frames=2, size=48, crop=crop)
    assert len(unlabelled) == 5 and unlabelled.num_classes == 0 and unlabelled[(0, 0)]["frame_labels"].tolist() == \
        [[-1, -1]]
    batch = next(iter(make_still_loader(images, 2, 48, batch_size=4, workers=0, crop=crop)))
    assert batch["frames"].shape == (4, 1, 2, 3, 32, 32)


@pytest.mark.parametrize("preset, extra", [("tiny-ex-yt-f", []), ("tiny-rot-yt-f", ["loss.cotrain_weight=1",
                                                                                   "loss.cotrain_source=data"])])
def test_training_on_images_resumes_exactly(images, tmp_path, preset, extra):
    """Ex-ImageNet's and Sup-Rot-100%'s recipes at tiny size: 6 steps straight equal 3 steps, then 3
    more after --resume (the images and crops of a step come from (seed, step), not from state)."""
    over = [*TINY, *extra, "run.ckpt_every=3"]
    straight = train(preset, images, tmp_path / "straight", overrides=[*over, "optim.steps=6"], progress=False)
    assert straight["step"] == 6
    terms = {"exemplar"} if preset == "tiny-ex-yt-f" else {"rotation", "supervised"}
    assert {k.split("/")[1] for k in straight["last"] if k.startswith("raw/")} == terms
    train(preset, images, tmp_path / "resumed", overrides=[*over, "optim.steps=3"], progress=False)
    train(None, images, tmp_path / "resumed", resume=True, overrides=["optim.steps=6"], progress=False)
    a, b = read_checkpoint(tmp_path / "straight")["model"], read_checkpoint(tmp_path / "resumed")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_still_image_settings_that_cannot_work_are_one_line_errors(images, tmp_path):
    with pytest.raises(ValueError, match="data.source=images makes each image a clip of one shot"):
        load_config("tiny-vivi-ex4", ["data.source=images"])
    with pytest.raises(ValueError, match="loss.cotrain_source=data takes the classes of the training images"):
        load_config("tiny-rot-yt-f", ["loss.cotrain_weight=1", "loss.cotrain_source=data"])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(next(images.rglob("*.png")).read_bytes())
    with pytest.raises(ValueError, match="which has none: give a folder of class folders"):
        train("tiny-rot-yt-f", flat, tmp_path / "run", overrides=[*TINY, "data.videos=1", "loss.cotrain_weight=1",
                                                                  "loss.cotrain_source=data", "optim.steps=1"],
              progress=False)
