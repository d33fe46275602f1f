"""``import:FILE``: detections computed elsewhere (another framework, a cluster job), read from a file.

Two formats, both in the coordinates of the *stored* frames (the JPEGs in the shards):

* JSON Lines (``.jsonl``): an optional header line ``{"class_names": [...], "coords":
  "normalized" | "pixels"}`` (default normalized), then one line per frame::

      {"video": "v0000012", "frame": 3, "boxes": [[x0, y0, x1, y1], ...],
       "labels": [2, ...], "scores": [0.9, ...]}

  ``video`` is the dataset key or the source path; ``frame`` the sampled-frame index; labels are
  class ids, or class names (then the class list is the sorted set of names when no header names it).
* COCO detection results (``.json``): ``{"images": [{"id", "file_name"}], "annotations":
  [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}], "categories": [{"id", "name"}]}``
  where ``file_name`` is the frame's member name in the shard (``v0000012.f0003.jpg``), and
  ``bbox`` is in pixels. Category ids are mapped to 0..C-1 in the order of ``categories``.

The whole file is read and checked against the dataset when the detector is built, so a file
that names unknown videos or frames stops with an error before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..data.reader import Video, VideoDataset
from .base import Detector

MEMBER = re.compile(r"^(v\d+)\.f(\d+)\.jpg$")


class ImportedDetector(Detector):
    def __init__(self, path: str | Path, root: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"detections file {self.path} does not exist")
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.path.stem)
        dataset = VideoDataset(root)
        self._videos = {v.key: v for v in dataset.videos}
        by_source = {v.source: v.key for v in dataset.videos}
        rows = self._read_coco() if self.path.suffix == ".json" else self._read_jsonl(by_source)
        self._boxes: dict[str, dict[int, np.ndarray]] = defaultdict(dict)
        unknown = []
        for key, frame, boxes in rows:
            video = self._videos.get(key)
            if video is None or not 0 <= frame < video.num_frames:
                unknown.append(f"{key} frame {frame}")
                continue
            self._boxes[key][frame] = boxes
        if unknown:
            raise ValueError(f"{self.path} references {len(unknown)} frames not in {root}: "
                             f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                             "(videos are named by their key, e.g. v0000012, or their source path)")

    def settings(self) -> dict:
        # the content too: a corrected file imported under the same name is other detections
        return {"file": str(self.path.resolve()), "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()}

    def detect(self, video: Video, dataset: VideoDataset) -> list[np.ndarray]:
        frames = self._boxes.get(video.key, {})
        return [frames.get(i, np.zeros((0, 6), np.float32)) for i in range(video.num_frames)]

    def _read_jsonl(self, by_source: dict[str, str]):
        lines, numbers = [], []
        for number, text in enumerate(self.path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{self.path} line {number} is not JSON ({error.msg})") from None
                numbers.append(number)
        header = {}
        if lines and "video" not in lines[0]:
            header = lines.pop(0)
            numbers.pop(0)
        coords = header.get("coords", "normalized")
        if coords not in ("normalized", "pixels"):
            raise ValueError(f"{self.path}: coords must be 'normalized' or 'pixels', not {coords!r}")
        names = header.get("class_names")
        if names is None:
            names = sorted({label for line in lines for label in line.get("labels", []) if isinstance(label, str)})
        self.class_names = list(names)
        index = {name: i for i, name in enumerate(self.class_names)}
        rows = []
        for n, line in zip(numbers, lines):
            if "video" not in line or "frame" not in line:
                raise ValueError(f"{self.path} line {n}: a frame's line needs 'video' and 'frame' (and 'boxes', "
                                 "'labels', optionally 'scores')")
            key = by_source.get(str(line["video"]), line["video"])
            boxes = np.asarray(line.get("boxes", []), np.float32).reshape(-1, 4)
            if np.any(boxes[:, 2:] < boxes[:, :2]):
                raise ValueError(f"{self.path} line {n}: a box is not [x0, y0, x1, y1] with x0 <= x1 and y0 <= y1")
            if coords == "normalized" and np.any((boxes < -0.01) | (boxes > 1.01)):
                raise ValueError(f"{self.path} line {n}: box coordinates outside [0, 1]; if they are pixels, start "
                                 'the file with the header line {"coords": "pixels"}')
            labels = [index[label] if isinstance(label, str) else int(label) for label in line.get("labels", [])]
            scores = line.get("scores", [1.0] * len(labels))
            if not (len(boxes) == len(labels) == len(scores)):
                raise ValueError(f"{self.path} line {n}: boxes, labels and scores differ in length")
            if any(not 0 <= label < len(self.class_names) for label in labels):
                raise ValueError(f"{self.path} line {n}: a label is outside the {len(self.class_names)} classes"
                                 + ("; integer labels need a header line naming the classes: "
                                    '{"class_names": ["person", ...]}' if "class_names" not in header else ""))
            if coords == "pixels" and key in self._videos:
                h, w = self._videos[key].frame_size
                boxes = boxes / np.array([w, h, w, h], np.float32)
            rows.append((key, int(line["frame"]), _stack(boxes, labels, scores)))
        return rows

    def _read_coco(self):
        data = json.loads(self.path.read_text())
        for field in ("images", "annotations", "categories"):
            if field not in data:
                raise ValueError(f"{self.path}: a COCO detections file needs '{field}'")
        category = {c["id"]: i for i, c in enumerate(data["categories"])}
        self.class_names = [c["name"] for c in data["categories"]]
        images = {}
        for image in data["images"]:
            match = MEMBER.match(Path(image["file_name"]).name)
            if match is None:
                raise ValueError(f"{self.path}: image file name {image['file_name']!r} is not a frame member "
                                 "name like v0000012.f0003.jpg")
            images[image["id"]] = (match.group(1), int(match.group(2)))
        per_frame = defaultdict(list)
        for a in data["annotations"]:
            if a["image_id"] not in images or a["category_id"] not in category:
                raise ValueError(f"{self.path}: annotation {a} names an unknown image or category")
            per_frame[images[a["image_id"]]].append(a)
        rows = []
        for (key, frame), found in per_frame.items():
            boxes = np.asarray([a["bbox"] for a in found], np.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]                                   # x, y, w, h -> x0, y0, x1, y1
            if key in self._videos:
                h, w = self._videos[key].frame_size
                boxes /= np.array([w, h, w, h], np.float32)
            rows.append((key, frame, _stack(boxes, [category[a["category_id"]] for a in found],
                                            [a.get("score", 1.0) for a in found])))
        return rows


def _stack(boxes: np.ndarray, labels, scores) -> np.ndarray:
    out = np.zeros((len(boxes), 6), np.float32)
    out[:, :4], out[:, 4], out[:, 5] = boxes, labels, scores
    return out
