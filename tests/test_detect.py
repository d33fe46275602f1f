"""`vivi detect`: detections stored beside the shards, filtered, resumable, read back by the loader."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ground_truth
from vivi.data import ClipConfig, VideoClipDataset, VideoDataset, load_detections
from vivi.data.inspect import render_contact_sheet
from vivi.detect import ImageDetector, build_detector, detect_dataset, keep_top


@pytest.fixture()
def data(dataset, tmp_path):
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    return copy


def test_groundtruth_round_trip(world, data):
    summary = detect_dataset(data, build_detector("groundtruth"), progress=False)
    assert summary.shards_written == 3 and summary.boxes > 0
    truth = ground_truth(world)
    detections = load_detections(data, "groundtruth")
    for video in VideoDataset(data).videos:
        gt = truth[video.source]
        for frame, native in enumerate(video.frame_native_index):
            expected = [box + [cls] for box, cls in zip(gt["frames"][native]["boxes"], gt["frames"][native]["class_ids"])]
            got = detections.frame_boxes(video.key, frame)
            scale = np.array([gt["width"], gt["height"]] * 2)
            got_pixels = sorted((np.round(b[:4] * scale).astype(int).tolist() + [int(b[4])]) for b in got)
            assert got_pixels == sorted(expected)          # the world draws at most 5 boxes per frame
    again = detect_dataset(data, build_detector("groundtruth"), progress=False)
    assert again.shards_written == 0 and again.shards_skipped == 3


class FixedDetector(ImageDetector):
    """Six boxes per frame with scores 0.01 .. 0.9."""
    name = "fixed"
    class_names = ["a", "b"]

    def detect_images(self, images):
        assert all(img.ndim == 3 and img.shape[2] == 3 for img in images)
        scores = [0.01, 0.04, 0.3, 0.9, 0.5, 0.2]
        return [np.array([[0.1, 0.1, 0.4, 0.4, i % 2, s] for i, s in enumerate(scores)], np.float32)
                for _ in images]


def test_max_per_frame_and_min_score(data):
    detect_dataset(data, FixedDetector(), max_per_frame=3, min_score=0.05, progress=False)
    video = VideoDataset(data).videos[0]
    boxes = load_detections(data, "fixed").frame_boxes(video.key, 0)
    assert boxes[:, 5].tolist() == pytest.approx([0.9, 0.5, 0.3])
    meta = json.loads((data / "detections" / "fixed" / "detector.json").read_text())
    assert meta["coords"] == "xyxy_normalized" and meta["class_names"] == ["a", "b"]
    with pytest.raises(ValueError, match="other settings"):
        detect_dataset(data, FixedDetector(), max_per_frame=5, progress=False)
    assert keep_top(np.zeros((0, 6), np.float32), 5, 0.05).shape == (0, 6)


def test_loader_and_contact_sheet_use_the_boxes(data, tmp_path):
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    clip = VideoClipDataset(data, ClipConfig(shots=2, frames=2, detector="groundtruth"))[(0, 0)]
    assert (clip["box_labels"] >= 0).any()
    path = render_contact_sheet(data, tmp_path / "sheet.png", videos=1, detector="groundtruth")
    assert path.stat().st_size > 0


def test_unknown_detector_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid detectors: groundtruth"):
        build_detector("yolo")
