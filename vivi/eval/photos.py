"""A small real-image task that needs no download: which way up is a piece of a photograph?

The photographs are those that vivi's own dependencies install: matplotlib's
``grace_hopper.jpg`` and scikit-learn's ``china.jpg`` and ``flower.jpg`` (a portrait, a temple
with sky and trees, a flower). An image of the task is a square piece of one photograph
(a side of 35-70 % of the photo's shorter side), turned by 0, 90, 180 or 270 degrees; the label
is the turn (4 classes, chance 25 %). Telling which way up a piece is asks for what real pictures
look like (faces, sky above, light from above, gravity on leaves and roofs), not for the colours
that a random encoder already separates: a check of whether training on your videos taught the
encoder something about real images, beside the synthetic world's tasks.

Every split draws its pieces from anywhere in the three photographs, so a test piece often
overlaps training pieces (turned another way): the task measures whether the encoder sees which
way up familiar content is, not whether it generalises to new photographs (three photographs
would not support that: split by region, even raw pixels stay at chance). Every image is drawn
from a generator with a fixed seed: the task is the same on every machine. Linear probe at 32 px
(1000 training pieces): raw pixels 62 %, a random tiny encoder 68 %, the demo's Ex-YT-F 90 %.

Use it as a suite entry (``{"name": "photo-orientation", "source": "photos"}``), or write it as an
image-folder task that any tool reads: ``python -m vivi.eval.photos OUT`` (``OUT/suite.json``,
``OUT/photo-orientation/``).
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import cv2
import numpy as np

__all__ = ["PHOTO_SIZE", "SPLIT_SIZES", "photo_paths", "photo_split", "write_photo_task"]

PHOTO_SIZE = 96                  # side of a stored piece; evaluation resizes to its own resolution
SPLIT_SIZES = {"train800": 800, "val200": 200, "test": 1000}
SEED = 0


def photo_paths() -> list[Path]:
    """The photographs (all three: matplotlib and scikit-learn are dependencies of vivi)."""
    import matplotlib
    import sklearn
    paths = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
             Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
             Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the photographs of the photo-orientation task are not installed "
                                f"({', '.join(missing)}): reinstall matplotlib and scikit-learn")
    return paths


def _pieces(photos: list[np.ndarray], count: int, rng: np.random.Generator):
    images, labels = [], []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 0.7))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        piece = cv2.resize(photo[y:y + side, x:x + side], (PHOTO_SIZE, PHOTO_SIZE), interpolation=cv2.INTER_AREA)
        turn = int(rng.integers(4))
        images.append(np.ascontiguousarray(np.rot90(piece, k=turn)))
        labels.append(turn)
    return images, np.asarray(labels, np.int64)


def photo_split(split: str) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """(RGB uint8 images, labels, ids) of one split (``train800``, ``val200``, ``train800val200``, ``test``)."""
    if split == "train800val200":
        first, second = photo_split("train800"), photo_split("val200")
        return first[0] + second[0], np.concatenate([first[1], second[1]]), first[2] + second[2]
    images, labels = _drawn(split)
    return list(images), labels.copy(), [f"photos:{split}:{i}" for i in range(len(images))]


@functools.cache
def _drawn(split: str) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The pieces of ``split``, drawn once per process (an evaluation reads a split more than once)."""
    from vivi.data.images import read_image
    photos = [read_image(p) for p in photo_paths()]
    # one generator per split: train800 and val200 are drawn apart, the same on every call
    rng = np.random.default_rng([SEED, list(SPLIT_SIZES).index(split)])
    images, labels = _pieces(photos, SPLIT_SIZES[split], rng)
    return tuple(images), labels              # shared by every caller, who reads them only


def write_photo_task(out: str | Path, name: str = "photo-orientation") -> Path:
    """Write the task as an image folder (``OUT/NAME/images/*.png`` and the four list files) and a
    suite file ``OUT/suite.json``; returns the suite file."""
    out = Path(out)
    folder = out / name
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for split in ("train800", "val200", "test"):
        images, labels, _ = photo_split(split)
        rows = []
        for i, (image, label) in enumerate(zip(images, labels)):
            path = f"images/{split}-{i:04d}.png"
            cv2.imwrite(str(folder / path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            rows.append(f"{path} {label}\n")
        (folder / f"{split}.txt").write_text("".join(rows))
    lists = {split: (folder / f"{split}.txt").read_text() for split in ("train800", "val200")}
    (folder / "train800val200.txt").write_text(lists["train800"] + lists["val200"])
    (folder / "task.json").write_text(json.dumps({"name": name, "group": "natural", "num_classes": 4}))
    suite = out / "suite.json"
    suite.write_text(json.dumps({"tasks": [{"name": name, "group": "natural", "num_classes": 4}]}, indent=1))
    return suite


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vivi.eval.photos OUT")
    print(f"suite written to {write_photo_task(sys.argv[1])}")
