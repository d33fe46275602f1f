"""Labelled still images for co-training (VIVI §4: a class-balanced fraction of ImageNet).

A source is one of:

* a folder with one sub-folder per class (``ROOT/<class>/<image>.jpg|png|...``, classes in
  sorted order, the ImageNet/ImageFolder layout);
* an ``.npz`` file with ``images`` uint8 (n, H, W, 3) and ``labels`` int (n,);
* an ``.npy`` file of images uint8 (n, H, W, 3) with the labels in ``NAME.labels.npy`` beside it.

Batches are drawn by index from a generator seeded with (seed, step, rank), so a resumed run
draws the same images (no iterator state to save). Images are decoded with OpenCV and their
shorter side resized to ``size``. With ``crop`` (training: the augmentation's crop rules, VIVI §4
and Object-centric §4.1's inception crop) each image's crop is drawn on the *whole* image and
resized to the crop's S x S here (:func:`take_crops`), so images of any aspect batch; flip and
colour follow on the device (``vivi.train.augment``, preset ``cotrain_images``). Without
``crop`` they are centre-cropped to ``size`` x ``size``.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "LabeledImages", "crop_generator", "fit_short_side", "fit_square", "read_image",
           "take_crops"]

_CROP_STREAM = 0x43524F50   # a seed word: the crops' stream is apart from every other draw of a sample

# the image files OpenCV reads
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def read_image(path: str | bytes | Path) -> np.ndarray:
    """RGB uint8 (H, W, 3) of an image file.

    The bytes are read here and decoded by OpenCV from memory: ``cv2.imread`` takes the name as
    UTF-8 text and crashes the process on a name that is not valid UTF-8."""
    try:
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), np.uint8)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise ValueError(f"cannot read image {os.fsdecode(path)}: {error.strerror}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot read image {os.fsdecode(path)}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def fit_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """The image with its shorter side resized to ``size``, aspect ratio kept (area interpolation
    when shrinking, bilinear when enlarging); unchanged when it is that size already."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    if (rh, rw) == (h, w):
        return image
    return cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def fit_square(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Resize the shorter side to ``size`` and centre-crop to ``size`` x ``size``, so that images of
    any aspect batch; returns the crop too, as normalised (x0, y0, x1, y1) of the resized image
    (boxes follow it)."""
    image = fit_short_side(image, size)
    rh, rw = image.shape[:2]
    y, x = (rh - size) // 2, (rw - size) // 2
    return image[y:y + size, x:x + size], (x / rw, y / rh, (x + size) / rw, (y + size) / rh)


def crop_generator(words: list[int]) -> torch.Generator:
    """The generator of one sample's crops, seeded from ``words`` (e.g. the loader's seed and the
    sample's draw) and a word of its own, so the crops are apart from the sample's other draws
    and a resumed run draws them again."""
    seed = int(np.random.default_rng([*words, _CROP_STREAM]).integers(2**63))
    return torch.Generator().manual_seed(seed)


def take_crops(images: list[np.ndarray], crop, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each image's crop drawn on the whole image and resized to S x S: uint8 (n, S, S, 3) and the
    crops as normalised (x0, y0, x1, y1) of their image (n, 4) float32, which boxes follow.

    ``crop`` is a :class:`vivi.train.augment.AugmentConfig`: its ``crop`` mode, ``area``,
    ``aspect``, ``attempts`` and ``size`` (S). The rectangles come from
    :func:`vivi.train.augment.sample_crops`, one call per distinct image size in order of first
    appearance (a clip's frames share theirs: one call); the resize is bilinear with half-pixel
    centres and no antialiasing, the map that the device's ``grid_sample`` applies
    (``align_corners=False``, border padding), so a box follows it exactly.
    """
    from vivi.train.augment import sample_crops
    S = crop.size
    rects = np.zeros((len(images), 4), np.float32)
    shapes = [image.shape[:2] for image in images]
    for shape in dict.fromkeys(shapes):
        members = [i for i, s in enumerate(shapes) if s == shape]
        rects[members] = sample_crops(len(members), *shape, crop, generator).numpy()
    out = np.empty((len(images), S, S, 3), np.uint8)
    for i, (image, (x0, y0, w, h)) in enumerate(zip(images, rects.astype(np.int64).tolist())):
        part = image[y0:y0 + h, x0:x0 + w]
        out[i] = part if (h, w) == (S, S) else cv2.resize(part, (S, S), interpolation=cv2.INTER_LINEAR)
    height, width = np.asarray(shapes, np.float32).reshape(-1, 2).T
    normalised = np.stack([rects[:, 0] / width, rects[:, 1] / height, (rects[:, 0] + rects[:, 2]) / width,
                           (rects[:, 1] + rects[:, 3]) / height], axis=1)
    return out, normalised


class LabeledImages:
    """A labelled image source; ``batch(n, seed_parts)`` -> uint8 (n, 3, S, S), int64 (n,).

    Args:
        source: folder, ``.npz`` or ``.npy`` (see the module docstring).
        size: the shorter side is resized to this; without ``crop`` the image is then
            centre-cropped to ``size`` x ``size`` (S = size).
        fraction: keep this class-balanced fraction of each class (Co(10%): 0.1), the first
            images of each class in sorted order (deterministic).
        crop: an :class:`vivi.train.augment.AugmentConfig` whose crop (drawn on the whole image,
            resized to its ``size`` = S) each image takes (:func:`take_crops`); None: the centre
            square.
    """

    def __init__(self, source: str | Path, size: int = 256, fraction: float = 1.0, crop=None) -> None:
        path = Path(source)
        self.size = size
        self.crop = crop
        self.arrays: np.ndarray | None = None
        if not path.exists():
            raise FileNotFoundError(f"co-training source {path} does not exist (an image folder with one "
                                    "sub-folder per class, a .npz with images/labels, or a .npy + .labels.npy)")
        if path.is_dir():
            self.classes = sorted(p.name for p in path.iterdir() if p.is_dir())
            files, labels = [], []
            for label, name in enumerate(self.classes):
                found = sorted(p for p in (path / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                files += found
                labels += [label] * len(found)
            self.files = files
            self.labels = np.asarray(labels, np.int64)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if "images" not in data or "labels" not in data:
                    raise ValueError(f"{path} must hold arrays 'images' (n, H, W, 3) and 'labels' (n,); "
                                     f"found {', '.join(data.files)}")
                self.arrays, self.labels = data["images"], data["labels"].astype(np.int64)
        elif path.suffix == ".npy":
            label_path = path.with_suffix(".labels.npy")
            if not label_path.exists():
                raise FileNotFoundError(f"{path} needs its labels in {label_path}")
            self.arrays = np.load(path, allow_pickle=False)
            self.labels = np.load(label_path, allow_pickle=False).astype(np.int64)
        else:
            raise ValueError(f"unknown co-training source {path}: expected a folder, .npz or .npy")
        if self.arrays is not None:
            if self.arrays.ndim != 4 or self.arrays.shape[-1] != 3 or self.arrays.dtype != np.uint8:
                raise ValueError(f"images must be uint8 (n, H, W, 3), got {self.arrays.dtype} {self.arrays.shape}")
            self.classes = [str(c) for c in range(int(self.labels.max()) + 1)] if len(self.labels) else []
        if len(self.labels) == 0:
            raise ValueError(f"co-training source {path} holds no labelled image")
        self.index = self._balanced(fraction)

    def _balanced(self, fraction: float) -> np.ndarray:
        keep = []
        for label in np.unique(self.labels):
            members = np.flatnonzero(self.labels == label)
            keep.append(members[:max(1, round(len(members) * fraction))])
        return np.sort(np.concatenate(keep))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` of the source (not of the balanced ``index``), resized as a batch takes it."""
        image = self.arrays[i] if self.arrays is not None else read_image(self.files[i])
        if self.crop is not None:
            return fit_short_side(image, self.size)
        return fit_square(image, self.size)[0]

    def batch(self, n: int, seed: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images drawn uniformly (with replacement) by a generator seeded with ``seed``; their
        crops (with ``crop``) from a generator seeded with ``seed`` too (:func:`crop_generator`)."""
        picks = self.index[np.random.default_rng(seed).integers(len(self.index), size=n)]
        images = [self.image(int(i)) for i in picks]
        images = take_crops(images, self.crop, crop_generator(seed))[0] if self.crop is not None else np.stack(images)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(self.labels[picks])
