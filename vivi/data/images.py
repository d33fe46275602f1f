"""Labelled still images for co-training (VIVI §4: a class-balanced fraction of ImageNet).

A source is one of:

* a folder with one sub-folder per class (``ROOT/<class>/<image>.jpg|png|...``, classes in
  sorted order, the ImageNet/ImageFolder layout);
* an ``.npz`` file with ``images`` uint8 (n, H, W, 3) and ``labels`` int (n,);
* an ``.npy`` file of images uint8 (n, H, W, 3) with the labels in ``NAME.labels.npy`` beside it.

Batches are drawn by index from a generator seeded with (seed, step, rank), so a resumed run
draws the same images (no iterator state to save). Images are decoded with OpenCV, resized
(shorter side) and centre-cropped to ``size`` so that they batch; the random crop, flip and
colour happen on the device (``vivi.train.augment``, preset ``cotrain_images``).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = ["IMAGE_SUFFIXES", "LabeledImages", "fit_square", "read_image"]

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


def fit_square(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Resize the shorter side to ``size`` and centre-crop to ``size`` x ``size``, so that images of
    any aspect batch; returns the crop too, as normalised (x0, y0, x1, y1) of the resized image
    (boxes follow it)."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    rh, rw = max(size, round(h * scale)), max(size, round(w * scale))
    if (rh, rw) != (h, w):
        image = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    y, x = (rh - size) // 2, (rw - size) // 2
    return image[y:y + size, x:x + size], (x / rw, y / rh, (x + size) / rw, (y + size) / rh)


class LabeledImages:
    """A labelled image source; ``batch(n, seed_parts)`` -> uint8 (n, 3, size, size), int64 (n,).

    Args:
        source: folder, ``.npz`` or ``.npy`` (see the module docstring).
        size: side of the stored square (shorter side resized, centre crop).
        fraction: keep this class-balanced fraction of each class (Co(10%): 0.1), the first
            images of each class in sorted order (deterministic).
    """

    def __init__(self, source: str | Path, size: int = 256, fraction: float = 1.0) -> None:
        path = Path(source)
        self.size = size
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

    def _image(self, i: int) -> np.ndarray:
        image = self.arrays[i] if self.arrays is not None else read_image(self.files[i])
        return fit_square(image, self.size)[0]

    def batch(self, n: int, seed: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images drawn uniformly (with replacement) by a generator seeded with ``seed``."""
        picks = self.index[np.random.default_rng(seed).integers(len(self.index), size=n)]
        images = np.stack([self._image(int(i)) for i in picks])
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(self.labels[picks])
