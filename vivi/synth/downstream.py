"""Labeled still-image tasks drawn from the synthetic world: a small VTAB-1k of our own.

Each task renders single frames with the video renderer (same themes, backgrounds, objects,
lighting and camera), with one attribute pinned to the label. The groups follow VTAB (VIVI §4,
"Downstream evaluation"; docs/reference.md, "VTAB-1k"): *natural* (what object is it),
*specialized* (what texture/background family, like DTD or EuroSAT), *structured* (how many,
where, which way, how big: like CLEVR count, dSprites position and orientation, KITTI/CLEVR
distance).

Splits follow VTAB-1k: 1000 training images whose first 800 are ``train800`` and last 200
``val200``, and a larger ``test`` split. Images are drawn from the TASK seed domain
(``world.TASK_DOMAIN``), which no video uses, so they are held out from the pre-training videos
by construction. Labels are balanced within each split (a shuffled round robin), so every class
occurs in every split that has at least ``num_classes`` images.

Layout (the image-folder VTAB-1k layout of PyTorch fine-tuning code)::

    OUT/tasks/suite.json                       {"tasks": [{"name", "group", "num_classes"}, ...]}
    OUT/tasks/<task>/task.json                 name, group, num_classes, class_names, description, sizes
    OUT/tasks/<task>/images/000123.png         64x64 RGB
    OUT/tasks/<task>/{train800,val200,train800val200,test}.txt    lines "images/000123.png 5"
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .backgrounds import BACKGROUND_FAMILIES, sample_background
from .render import render
from .shapes import CLASS_NAMES, ORIENTED_CLASSES
from .world import TASK_DOMAIN, Shot, Theme, WorldConfig, rng_for, sample_camera, sample_lighting, sample_object

TRAIN_SIZE = 1000            # VTAB-1k: train800 + val200
TRAIN800 = 800
SPLITS = ("train", "test")   # seed words 0 and 1 of a task's image keys

# Label ranges of the structured tasks, in screen units (the frame spans [-1, 1]).
POSITION_BINS = 8
POSITION_RANGE = 0.7         # object centres x in [-0.7, 0.7], split into equal bins
ORIENTATION_BINS = 8         # 45 degrees each
SCALE_BINS = 6
SCALE_RANGE = (0.1, 0.6)     # apparent object radius, split into geometric bins
COUNT_MAX = 6


@dataclass(frozen=True)
class TaskSpec:
    name: str
    group: str                                  # natural | specialized | structured
    class_names: tuple[str, ...]
    scene: Callable                             # (rng, label, theme, config) -> one-frame Shot
    description: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _still(rng, theme: Theme, config: WorldConfig, family: int | None = None):
    """Background, camera and lighting of a random one-frame set-up of ``theme``, and the
    palette colours left for objects (as in ``world.sample_shot``)."""
    times = np.zeros(1)
    order = rng.permutation(len(theme.palette))
    family = theme.background if family is None else family
    background = sample_background(rng, family, theme.palette[order[:2]], config.background_warp)
    return background, sample_camera(rng, times, 0.0), sample_lighting(rng, times, 0.0), theme.palette[order[2:]]


def _object(rng, config, object_id, class_id, colors, camera, **pinned):
    pick = colors[rng.integers(len(colors), size=2)]
    return sample_object(rng, object_id, class_id, pick, camera, np.zeros(1), 0.0,
                         textured=config.object_textures, **pinned)


def _log_uniform(rng, low, high):
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _object_class_scene(rng, label, theme, config):
    background, camera, lighting, colors = _still(rng, theme, config)
    radius = _log_uniform(rng, 0.3, 0.55)
    obj = _object(rng, config, 0, label, colors, camera, screen_radius=radius,
                  screen_center=rng.uniform(-0.9 + radius, 0.9 - radius, 2))
    return Shot(background, camera, lighting, [obj])


def _background_scene(rng, label, theme, config):
    background, camera, lighting, colors = _still(rng, theme, config, family=label)
    objects = [_object(rng, config, i, rng.choice(theme.classes), colors, camera)
               for i in range(int(rng.integers(0, 4)))]
    return Shot(background, camera, lighting, objects)


def _count_scene(rng, label, theme, config):
    """label + 1 objects, fully inside the frame and apart, so the count is unambiguous."""
    background, camera, lighting, colors = _still(rng, theme, config)
    placed, tries = [], 0
    while len(placed) < label + 1:
        radius = rng.uniform(0.13, 0.22)
        center = rng.uniform(-0.92 + radius, 0.92 - radius, 2)
        if all(np.linalg.norm(center - c) > 1.2 * (radius + r) for c, r in placed):
            placed.append((center, radius))
        tries += 1
        if tries % 200 == 0:         # jammed: start the layout again
            placed = []
    objects = [_object(rng, config, i, rng.choice(theme.classes), colors, camera, screen_center=c,
                       screen_radius=r, deformation=0.1) for i, (c, r) in enumerate(placed)]
    return Shot(background, camera, lighting, objects)


def _position_scene(rng, label, theme, config):
    background, camera, lighting, colors = _still(rng, theme, config)
    width = 2 * POSITION_RANGE / POSITION_BINS
    x = -POSITION_RANGE + (label + rng.uniform()) * width
    obj = _object(rng, config, 0, rng.choice(theme.classes), colors, camera,
                  screen_center=(x, rng.uniform(-0.6, 0.6)), screen_radius=rng.uniform(0.15, 0.28))
    return Shot(background, camera, lighting, [obj])


def _orientation_scene(rng, label, theme, config):
    """One object of a class without rotational symmetry (its 0 is the shape as drawn)."""
    background, camera, lighting, colors = _still(rng, theme, config)
    angle = (label + rng.uniform()) * 2 * math.pi / ORIENTATION_BINS
    obj = _object(rng, config, 0, rng.choice(ORIENTED_CLASSES), colors, camera, angle=angle,
                  screen_center=rng.uniform(-0.35, 0.35, 2), screen_radius=rng.uniform(0.3, 0.5),
                  deformation=0.08)
    return Shot(background, camera, lighting, [obj])


def _scale_edges():
    low, high = SCALE_RANGE
    return np.exp(np.linspace(math.log(low), math.log(high), SCALE_BINS + 1))


def _scale_scene(rng, label, theme, config):
    background, camera, lighting, colors = _still(rng, theme, config)
    edges = _scale_edges()
    radius = _log_uniform(rng, edges[label], edges[label + 1])
    reach = max(0.0, 0.95 - radius)
    obj = _object(rng, config, 0, rng.choice(theme.classes), colors, camera, screen_radius=radius,
                  screen_center=rng.uniform(-reach, reach, 2), deformation=0.1)
    return Shot(background, camera, lighting, [obj])


def _bin_names(edges, unit=""):
    return tuple(f"[{a:g}{unit}, {b:g}{unit})" for a, b in zip(edges[:-1], edges[1:]))


TASKS = (
    TaskSpec("object_class", "natural", CLASS_NAMES, _object_class_scene,
             "class of the single object (shape); colour, texture, background, pose vary"),
    TaskSpec("background", "specialized", BACKGROUND_FAMILIES, _background_scene,
             "background texture family, with 0-3 objects in front"),
    TaskSpec("count", "structured", tuple(str(n) for n in range(1, COUNT_MAX + 1)), _count_scene,
             "number of objects (1-6), all in frame and apart"),
    TaskSpec("position", "structured",
             _bin_names(np.round(np.linspace(-POSITION_RANGE, POSITION_RANGE, POSITION_BINS + 1), 3)),
             _position_scene, "horizontal position of the single object's centre (screen units)"),
    TaskSpec("orientation", "structured",
             _bin_names(np.arange(ORIENTATION_BINS + 1) * 360 // ORIENTATION_BINS, " deg"),
             _orientation_scene, "rotation of a heart, crescent, arrow or chevron (clockwise)"),
    TaskSpec("scale", "structured", _bin_names(np.round(_scale_edges(), 3)), _scale_scene,
             "apparent radius of the single object (screen units), like a distance task"),
)
TASK_NAMES = tuple(task.name for task in TASKS)


def task_by_name(name: str) -> TaskSpec:
    """The task called ``name``; an unknown name lists the valid ones."""
    for task in TASKS:
        if task.name == name:
            return task
    raise KeyError(f"unknown task {name!r}; valid: {', '.join(TASK_NAMES)}")


def split_sizes(test_size: int) -> dict[str, int]:
    return {"train": TRAIN_SIZE, "test": test_size}


def split_labels(seed: int, task_index: int, split: str, count: int) -> np.ndarray:
    """Balanced labels of one split: a shuffled round robin over the classes."""
    rng = rng_for(seed, TASK_DOMAIN, task_index, SPLITS.index(split), 0)
    return rng.permutation(np.arange(count) % TASKS[task_index].num_classes)


def image_index(split: str, position: int) -> int:
    """File number of an image: training images first, then test images."""
    return position if split == "train" else TRAIN_SIZE + position


def task_scene(config: WorldConfig, themes: list[Theme], task_index: int, split: str,
               position: int, label: int) -> Shot:
    """The one-frame scene of image ``position`` of a split, from its own seed key."""
    rng = rng_for(config.seed, TASK_DOMAIN, task_index, SPLITS.index(split), 1, position)
    theme = themes[int(rng.integers(len(themes)))]
    return TASKS[task_index].scene(rng, int(label), theme, config)


def render_task_image(config: WorldConfig, themes: list[Theme], task_index: int, split: str,
                      position: int, label: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of a task."""
    shot = task_scene(config, themes, task_index, split, position, label)
    return render(shot, config.size, min_visible_area=config.min_visible_area).rgb[0]


def write_task_images(task_dir: Path, config: WorldConfig, themes: list[Theme], task_index: int,
                      split: str, start: int, stop: int, test_size: int) -> int:
    """Render and save images ``start:stop`` of a split (a unit of work for one process)."""
    labels = split_labels(config.seed, task_index, split, split_sizes(test_size)[split])
    for position in range(start, stop):
        rgb = render_task_image(config, themes, task_index, split, position, labels[position])
        path = task_dir / "images" / f"{image_index(split, position):06d}.png"
        cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return stop - start


def write_task_index(task_dir: Path, config: WorldConfig, task_index: int, test_size: int) -> dict:
    """List files and task.json of one task; returns its entry for suite.json."""
    task = TASKS[task_index]
    train = split_labels(config.seed, task_index, "train", TRAIN_SIZE)
    test = split_labels(config.seed, task_index, "test", test_size)

    def lines(split, labels, positions):
        return "".join(f"images/{image_index(split, p):06d}.png {labels[p]}\n" for p in positions)

    lists = {"train800": lines("train", train, range(TRAIN800)),
             "val200": lines("train", train, range(TRAIN800, TRAIN_SIZE)),
             "train800val200": lines("train", train, range(TRAIN_SIZE)),
             "test": lines("test", test, range(test_size))}
    for name, text in lists.items():
        (task_dir / f"{name}.txt").write_text(text)
    info = {"name": task.name, "group": task.group, "num_classes": task.num_classes,
            "class_names": list(task.class_names), "description": task.description,
            "splits": {"train800": TRAIN800, "val200": TRAIN_SIZE - TRAIN800,
                       "train800val200": TRAIN_SIZE, "test": test_size},
            "image_size": config.size, "seed": [config.seed, TASK_DOMAIN, task_index]}
    (task_dir / "task.json").write_text(json.dumps(info, indent=2))
    return {"name": task.name, "group": task.group, "num_classes": task.num_classes}
