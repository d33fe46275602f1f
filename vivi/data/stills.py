"""Still images as training data, in place of videos (``data.source: images``).

VIVI Table 4 compares its video models with the same self-supervision trained on ImageNet
(Ex-ImageNet, Rot-ImageNet: "the same training protocol as [Kolesnikov et al. 2019] ... batch size
2048 ... 120k iterations", VIVI §4 and Table 5) and with supervised ImageNet models (Sup-100%,
Sup-Rot-100%). Here an image plays a video of one shot: its F frames are F crops of the image, each
drawn on the whole image (the exemplar baseline's "8 exemplars" are 8 augmented copies, VIVI
Table 5; rotation takes one). A batch has the layout of a batch of clips (:mod:`vivi.data.clips`),
so the same losses, loop and exact resume apply, plus the image's class:

* ``frames`` uint8 (1, F, 3, S, S), ``video`` (the image's index), ``shots`` (0,),
  ``frame_index`` (1, F), ``damaged`` 0;
* ``frame_labels`` int64 (1, F): the image's class for every copy, -1 in a folder without classes.

Sources: a folder of class folders (``ROOT/CLASS/*.jpg``, as ImageNet's train folder), a folder of
images without classes (searched recursively), or an ``.npz`` / ``.npy`` of images as the
co-training source takes (:class:`vivi.data.images.LabeledImages`). Which images a step draws and
their crops come from (seed, draw) as for videos (:class:`vivi.data.clips.VideoSampler`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .clips import VideoSampler
from .images import LabeledImages, crop_generator, fit_short_side, fit_square, read_image, take_crops

__all__ = ["StillImages", "make_still_loader"]


class StillImages(Dataset):
    """The images of ``root`` as one-shot clips of ``frames`` crops each (see the module docstring).

    ``size``: the shorter side each image is resized to before its crops (None: as stored, or
    256 for a folder of class folders and arrays, as the co-training source reads them);
    ``crop``: the :class:`vivi.train.augment.AugmentConfig` whose crop every copy takes (None:
    the centre square of ``size``); ``fraction``: a class-balanced part of each class.
    """

    def __init__(self, root: str | Path, frames: int, size: int | None, crop=None, fraction: float = 1.0):
        path = Path(root)
        if not path.exists():
            raise FileNotFoundError(f"image source {path} does not exist (a folder of images or of class folders, "
                                    "or a .npz / .npy of images)")
        self.frames, self.size, self.crop, self.seed = frames, size, crop, 0
        if path.is_dir() and not any(p.is_dir() for p in path.iterdir()):
            from vivi.api import image_files
            self.files = image_files([path])
            self.labels = np.full(len(self.files), -1, np.int64)
            self.images, self.classes = None, []
        else:
            self.images = LabeledImages(path, size=size or 256, fraction=fraction, crop=crop)
            self.labels, self.classes = self.images.labels[self.images.index], self.images.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, index: int) -> np.ndarray:
        if self.images is not None:
            return self.images.image(int(self.images.index[index]))
        image = read_image(self.files[index])
        if self.size is None:
            return image
        return fit_short_side(image, self.size) if self.crop is not None else fit_square(image, self.size)[0]

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = item
        image = self._image(index)
        if self.crop is not None:
            copies = take_crops([image] * self.frames, self.crop, crop_generator([self.seed, draw]))[0]
        else:
            copies = np.stack([image] * self.frames)
        frames = torch.from_numpy(copies).permute(0, 3, 1, 2).unsqueeze(0).contiguous()   # (1, F, 3, S, S)
        return {"frames": frames, "video": torch.tensor(index), "shots": torch.zeros(1, dtype=torch.int64),
                "frame_index": torch.zeros(1, self.frames, dtype=torch.int64), "damaged": torch.tensor(0),
                "frame_labels": torch.full((1, self.frames), int(self.labels[index]), dtype=torch.int64)}


def make_still_loader(root: str | Path, frames: int, size: int | None, *, batch_size: int, seed: int = 0,
                      workers: int = 2, start_batch: int = 0, rank: int | None = None,
                      world_size: int | None = None, crop=None, fraction: float = 1.0) -> DataLoader:
    """An endless DataLoader of still-image batches for this rank (``batch_size`` images per rank
    and step); ``start_batch`` skips that many batches of this rank's stream (exact resume)."""
    dataset = StillImages(root, frames, size, crop, fraction)
    dataset.seed = seed
    sampler = VideoSampler(len(dataset), seed=seed, rank=rank, world_size=world_size, start=start_batch * batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers > 0 else None)
