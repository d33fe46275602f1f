"""``detect_dataset``: run a detector over every sampled frame and store the boxes beside the shards.

Output (read by ``vivi.data.boxes``)::

    DATA/detections/NAME/detector.json       detector name, class names, coordinate convention,
                                             max_per_frame, min_score and the detector's settings
    DATA/detections/NAME/shard-000000.json   {"videos": {key: [[[x0, y0, x1, y1, class, score], ...]
                                                                # one list per sampled frame
                                                                ]}}

One file per shard, written atomically once the whole shard is done: a re-run skips finished
shards (resumable) and an interrupted one leaves no partial file. ``detector.json`` is written
first; a re-run with other settings under the same name stops with an error instead of mixing
two detectors' boxes.

A dataset in object storage (``root`` a URL) gets the same objects. A detector that looks at the
frames gets them from a local copy of their shard's tar, fetched whole once
(``VideoDataset.shard_at_hand``), rather than by a request per frame.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.boxes import DETECTIONS_DIR, write_detections_index
from ..data.reader import VideoDataset
from ..files import as_json, refuse_other_settings
from ..ingest.index import INDEX_FILE
from ..ingest.shards import write_json_atomic
from ..storage import is_url, join, listing, location, remove
from .base import Detector, keep_top


@dataclass
class DetectSummary:
    name: str
    folder: Path | str
    shards_written: int
    shards_skipped: int
    frames: int
    boxes: int
    seconds: float

    def __str__(self) -> str:
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (f"detections '{self.name}' in {self.folder}: {self.shards_written} shards written, "
                f"{self.shards_skipped} already done; {self.frames} frames, {self.boxes} boxes "
                f"({rate:.0f} frames/s)")


def detect_dataset(root: str | Path, detector: Detector, *, max_per_frame: int = 5, min_score: float = 0.05,
                   progress: bool = True) -> DetectSummary:
    """Annotate every sampled frame of the dataset at ``root`` with ``detector``."""
    if max_per_frame < 1 or not 0 <= min_score <= 1:
        raise ValueError(f"--max-per-frame must be at least 1 and --min-score within [0, 1] "
                         f"(got {max_per_frame}, {min_score})")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", detector.name):
        raise ValueError(f"detector name {detector.name!r} is not a folder name (letters, digits, _ . -): "
                         f"DATA/{DETECTIONS_DIR}/NAME holds the detections")
    start = time.perf_counter()
    root = location(root)
    dataset = VideoDataset(root)
    folder = join(root, DETECTIONS_DIR, detector.name)
    meta = {"detector": detector.name, "coords": "xyxy_normalized", "class_names": list(detector.class_names),
            "max_per_frame": max_per_frame, "min_score": min_score, "settings": detector.settings()}
    meta = as_json(meta)
    meta_path = join(folder, "detector.json")
    if refuse_other_settings(meta_path, meta, holds="detections",
                             fix="use another detector name, or delete that folder to redo them") is None:
        if not is_url(folder):
            folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(meta_path, meta)

    by_shard: dict[str, list] = {}
    for video in dataset.videos:
        by_shard.setdefault(video.shard, []).append(video)
    written = listing(folder)
    todo = {shard: videos for shard, videos in by_shard.items() if _sidecar(shard) not in written}
    if todo:        # the boxes change: the columns are written again once every shard has its file
        remove(join(folder, INDEX_FILE))
    frames = boxes = 0
    bar = tqdm(total=sum(v.num_frames for videos in todo.values() for v in videos), unit="frame",
               desc=f"detect {detector.name}", disable=not progress, dynamic_ncols=True)
    for shard, videos in todo.items():
        out = {}
        with dataset.shard_at_hand(shard):
            for video in videos:
                detections = detector.detect(video, dataset)
                if len(detections) != video.num_frames:
                    raise RuntimeError(f"detector {detector.name} returned {len(detections)} frames of detections "
                                       f"for {video.key}, which has {video.num_frames} sampled frames")
                kept = [keep_top(np.asarray(d, np.float32).reshape(-1, 6), max_per_frame, min_score)
                        for d in detections]
                out[video.key] = [np.round(k, 5).tolist() for k in kept]
                frames += video.num_frames
                boxes += sum(len(k) for k in kept)
                bar.update(video.num_frames)
        write_json_atomic(join(folder, _sidecar(shard)), {"videos": out})
    bar.close()
    if todo or INDEX_FILE not in written:
        write_detections_index(root, detector.name, dataset.index)
    return DetectSummary(detector.name, folder, len(todo), len(by_shard) - len(todo), frames, boxes,
                         time.perf_counter() - start)


def _sidecar(shard: str) -> str:
    return Path(shard).with_suffix(".json").name
