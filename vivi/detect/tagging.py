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
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data.boxes import DETECTIONS_DIR, parse_detections, write_detections_index
from ..data.reader import VideoDataset
from ..files import as_json, refuse_other_settings, writer_lock
from ..ingest.index import INDEX_FILE
from ..ingest.shards import remove_stale_tmp_files, write_json_atomic
from ..storage import is_url, join, listing, location, read_each, remove
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


def detect_dataset(root: str | Path, detector: Detector | str, *, max_per_frame: int = 5, min_score: float = 0.05,
                   progress: bool = True, ray: str | None = None, threads: int | None = None) -> DetectSummary:
    """Annotate every sampled frame of the dataset at ``root`` with ``detector`` (a detector, or
    its spec string for :func:`vivi.detect.build_detector`).

    ``ray``: run each shard as a Ray task (``vivi.cluster``) on the cluster at this address, or on
    a local Ray instance ("local"); each task builds the detector from its spec where it runs and
    holds ``threads`` CPUs (and a GPU if the detector's ``device`` is one).
    """
    if max_per_frame < 1 or not 0 <= min_score <= 1:
        raise ValueError(f"--max-per-frame must be at least 1 and --min-score within [0, 1] "
                         f"(got {max_per_frame}, {min_score})")
    if threads is not None and threads < 1:
        raise ValueError(f"--workers {threads} is out of range: give at least 1 (detector threads)")
    spec = detector if isinstance(detector, str) else None
    if spec is not None:
        from . import build_detector
        detector = build_detector(spec, root, threads=threads)
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
    with writer_lock(join(root, DETECTIONS_DIR), "detect", key=detector.name):
        meta_path = join(folder, "detector.json")
        if not is_url(folder) and folder.is_dir():
            remove_stale_tmp_files(folder)          # left by a run killed while it wrote
        if refuse_other_settings(meta_path, meta, holds="detections",
                                 fix="use another detector name, or delete that folder to redo them") is None:
            if not is_url(folder):
                folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(meta_path, meta)

        by_shard = _videos_by_shard(dataset)
        written = listing(folder)
        damaged = _damaged_sidecars(folder, [_sidecar(shard) for shard in by_shard if _sidecar(shard) in written])
        todo = {shard: videos for shard, videos in by_shard.items()
                if _sidecar(shard) not in written or _sidecar(shard) in damaged}
        if todo:        # the boxes change: the columns are written again once every shard has its file
            remove(join(folder, INDEX_FILE))
        bar = tqdm(total=sum(v.num_frames for videos in todo.values() for v in videos), unit="frame",
                   desc=f"detect {detector.name}", disable=not progress, dynamic_ncols=True)
        if ray is None:
            counts = [detect_shard(dataset, detector, shard, videos, folder, max_per_frame, min_score, bar.update)
                      for shard, videos in todo.items()]
        else:
            counts = _detect_on_ray(ray, root, spec if spec is not None else detector, list(todo), folder,
                                    max_per_frame, min_score, threads, getattr(detector, "device", "cpu"), bar.update)
        bar.close()
        if todo or INDEX_FILE not in written:
            write_detections_index(root, detector.name, dataset.index)
        return DetectSummary(detector.name, folder, len(todo), len(by_shard) - len(todo), sum(f for f, _ in counts),
                             sum(b for _, b in counts), time.perf_counter() - start)


def _damaged_sidecars(folder: Path | str, names: list[str]) -> set[str]:
    """The files among ``names`` in ``folder`` that do not parse (damaged on disk since they were
    written whole): their shards are detected again, each said in one line."""
    damaged = set()
    for name, data in zip(names, read_each(join(folder, name) for name in names)):
        try:
            parse_detections(data, name)
        except ValueError:
            print(f"vivi detect: {join(folder, name)} is damaged (not a detections file): detecting its shard again",
                  file=sys.stderr, flush=True)
            damaged.add(name)
    return damaged


def detect_shard(dataset: VideoDataset, detector: Detector, shard: str, videos: list, folder: Path | str,
                 max_per_frame: int, min_score: float, progress=None) -> tuple[int, int]:
    """Detect the boxes of the ``videos`` of ``shard`` and write the shard's file in ``folder``
    (atomically); return (frames, boxes). ``progress(frames)`` is called after each video."""
    out, frames, boxes = {}, 0, 0
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
            if progress is not None:
                progress(video.num_frames)
    write_json_atomic(join(folder, _sidecar(shard)), {"videos": out})
    return frames, boxes


def _detect_on_ray(address: str, root: Path | str, detector: Detector | str, todo: list[str], folder: Path | str,
                   max_per_frame: int, min_score: float, threads: int | None, device: str,
                   progress) -> list[tuple[int, int]]:
    """The shards ``todo`` as Ray tasks (:func:`detect_shard_task`), one per shard; their counts."""
    from .. import cluster
    if not is_url(root):
        root, folder = Path(root).absolute(), Path(folder).absolute()   # the tasks run elsewhere
    with cluster.connected(address) as ray:
        cpus = min(threads or 1, cluster.largest_node_cpus(ray))
        gpus = 1 if str(device).startswith("cuda") else 0
        run = uuid.uuid4().hex       # a worker's dataset and detector are kept for the shards of this run only
        arguments = ((run, root, detector, shard, folder, max_per_frame, min_score, cpus) for shard in todo)
        return list(cluster.run_tasks(ray, detect_shard_task, arguments, num_cpus=cpus, num_gpus=gpus,
                                      progress=lambda counts: progress(counts[0])))


_AT_HAND: dict = {}    # a Ray worker's dataset and detector, kept for the next shard it is given


def detect_shard_task(run: str, root: Path | str, detector: Detector | str, shard: str, folder: Path | str,
                      max_per_frame: int, min_score: float, threads: int) -> tuple[int, int]:
    """A Ray task: :func:`detect_shard` of ``shard``, the detector built from its spec here (once
    per worker process and ``run``, like the dataset's index)."""
    if _AT_HAND.get("run") != run:
        if isinstance(detector, str):
            from . import build_detector
            detector = build_detector(detector, root, threads=threads)
        dataset = VideoDataset(root)
        _AT_HAND.update(run=run, dataset=dataset, detector=detector, by_shard=_videos_by_shard(dataset))
    return detect_shard(_AT_HAND["dataset"], _AT_HAND["detector"], shard, _AT_HAND["by_shard"][shard], folder,
                        max_per_frame, min_score)


def _videos_by_shard(dataset: VideoDataset) -> dict[str, list]:
    by_shard: dict[str, list] = {}
    for video in dataset.videos:
        by_shard.setdefault(video.shard, []).append(video)
    return by_shard


def _sidecar(shard: str) -> str:
    return Path(shard).with_suffix(".json").name
