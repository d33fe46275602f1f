"""Downstream tasks and the suite file that names them.

Every task is read into the four VTAB-1k splits (VIVI §4, Object-centric §4.2; docs/reference.md,
"VTAB-1k"): ``train800`` (first 800 training images), ``val200`` (the next 200),
``train800val200`` (their union, 1000 images) and ``test``.

Sources (the ``source`` field of a suite entry):

* ``folder`` -- VTAB-1k exported as an image folder with four list files
  ``train800.txt``, ``val200.txt``, ``train800val200.txt``, ``test.txt`` whose lines are
  ``images/000123.png <label>`` (path relative to the task folder). This is the layout of the
  parameter-efficient fine-tuning repositories and exactly what ``vivi synth`` writes into
  ``WORLD/tasks/<task>/``, so one reader serves both.
* ``digits`` -- scikit-learn's bundled 8x8 digits (1797 images, 10 classes), shuffled with a fixed
  seed; the first 800 are ``train800``, the next 200 ``val200``, the remaining 797 ``test``.
  The 8x8 images (values 0..16) become grey RGB uint8; the protocol's resize upsamples them.
* ``photos`` -- which way up is a piece of a photograph (4 classes): pieces of the photographs
  that matplotlib and scikit-learn install, turned by 0-270 degrees (:mod:`vivi.eval.photos`); a
  real-image task that needs no download.
* ``tfds`` -- a TensorFlow Datasets builder, imported only when used (``tensorflow_datasets`` is
  optional). Splits are TFDS split strings, by default ``train[:800]``, ``train[800:1000]`` and
  ``test``; VTAB's own per-dataset choices (e.g. val200 from a validation split) must be written
  into the suite entry. *Untested here* (no TensorFlow in vivi's environment).

A folder of VTAB-1k task folders (``caltech101/``, ``cifar/``, ..., ``smallnorb_ele/``, each with
the four list files: the layout the parameter-efficient fine-tuning repositories distribute) is a
suite as it is: vivi knows each task's group and class count (:data:`VTAB1K`, aliases such as
``cifar100`` or ``retinopathy`` included) and says which of the 19 are missing.

Suite file (JSON, or YAML for ``.yaml``/``.yml``)::

    {"tasks": [
      {"name": "caltech101", "group": "natural", "source": "folder", "path": "vtab-1k/caltech101",
       "num_classes": 102},
      {"name": "digits", "group": "natural", "source": "digits"},
      {"name": "svhn", "group": "natural", "source": "tfds", "tfds_name": "svhn_cropped",
       "splits": {"train800": "train[:800]", "val200": "train[800:1000]", "test": "test"}}
    ]}

``source`` defaults to ``folder`` and ``path`` to the task's name, relative to the suite file's
folder: the synthetic world's ``WORLD/tasks/suite.json`` is a valid suite file as it is.
``num_classes`` defaults to ``task.json``'s value (folder), 10 (digits), 4 (photos) or the TFDS
label count.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vivi.data.images import read_image

__all__ = ["GROUPS", "SOURCES", "SPLITS", "VTAB1K", "Split", "Task", "load_split", "load_suite", "vtab1k_folders"]

SPLITS = ("train800", "val200", "train800val200", "test")
# The keys a suite entry may have besides name, group and source.
ENTRY_KEYS = {"folder": {"path", "num_classes"}, "digits": {"num_classes"}, "photos": {"num_classes"},
              "tfds": {"num_classes", "tfds_name", "splits", "image_key", "label_key", "data_dir"}}
GROUPS = ("natural", "specialized", "structured")
SOURCES = ("folder", "digits", "photos", "tfds")
DIGITS_SEED = 0                  # shuffle of sklearn's digits before the 800/200/rest split

# The 19 tasks of VTAB-1k (Zhai et al. 2019; VIVI §4; Object-centric §4.2; docs/reference.md,
# "VTAB-1k"), named as the PyTorch parameter-efficient fine-tuning repositories name their task
# folders: name -> (group, classes, other names the folder may have).
VTAB1K: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "caltech101": ("natural", 102, ("caltech", "caltech_101")),
    "cifar": ("natural", 100, ("cifar100", "cifar_100")),
    "dtd": ("natural", 47, ()),
    "oxford_flowers102": ("natural", 102, ("flowers102", "oxford_flowers_102", "flowers")),
    "oxford_iiit_pet": ("natural", 37, ("pets", "oxford_iiit_pets", "oxford_pet")),
    "svhn": ("natural", 10, ("svhn_cropped",)),
    "sun397": ("natural", 397, ()),
    "patch_camelyon": ("specialized", 2, ("pcam", "camelyon")),
    "eurosat": ("specialized", 10, ()),
    "resisc45": ("specialized", 45, ()),
    "diabetic_retinopathy": ("specialized", 5, ("retinopathy",)),
    "clevr_count": ("structured", 8, ("clevr_count_all",)),
    "clevr_dist": ("structured", 6, ("clevr_closest_object_distance", "clevr_distance")),
    "dmlab": ("structured", 6, ()),
    "kitti": ("structured", 4, ("kitti_distance", "kitti_closest_vehicle_distance")),
    "dsprites_loc": ("structured", 16, ("dsprites_location", "dsprites_label_x_position")),
    "dsprites_ori": ("structured", 16, ("dsprites_orientation", "dsprites_label_orientation")),
    "smallnorb_azi": ("structured", 18, ("smallnorb_azimuth", "smallnorb_label_azimuth")),
    "smallnorb_ele": ("structured", 9, ("smallnorb_elevation", "smallnorb_label_elevation")),
}


@dataclass(frozen=True)
class Task:
    """One downstream task of a suite (see the module docstring for the fields)."""
    name: str
    group: str                   # natural | specialized | structured (VTAB's groups)
    source: str = "folder"       # folder | digits | tfds
    path: Path | None = None     # folder source: the task folder (list files + images)
    num_classes: int | None = None
    options: dict = field(default_factory=dict, hash=False, compare=False)   # tfds: tfds_name, splits, keys


@dataclass
class Split:
    """The images and labels of one split. ``images``: uint8 (H, W, 3) arrays (sizes may differ) or
    image paths decoded when a batch needs them (the large test splits of folder tasks);
    ``ids``: where each image came from (a path or ``source:index``), for errors and hooks."""
    task: str
    name: str
    images: list[np.ndarray | Path]
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices, resolution: int) -> torch.Tensor:
        """Float (n, 3, r, r) in [0, 1]: bilinear resize ignoring the aspect ratio, no antialiasing
        (``tf.image.resize`` as VTAB's preprocessing does), no augmentation."""
        out = []
        for i in indices:
            array = self.images[int(i)]
            array = read_image(array) if isinstance(array, Path) else array
            image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
            if image.shape[-2:] != (resolution, resolution):
                image = F.interpolate(image, size=(resolution, resolution), mode="bilinear",
                                      align_corners=False, antialias=False)
            out.append(image)
        return torch.cat(out).clamp_(0, 1)


def _read_suite_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise ValueError(f"{path}: a suite file holds {{'tasks': [{{'name', 'group', 'source', ...}}, ...]}}")
    return data


def vtab1k_folders(folder: Path) -> dict[str, Path]:
    """{VTAB-1k task name: its folder} for the task folders found in ``folder`` under their names
    or aliases (:data:`VTAB1K`), each holding the four list files."""
    found = {}
    for name, (_, _, aliases) in VTAB1K.items():
        for candidate in (name, *aliases):
            task = folder / candidate
            if all((task / f"{split}.txt").is_file() for split in SPLITS):
                found[name] = task
                break
    return found


def _vtab1k_suite(folder: Path, found: dict[str, Path]) -> list[Task]:
    missing = [name for name in VTAB1K if name not in found]
    if missing:
        print(f"note: {folder} holds {len(found)} of the 19 VTAB-1k tasks; missing: {', '.join(missing)}. Means "
              "are over the tasks found, so they are not the papers' VTAB-1k score", file=sys.stderr)
    return [Task(name, VTAB1K[name][0], "folder", task, VTAB1K[name][1]) for name, task in found.items()]


def load_suite(path: str | Path) -> list[Task]:
    """The tasks of a suite file, a world's ``tasks`` folder, a world folder
    (``WORLD/tasks/suite.json``), or a folder of VTAB-1k task folders (:data:`VTAB1K`)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "suite.json", path / "tasks" / "suite.json", path / "suite.yaml"):
            if candidate.exists():
                path = candidate
                break
        else:
            found = vtab1k_folders(path)
            if found:
                return _vtab1k_suite(path, found)
            raise FileNotFoundError(f"{path} holds no suite.json (nor tasks/suite.json) and no VTAB-1k task folder "
                                    "(caltech101/, cifar/, ... with train800.txt, val200.txt, train800val200.txt, "
                                    "test.txt): pass a suite file, a folder of VTAB-1k tasks, or the tasks folder "
                                    "of `vivi synth`")
    if not path.exists():
        raise FileNotFoundError(f"suite file {path} does not exist")
    tasks = []
    for entry in _read_suite_file(path)["tasks"]:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ValueError(f"{path}: every task entry needs a 'name', got {entry!r}")
        entry = dict(entry)
        name, source = str(entry.pop("name")), entry.pop("source", "folder")
        group = entry.pop("group", "natural" if source in ("digits", "photos") else None)
        if source not in SOURCES:
            raise ValueError(f"{path}: task {name!r} has unknown source {source!r}; valid: {', '.join(SOURCES)}")
        if group not in GROUPS:
            raise ValueError(f"{path}: task {name!r} has group {group!r}; valid: {', '.join(GROUPS)}")
        unknown = sorted(set(entry) - ENTRY_KEYS[source])
        if unknown:
            raise ValueError(f"{path}: task {name!r} has unknown key(s) {', '.join(map(repr, unknown))}; valid for "
                             f"source {source!r}: name, group, source, {', '.join(sorted(ENTRY_KEYS[source]))}")
        folder = (path.parent / entry.pop("path", name)) if source == "folder" else None
        if folder is not None and not folder.is_dir():
            raise FileNotFoundError(f"{path}: the folder {folder} of task {name!r} does not exist "
                                    "(its 'path' is relative to the suite file)")
        num_classes = entry.pop("num_classes", None)
        if source in ("digits", "photos"):
            num_classes = num_classes or (10 if source == "digits" else 4)
        elif source == "folder" and num_classes is None and (folder / "task.json").exists():
            num_classes = json.loads((folder / "task.json").read_text()).get("num_classes")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"{path}: task {name!r} has num_classes {num_classes!r}; it must be an integer >= 2")
        tasks.append(Task(name, group, source, folder, num_classes, entry))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: task names must be unique, got {names}")
    return tasks


def _check_labels(labels: np.ndarray, num_classes: int | None, where: str) -> None:
    if num_classes is not None and len(labels):
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if len(bad):
            raise ValueError(f"{where}: label {labels[bad[0]]} (entry {bad[0] + 1}) is outside 0..{num_classes - 1}")


def _folder_split(task: Task, split: str) -> Split:
    lst = task.path / f"{split}.txt"
    if not lst.exists():
        raise FileNotFoundError(f"split list {lst} of task {task.name!r} does not exist")
    paths, labels = [], []
    for number, line in enumerate(lst.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            label = int(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"{lst} line {number}: expected '<image path> <integer label>', got {line!r}") from None
        if task.num_classes is not None and not 0 <= label < task.num_classes:
            raise ValueError(f"{lst} line {number}: label {label} is outside 0..{task.num_classes - 1}")
        if label < 0:
            raise ValueError(f"{lst} line {number}: label {label} is negative; labels are 0, 1, 2, ...")
        paths.append(task.path / parts[0])
        labels.append(label)
    if not paths:
        raise ValueError(f"split list {lst} is empty")
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"image {p} (listed in {lst}) does not exist")
    # training splits (<= 1000 images) are decoded once and kept; test images (VTAB: up to ~22k)
    # are decoded batch by batch. read_image raises ValueError naming a file it cannot decode.
    images = list(paths) if split == "test" else [read_image(p) for p in paths]
    return Split(task.name, split, images, np.asarray(labels, np.int64), [str(p) for p in paths])


def _digits_split(task: Task, split: str) -> Split:
    from sklearn.datasets import load_digits
    digits = load_digits()
    order = np.random.default_rng(DIGITS_SEED).permutation(len(digits.target))
    ranges = {"train800": order[:800], "val200": order[800:1000], "train800val200": order[:1000],
              "test": order[1000:]}
    index = ranges[split]
    grey = np.round(digits.images[index] * (255 / 16)).astype(np.uint8)
    images = [np.repeat(g[:, :, None], 3, axis=2) for g in grey]
    labels = digits.target[index].astype(np.int64)
    _check_labels(labels, task.num_classes, f"digits ({task.name})")
    return Split(task.name, split, images, labels, [f"digits:{i}" for i in index])


def _photos_split(task: Task, split: str) -> Split:
    from .photos import photo_split
    images, labels, ids = photo_split(split)
    _check_labels(labels, task.num_classes, f"photos ({task.name})")
    return Split(task.name, split, images, labels, ids)


def _tfds_split(task: Task, split: str) -> Split:  # pragma: no cover - needs tensorflow_datasets
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ValueError(f"task {task.name!r} has source 'tfds' but tensorflow_datasets is not installed "
                         "(pip install tensorflow-datasets tensorflow); or export the task as an image "
                         "folder") from None
    options = task.options
    splits = {"train800": "train[:800]", "val200": "train[800:1000]", "test": "test", **options.get("splits", {})}
    image_key, label_key = options.get("image_key", "image"), options.get("label_key", "label")
    parts = ["train800", "val200"] if split == "train800val200" and "train800val200" not in splits else [split]
    images, labels, ids = [], [], []
    for part in parts:
        data = tfds.load(options.get("tfds_name", task.name), split=splits[part],
                         data_dir=options.get("data_dir"))
        for i, example in enumerate(tfds.as_numpy(data)):
            image = example[image_key]
            images.append(np.repeat(image, 3, axis=2) if image.shape[-1] == 1 else image[..., :3])
            labels.append(int(example[label_key]))
            ids.append(f"tfds:{options.get('tfds_name', task.name)}:{splits[part]}:{i}")
    labels = np.asarray(labels, np.int64)
    _check_labels(labels, task.num_classes, f"tfds {options.get('tfds_name', task.name)} ({task.name})")
    return Split(task.name, split, images, labels, ids)


def load_split(task: Task, split: str) -> Split:
    """Read one split of a task (decoded uint8 images + labels); errors name the offending file."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    reader = {"folder": _folder_split, "digits": _digits_split, "photos": _photos_split,
              "tfds": _tfds_split}[task.source]
    return reader(task, split)


def infer_num_classes(task: Task, splits: list[Split]) -> int:
    """The task's class count: declared, or one more than the largest label seen."""
    if task.num_classes is not None:
        return task.num_classes
    return int(max(int(s.labels.max()) for s in splits)) + 1
