"""The photo-orientation task: real photographs installed with vivi's dependencies, the same on
every machine, as a suite source and as an image folder."""
from __future__ import annotations

import json

import numpy as np

from vivi.eval.photos import PHOTO_SIZE, SPLIT_SIZES, photo_split, write_photo_task
from vivi.eval.suite import load_split, load_suite


def test_splits_are_fixed_balanced_and_turned_as_labelled():
    """Catches a split drawn from an unseeded generator (a different task on every run), train800 and
    val200 drawn from one stream (the same pieces twice), and labels that do not say the turn."""
    images, labels, ids = photo_split("train800")
    again, labels_again, _ = photo_split("train800")
    assert len(images) == SPLIT_SIZES["train800"] and all(np.array_equal(a, b) for a, b in zip(images, again))
    assert np.array_equal(labels, labels_again) and set(labels.tolist()) == {0, 1, 2, 3}
    assert images[0].shape == (PHOTO_SIZE, PHOTO_SIZE, 3) and images[0].dtype == np.uint8
    assert np.bincount(labels, minlength=4).min() > 150           # about 200 of each turn
    val, _, _ = photo_split("val200")
    assert not any(np.array_equal(a, b) for a in val[:20] for b in images[:200])
    union = photo_split("train800val200")
    assert len(union[0]) == 1000 and np.array_equal(union[1][:800], labels)
    assert len(set(ids)) == len(ids)


def test_the_suite_source_and_the_written_folder_give_the_same_task(tmp_path):
    suite_file = tmp_path / "photos.json"
    suite_file.write_text(json.dumps({"tasks": [{"name": "photo-orientation", "source": "photos"}]}))
    [task] = load_suite(suite_file)
    assert task.num_classes == 4 and task.group == "natural"
    [folder_task] = load_suite(write_photo_task(tmp_path / "written"))
    for split in ("val200", "train800val200"):
        memory, disk = load_split(task, split), load_split(folder_task, split)
        assert np.array_equal(memory.labels, disk.labels)
        assert all(np.array_equal(a, b) for a, b in zip(memory.images, disk.images))   # PNG is lossless
