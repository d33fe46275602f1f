"""`vivi detect`: detections stored beside the shards, filtered, resumable, read back by the loader."""
from __future__ import annotations

import json
import re
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
            truth_frame = gt["frames"][native]
            expected = [box + [cls] for box, cls in zip(truth_frame["boxes"], truth_frame["class_ids"])]
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
    for settings in ({"max_per_frame": 0}, {"max_per_frame": -1}, {"min_score": 2.0}):
        with pytest.raises(ValueError, match="--max-per-frame must be at least 1"):
            detect_dataset(data, FixedDetector(), progress=False, **settings)
    escaping = FixedDetector()
    escaping.name = "../../elsewhere"
    with pytest.raises(ValueError, match="not a folder name"):
        detect_dataset(data, escaping, progress=False)


def test_loader_and_contact_sheet_use_the_boxes(data, tmp_path):
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    clip = VideoClipDataset(data, ClipConfig(shots=2, frames=2, detector="groundtruth"))[(0, 0)]
    assert (clip["box_labels"] >= 0).any()
    path = render_contact_sheet(data, tmp_path / "sheet.png", videos=1, detector="groundtruth")
    assert path.stat().st_size > 0


def test_unknown_detector_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid detectors: groundtruth"):
        build_detector("yolo")


def test_import_jsonl_by_key_and_source(data):
    video = VideoDataset(data).videos[0]
    h, w = video.frame_size
    path = data.parent / "dets.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        {"coords": "pixels"},
        {"video": video.key, "frame": 0, "boxes": [[0, 0, w / 2, h / 4]], "labels": ["cat"], "scores": [0.8]},
        {"video": video.source, "frame": 1, "boxes": [[w / 4, 0, w, h]], "labels": ["dog"], "scores": [0.6]},
    ]) + "\n")
    detect_dataset(data, build_detector(f"import:{path}", data), progress=False)
    detections = load_detections(data, "dets")
    assert detections.class_names == ["cat", "dog"]
    np.testing.assert_allclose(detections.frame_boxes(video.key, 0), [[0, 0, 0.5, 0.25, 0, 0.8]], atol=1e-5)
    np.testing.assert_allclose(detections.frame_boxes(video.key, 1), [[0.25, 0, 1, 1, 1, 0.6]], atol=1e-5)
    assert len(detections.frame_boxes(video.key, 2)) == 0
    # the same file, corrected, under the same name: other detections, refused rather than kept stale
    path.write_text(path.read_text().replace("0.8", "0.9"))
    with pytest.raises(ValueError, match="other settings"):
        detect_dataset(data, build_detector(f"import:{path}", data), progress=False)


@pytest.mark.parametrize("lines, words", [
    (['{"video": "V", "frame": 0, "boxes": [[10, 10, 40, 50]], "labels": ["cat"]}'], "outside [0, 1]"),
    (['{"video": "V", "frame": 0, "boxes": [[0.5, 0.5, 0.2, 0.2]], "labels": ["cat"]}'], "x0 <= x1"),
    (['{"video": "V", "boxes": [], "labels": []}'], "line 1: a frame's line needs 'video' and 'frame'"),
    (['{"video": "V", "frame": 0, "boxes": [[0, 0, 1, 1]], "labels": [0]}'], "header line naming the classes"),
    (['{"coords": "normalized"}', '{"video": "V", "frame": 0, "boxes": [[0, 0'], "line 2 is not JSON")])
def test_import_mistakes_name_the_line(data, lines, words):
    key = VideoDataset(data).videos[0].key
    path = data.parent / "mistake.jsonl"
    path.write_text("\n".join(lines).replace('"V"', f'"{key}"') + "\n")
    with pytest.raises(ValueError, match=re.escape(words)):
        build_detector(f"import:{path}", data)


def test_import_coco_results(data):
    video = VideoDataset(data).videos[1]
    h, w = video.frame_size
    path = data.parent / "coco.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": f"{video.key}.f0002.jpg"}],
        "annotations": [{"image_id": 7, "category_id": 18, "bbox": [w / 4, h / 4, w / 2, h / 2], "score": 0.7}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}))
    detect_dataset(data, build_detector(f"import:{path}", data), progress=False)
    detections = load_detections(data, "coco")
    np.testing.assert_allclose(detections.frame_boxes(video.key, 2), [[0.25, 0.25, 0.75, 0.75, 1, 0.7]], atol=1e-5)


def test_import_of_unknown_videos_writes_nothing(data):
    path = data.parent / "bad.jsonl"
    path.write_text(json.dumps({"video": "v9999999", "frame": 0, "boxes": [], "labels": [], "scores": []}) + "\n")
    with pytest.raises(ValueError, match="v9999999 frame 0"):
        build_detector(f"import:{path}", data)
    assert not (data / "detections" / "bad").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_detector(f"import:{data.parent / 'missing.jsonl'}", data)


def test_inspect_counts_boxes_per_class_and_scores(data):
    from vivi.data.inspect import dataset_stats, format_stats
    assert dataset_stats(data)["detections"] == {}
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    detect_dataset(data, FixedDetector(), max_per_frame=3, progress=False)
    stats = dataset_stats(data)
    frames = sum(v.num_frames for v in VideoDataset(data).videos)
    fixed = stats["detections"]["fixed"]
    assert fixed["frames"] == fixed["frames_with_boxes"] == frames and fixed["boxes"] == 3 * frames
    assert fixed["per_class"] == {"a": 2 * frames, "b": frames}                   # scores 0.3, 0.5 (a) and 0.9 (b)
    assert fixed["score_histogram"]["counts"] == [0, 0, 0, frames, 0, frames, 0, 0, 0, frames]
    assert fixed["score_histogram"]["edges"][:3] == [0.0, 0.1, 0.2]
    truth = stats["detections"]["groundtruth"]
    assert sum(truth["per_class"].values()) == truth["boxes"] == truth["score_histogram"]["counts"][-1] > 0
    text = format_stats(stats)
    assert f"detections 'fixed': {3 * frames} boxes on {frames}/{frames} frames (3 per frame)" in text
    assert f"a {2 * frames}, b {frames}" in text


def test_a_killed_writers_temporary_file_is_removed_by_the_next_run(data):
    """A detections file being written when its process was killed stays as `NAME.tmp-HOST-PID`;
    the next run on the dataset removes it (it would be left for good otherwise)."""
    import subprocess
    import sys

    from vivi.ingest.shards import shared_tmp_name
    folder = data / "detections" / "groundtruth"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                       # a process id that no longer runs
    stale = shared_tmp_name(folder / "shard-000000.json").with_name(
        shared_tmp_name(folder / "shard-000000.json").name.rsplit("-", 1)[0] + f"-{dead.pid}")
    stale.write_text('{"videos": {')
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    assert not stale.exists() and not list(folder.glob("*.tmp*"))
