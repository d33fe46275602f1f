"""Accuracy of a co-trained model on ImageNet's out-of-distribution test sets (Object-centric §4.2,
"Robustness", and Table 5; docs/reference.md, "Robustness").

Object-centric Table 5 reports top-1 **accuracy** in ImageNet's label space on ImageNet-A
(Hendrycks et al. 2021), ImageNet-C (Hendrycks & Dietterich 2019), ImageNet-V2 (Recht et al.
2019), ObjectNet and the video sets (the video sets are ``vivi robustness``). A co-trained model
(a ``*-co`` preset) has an ImageNet head (``image_class_head`` of :class:`vivi.train.model.VIVIModel`);
this module classifies with it, no fine-tuning. The sets are read from folders in their published
layouts:

* ImageNet-V2: ``DIR/<i>/<image>``, ``i`` the class index 0..999 in ImageNet's order;
* ImageNet-C: ``DIR/<corruption>/<severity 1..5>/<wnid>/<image>``; the accuracy of a corruption is
  the mean over its severities, the set's accuracy the mean over corruptions (what Table 5
  reports); the mean corruption error mCE (Hendrycks & Dietterich 2019: the error summed over
  the five severities, divided by AlexNet's, averaged over the 15 corruptions) is given when all
  15 corruptions are there with all five severities, with the AlexNet errors their paper publishes;
* ImageNet-A: ``DIR/<wnid>/<image>`` (200 classes); the logits are restricted to the classes of
  the folder's wnid sub-folders before the arg-max, as the set's authors evaluate.

**The head's class order.** Co-training reads its labelled images (``loss.cotrain_source``) with
:class:`vivi.data.images.LabeledImages`: from a folder, output ``i`` is the ``i``-th class
sub-folder name in sorted order (for ImageNet's train folder, the sorted wnids: ImageNet's own
class-index order); from ``.npz``/``.npy``, output ``i`` is label ``i``. The names of the outputs
come from ``classes`` (a file the user gives: one class per line, its first word the wnid, as
ImageNet's ``LOC_synset_mapping.txt``; or the ``{"0": ["n01440764", "tench"], ...}`` JSON of
``imagenet_class_index.json``; line ``i`` names output ``i``), else from the sub-folder names of the
co-training folder the checkpoint's config names, where it is readable. A wnid folder then maps to
the output of that name; a V2 folder ``i`` to the output named ``i`` (names that are class
indices), to the output of the ``i``-th wnid in sorted order (names that are ImageNet's 1000
wnids), or to output ``i`` (no names: the head's outputs are class indices).

Images are read with OpenCV, the shorter side resized to the encoder's input size (its training
size, ``augment.size``) and centre-cropped, as co-training reads its images.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["ALEXNET_ERRORS", "ImageNetClassifier", "class_mapping", "evaluate_ood", "folder_images",
           "imagenet_a_accuracy", "imagenet_c_accuracy", "imagenet_v2_accuracy", "load_imagenet_classifier",
           "read_class_file"]

NO_HEAD = "this model has no ImageNet head: OOD accuracy needs a co-trained model (a *-co preset)"
WNID = re.compile(r"n\d{8}")

# AlexNet's top-1 error on each ImageNet-C corruption, mean over the five severities (Hendrycks &
# Dietterich 2019; the normalisers of their mCE).
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640, "defocus_blur": 0.819880,
    "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572,
    "fog": 0.819324, "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}


class ImageNetClassifier(nn.Module):
    """Encoder + the co-training head: float images (B, 3, H, W) in [0, 1] -> logits (B, C).
    ``class_names``: the names of the C outputs, None where unknown; ``class_source`` says where
    they came from; ``input_size``: the encoder's training size."""

    def __init__(self, encoder: nn.Module, head: nn.Linear, class_names: list[str] | None = None,
                 class_source: str = "none", input_size: int = 224):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.class_names, self.class_source, self.input_size = class_names, class_source, input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def read_class_file(path: str | Path) -> list[str]:
    """The class names of a class-index file, line/key ``i`` naming output ``i`` (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file {path} does not exist: one wnid per line in the head's output order, "
                                "or imagenet_class_index.json")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            names = ([data[str(i)][0] if isinstance(data[str(i)], list) else data[str(i)] for i in range(len(data))]
                     if isinstance(data, dict) else [str(n) for n in data])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ValueError(f"{path} is not a class index: expected {{\"0\": [\"n01440764\", \"tench\"], ...}} "
                             "or a list of names") from None
    else:
        names = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class file {path} names no class")
    if len(set(names)) < len(names):
        raise ValueError(f"class file {path} names a class twice: each line names one output of the head")
    return names


def load_imagenet_classifier(checkpoint: str | Path, classes: str | Path | None = None,
                             device: str = "cpu") -> ImageNetClassifier:
    """The encoder and ImageNet head of a co-trained run folder or training checkpoint; the names
    of its outputs from ``classes`` or from its co-training folder (module docstring). A model
    without the head (not co-trained, an exported encoder, ``random:NAME``) raises ValueError."""
    from vivi.api import load_encoder
    from vivi.train.checkpoint import read_checkpoint, read_encoder_file
    text = str(checkpoint)
    if text.startswith("random:"):
        raise ValueError(f"{NO_HEAD}; {text} is a random encoder")
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        state = read_checkpoint(path)
    except ValueError:
        read_encoder_file(path)          # an exported encoder reads; anything else raises its own error here
        raise ValueError(f"{NO_HEAD}; {path} is an exported encoder (export keeps the encoder alone): pass the "
                         "run folder or its checkpoint") from None
    weight, bias = state["model"].get("image_class_head.weight"), state["model"].get("image_class_head.bias")
    if weight is None:
        raise ValueError(f"{NO_HEAD}; {path} was trained without co-training (loss.cotrain_weight = 0)")
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    encoder = load_encoder(path)
    if classes is not None:
        names, source = read_class_file(classes), f"class file {classes}"
    else:
        names, source = _cotrain_classes(state["config"])
    if names is not None and len(names) > weight.shape[0]:
        raise ValueError(f"{source} names {len(names)} classes, but the head has {weight.shape[0]} outputs: "
                         "pass the class file of this model's co-training (--classes)")
    return ImageNetClassifier(encoder, head, names, source, encoder.input_size).to(device).eval()


def _cotrain_classes(config: dict) -> tuple[list[str] | None, str]:
    """(names of the head's outputs, where they came from) from the co-training source of ``config``:
    the sorted class sub-folders of a folder (as :class:`vivi.data.images.LabeledImages` orders
    them), None for arrays or a source not readable here."""
    source = (config.get("loss") or {}).get("cotrain_source")
    if not source:
        return None, "none: the config names no co-training source"
    folder = Path(source)
    if folder.is_dir():
        return sorted(p.name for p in folder.iterdir() if p.is_dir()), f"co-training folder {folder}"
    if folder.suffix in (".npz", ".npy"):
        return None, f"co-training arrays {folder}: outputs are the integer labels"
    return None, f"co-training folder {folder} is not readable here"


def class_mapping(names: list[str] | None, num_outputs: int) -> tuple[dict[str, int] | None, dict[int, int] | None]:
    """(wnid -> output, ImageNet class index -> output) of a head with output names ``names``
    (module docstring); each None where the names do not give it."""
    if names is None:
        return None, {i: i for i in range(num_outputs)}
    by_name = {name: i for i, name in enumerate(names)}
    if all(name.isdigit() for name in names):
        return None, {int(name): i for name, i in by_name.items()}
    if len(names) == 1000 and all(WNID.fullmatch(name) for name in names):
        return by_name, {rank: by_name[name] for rank, name in enumerate(sorted(names))}
    return by_name, None


def folder_images(folder: Path) -> list[Path]:
    """The image files of one class folder, sorted."""
    from vivi.data.images import IMAGE_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class _Images(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], size: int):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from vivi.data.images import fit_square, read_image
        square = fit_square(read_image(self.files[i]), self.size)[0]
        return torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)


@torch.no_grad()
def _logits(model: nn.Module, files: list[Path], size: int, batch_size: int, workers: int) -> torch.Tensor:
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(_Images(files, size), batch_size=batch_size, num_workers=workers)
    return torch.cat([model(batch.to(device).float().div(255)).float().cpu() for batch in loader])


def _folder(path: str | Path, name: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} folder {folder} does not exist")
    return folder


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _labelled_files(class_folders: list[Path], to_output: dict, key, what: str) -> tuple[list[Path], np.ndarray]:
    """The images of ``class_folders`` and the head output of each one's class (``key(folder)`` looked
    up in ``to_output``)."""
    files, labels = [], []
    for folder in class_folders:
        output = to_output.get(key(folder))
        if output is None:
            raise ValueError(f"{folder}: the head has no output for {what} {folder.name}: pass --classes FILE naming "
                             "the head's classes (its co-training class order)")
        found = folder_images(folder)
        files += found
        labels += [output] * len(found)
    if not files:
        raise ValueError(f"no image in the class folders of {class_folders[0].parent}")
    return files, np.asarray(labels, np.int64)


def _need_wnids(model: ImageNetClassifier, name: str) -> dict[str, int]:
    by_wnid, _ = class_mapping(model.class_names, model.head.out_features)
    if by_wnid is None:
        raise ValueError(f"{name} folders are named by wnid, but the names of the head's classes are unknown "
                         f"({model.class_source}): pass --classes FILE, the wnids in the head's output order")
    return by_wnid


def imagenet_v2_accuracy(model: ImageNetClassifier, folder: str | Path, size: int | None = None, batch_size: int = 64,
                         workers: int = 0) -> dict:
    """Top-1 accuracy on ImageNet-V2 (``DIR/<class index>/<image>``)."""
    folder = _folder(folder, "ImageNet-V2")
    classes = _class_folders(folder)
    wrong = [p.name for p in classes if not p.name.isdigit()]
    if not classes or wrong:
        raise ValueError(f"ImageNet-V2 folder {folder} must hold one sub-folder per class named by its index "
                         f"0..999 (found {', '.join(wrong[:3]) or 'none'})")
    _, by_index = class_mapping(model.class_names, model.head.out_features)
    if by_index is None:
        raise ValueError(f"ImageNet-V2's folders are class indices, but the head's {len(model.class_names)} classes "
                         f"({model.class_source}) are neither indices nor ImageNet's 1000 wnids: pass --classes FILE")
    files, labels = _labelled_files(classes, by_index, lambda p: int(p.name), "class index")
    predictions = _logits(model, files, size or model.input_size, batch_size, workers).argmax(1).numpy()
    return {"accuracy": float(np.mean(predictions == labels)), "images": len(files), "classes": len(classes)}


def imagenet_c_accuracy(model: ImageNetClassifier, folder: str | Path, size: int | None = None, batch_size: int = 64,
                        workers: int = 0) -> dict:
    """Accuracy on ImageNet-C (``DIR/<corruption>/<severity>/<wnid>/<image>``): per severity, the mean
    over severities per corruption, the mean over corruptions; CE and mCE against AlexNet where
    complete (module docstring)."""
    folder = _folder(folder, "ImageNet-C")
    by_wnid = _need_wnids(model, "ImageNet-C")
    corruptions = {}
    for corruption in _class_folders(folder):
        severities = [p for p in _class_folders(corruption) if p.name.isdigit()]
        if not severities:
            raise ValueError(f"ImageNet-C corruption folder {corruption} holds no severity folder (1..5): the layout "
                             "is DIR/<corruption>/<severity>/<wnid>/<image>")
        by_severity = {}
        for severity in sorted(severities, key=lambda p: int(p.name)):
            files, labels = _labelled_files(_class_folders(severity), by_wnid, lambda p: p.name, "wnid")
            predictions = _logits(model, files, size or model.input_size, batch_size, workers).argmax(1).numpy()
            by_severity[severity.name] = {"accuracy": float(np.mean(predictions == labels)), "images": len(files)}
        accuracy = float(np.mean([s["accuracy"] for s in by_severity.values()]))
        entry = {"accuracy": accuracy, "severities": by_severity}
        if corruption.name in ALEXNET_ERRORS and set(by_severity) == {"1", "2", "3", "4", "5"}:
            entry["ce"] = (1 - accuracy) / ALEXNET_ERRORS[corruption.name]
        corruptions[corruption.name] = entry
    if not corruptions:
        raise ValueError(f"ImageNet-C folder {folder} holds no corruption folder")
    result = {"accuracy": float(np.mean([c["accuracy"] for c in corruptions.values()])),
              "corruptions": corruptions, "mce": None}
    missing = [name for name in ALEXNET_ERRORS if "ce" not in corruptions.get(name, {})]
    if missing:
        result["mce_note"] = (f"no mCE: it needs the 15 corruptions of Hendrycks & Dietterich 2019 with severities "
                              f"1-5, and {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} is not complete")
    else:
        result["mce"] = float(np.mean([corruptions[name]["ce"] for name in ALEXNET_ERRORS]))
        result["mce_note"] = ("mean over the 15 corruptions of the error relative to AlexNet's (Hendrycks & "
                              "Dietterich 2019)")
    return result


def imagenet_a_accuracy(model: ImageNetClassifier, folder: str | Path, size: int | None = None, batch_size: int = 64,
                        workers: int = 0) -> dict:
    """Top-1 accuracy on ImageNet-A (``DIR/<wnid>/<image>``), the arg-max over the outputs of the
    folder's wnids only."""
    folder = _folder(folder, "ImageNet-A")
    by_wnid = _need_wnids(model, "ImageNet-A")
    classes = _class_folders(folder)
    wrong = [p.name for p in classes if not WNID.fullmatch(p.name)]
    if not classes or wrong:
        raise ValueError(f"ImageNet-A folder {folder} must hold one sub-folder per class named by its wnid "
                         f"(n########; found {', '.join(wrong[:3]) or 'none'})")
    files, labels = _labelled_files(classes, by_wnid, lambda p: p.name, "wnid")
    subset = np.array([by_wnid[p.name] for p in classes])
    logits = _logits(model, files, size or model.input_size, batch_size, workers)
    predictions = subset[logits[:, torch.from_numpy(subset)].argmax(1).numpy()]
    return {"accuracy": float(np.mean(predictions == labels)), "images": len(files), "classes": len(classes)}


def evaluate_ood(checkpoint: str | Path, imagenet_v2: str | Path | None = None, imagenet_c: str | Path | None = None,
                 imagenet_a: str | Path | None = None, classes: str | Path | None = None, size: int | None = None,
                 batch_size: int = 64, workers: int = 0, device: str = "cpu") -> dict:
    """The accuracies of a co-trained checkpoint on the sets given (what ``vivi ood`` runs)."""
    from vivi.eval.transfer import check_device, check_setting
    sets = {"imagenet_v2": imagenet_v2, "imagenet_c": imagenet_c, "imagenet_a": imagenet_a}
    if not any(sets.values()):
        raise ValueError("give at least one of --imagenet-v2 DIR, --imagenet-c DIR, --imagenet-a DIR")
    for name, value in (("size", size), ("batch_size", batch_size), ("workers", workers)):
        if value is not None:
            check_setting(name, value, flag=f"--{name.replace('_', '-')}", integer=True,
                          at_least=0 if name == "workers" else 1)
    check_device(device)
    for name, path in sets.items():        # every folder checked before the model is loaded
        if path is not None:
            _folder(path, {"imagenet_v2": "ImageNet-V2", "imagenet_c": "ImageNet-C", "imagenet_a": "ImageNet-A"}[name])
    model = load_imagenet_classifier(checkpoint, classes, device=device)
    measure = {"imagenet_v2": imagenet_v2_accuracy, "imagenet_c": imagenet_c_accuracy,
               "imagenet_a": imagenet_a_accuracy}
    result = {"checkpoint": str(checkpoint), "size": size or model.input_size,
              "classes": {"source": model.class_source, "outputs": model.head.out_features}}
    for name, path in sets.items():
        if path is not None:
            result[name] = {"folder": str(path), **measure[name](model, path, size, batch_size, workers)}
    return result
