"""Object boxes for training, read from the detections stored beside the shards.

``vivi detect`` (Object-centric §3, §4.1: an off-the-shelf detector tags every sampled frame
offline) writes, for a detector named NAME::

    DATA/detections/NAME/detector.json       {"detector": NAME, "coords": "xyxy_normalized",
                                              "class_names": [...], ...settings}
    DATA/detections/NAME/shard-000000.json   {"videos": {key: [[[x0, y0, x1, y1, class, score], ...]
                                                                # one list per sampled frame
                                                                ]}}

Coordinates are normalised to [0, 1] in the stored frame, (x0, y0) the top-left corner. Several
detectors coexist; training picks one by name. ``DATA/detections/NAME/index.bin`` holds the same
boxes as columns aligned with the dataset's index (:class:`Detections`), written when ``vivi
detect`` has every shard, so that no process holds Python objects for every box; a detections
index that no longer matches the per-shard files is left aside and the boxes read from them.
A dataset in object storage (``root`` a URL) holds the same objects.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..ingest.columns import ColumnSink, read_columns
from ..ingest.index import INDEX_FILE, DatasetIndex, column_scratch, open_index
from ..storage import is_url, join, listing, location, read_each, read_optional, size_of

DETECTIONS_DIR = "detections"


def available_detectors(root: str | Path) -> list[str]:
    if is_url(root):
        return sorted(name.split("/")[0] for name in listing(join(root, DETECTIONS_DIR), depth=2)
                      if name.count("/") == 1 and name.endswith("/detector.json"))
    folder = Path(root) / DETECTIONS_DIR
    return sorted(p.parent.name for p in folder.glob("*/detector.json"))


_COLUMNS = {
    "frame_box": ("<i8", ()),         # F + 1 offsets into ``boxes``, one entry per frame of the dataset index
    "boxes": ("<f4", (6,)),           # x0, y0, x1, y1, class, score of each box; a frame's highest score first
    "video_covered": ("u1", ()),      # 1 for the videos the detector has boxes (or none) for
}


class Detections:
    """The boxes of one detector for every video of a dataset, as columns aligned with the
    dataset's index (``vivi.ingest.index``): the boxes of frame f of video row r are
    ``boxes[frame_box[video_frames[r] + f] : frame_box[video_frames[r] + f + 1]]``.

    ``DATA/detections/NAME/index.bin`` holds the columns when ``vivi detect`` finished (or ``vivi
    index`` wrote them); otherwise they are built in memory from the per-shard files.
    """

    def __init__(self, meta: dict, columns: dict[str, np.ndarray], dataset: DatasetIndex):
        self.meta = meta
        self.class_names: list[str] = meta["class_names"]
        self.dataset = dataset
        self.frame_box, self.all_boxes = columns["frame_box"], columns["boxes"]
        self.covered = np.asarray(columns["video_covered"], bool)
        self._rows: dict[str, int] | None = None

    def frame_boxes_of(self, row: int, frame: int) -> np.ndarray:
        """(n, 6) array of x0, y0, x1, y1, class, score for frame ``frame`` of the dataset's video
        ``row`` (highest score first)."""
        f0, f1 = int(self.dataset.video_frames[row]), int(self.dataset.video_frames[row + 1])
        if frame >= f1 - f0:
            return np.zeros((0, 6), np.float32)
        return np.array(self.all_boxes[self.frame_box[f0 + frame]:self.frame_box[f0 + frame + 1]])

    def frame_boxes(self, key: str, frame: int) -> np.ndarray:
        """:meth:`frame_boxes_of` the video with key ``key``."""
        if self._rows is None:
            self._rows = {self.dataset.key(i): i for i in range(len(self.dataset))}
        row = self._rows.get(key)
        return np.zeros((0, 6), np.float32) if row is None else self.frame_boxes_of(row, frame)

    def boxes(self, row: int, frames: list[list[int]], crop, max_boxes: int) -> dict[str, torch.Tensor]:
        """Padded boxes of a clip's frames of video ``row``, mapped into the ``crop`` (normalised
        x0, y0, x1, y1): one tuple for every frame, or a (K, F, 4) array of each frame's own crop
        (the loader's inception crops).

        Boxes are clipped to the crop; a box whose centre falls outside the crop is dropped, and of
        the others the ``max_boxes`` highest scores are kept (Object-centric §4.1: at most 5).
        Returns ``boxes`` (K, F, B, 4) float32, ``box_labels`` (K, F, B) int64 (-1 = padding) and
        ``box_scores`` (K, F, B) float32, B = ``max_boxes``.
        """
        K, F = len(frames), len(frames[0])
        out_boxes = np.zeros((K, F, max_boxes, 4), np.float32)
        out_labels = np.full((K, F, max_boxes), -1, np.int64)
        out_scores = np.zeros((K, F, max_boxes), np.float32)
        crops = np.broadcast_to(np.asarray(crop, np.float64), (K, F, 4))
        for k, shot in enumerate(frames):
            for f, frame in enumerate(shot):
                b = self.frame_boxes_of(row, frame)
                if not len(b):
                    continue
                cx0, cy0, cx1, cy1 = crops[k, f]
                xy = b[:, :4].copy()
                xy[:, [0, 2]] = (xy[:, [0, 2]] - cx0) / (cx1 - cx0)
                xy[:, [1, 3]] = (xy[:, [1, 3]] - cy0) / (cy1 - cy0)
                centre = (xy[:, :2] + xy[:, 2:]) / 2
                keep = np.all((centre >= 0) & (centre < 1), axis=1)
                xy, b = np.clip(xy[keep], 0, 1)[:max_boxes], b[keep][:max_boxes]
                n = len(xy)
                out_boxes[k, f, :n], out_labels[k, f, :n], out_scores[k, f, :n] = xy, b[:, 4], b[:, 5]
        return {"boxes": torch.from_numpy(out_boxes), "box_labels": torch.from_numpy(out_labels),
                "box_scores": torch.from_numpy(out_scores)}


def _sidecar_name(shard: str) -> str:
    """The per-shard file of a shard (``shards/shard-000000.tar`` -> ``shard-000000.json``)."""
    return Path(shard).with_suffix(".json").name


def _fill(sink: ColumnSink, folder: Path | str, dataset: DatasetIndex) -> list[list]:
    """Append the boxes of every frame of ``dataset`` from the per-shard files in ``folder``;
    returns [shard file name, its size or -1 when missing] of each shard (what the columns were
    built from)."""
    sidecars = []
    sink.put("frame_box", [0])
    end = start = 0
    shard_of = np.asarray(dataset.video_shard)
    names = [_sidecar_name(shard) for shard in dataset.shards]
    for number, (name, data) in enumerate(zip(names, read_each(join(folder, name) for name in names))):
        stop = start + int(np.searchsorted(shard_of[start:], number, side="right"))
        found = parse_detections(data, join(folder, name)) if data is not None else {}
        sidecars.append([name, len(data) if data is not None else -1])
        counts, flat = [], []
        for row in range(start, stop):
            rows = found.get(dataset.key(row))
            sink.put("video_covered", [rows is not None])
            frames = int(dataset.video_frames[row + 1] - dataset.video_frames[row])
            per_frame = [rows[f] if rows is not None and f < len(rows) else [] for f in range(frames)]
            counts += [len(boxes) for boxes in per_frame]
            flat += [box for boxes in per_frame for box in boxes]
        boxes = np.asarray(flat, np.float32).reshape(-1, 6)
        frame_of = np.repeat(np.arange(len(counts)), counts)
        sink.put("boxes", boxes[np.lexsort((-boxes[:, 5], frame_of))])     # per frame, highest score first
        sink.put("frame_box", end + np.cumsum(counts, dtype=np.int64))
        end += len(boxes)
        start = stop
    return sidecars


def detector_classes(root: Path | str, detector: str) -> list[str]:
    """The class names of the detections ``detector`` of the dataset at ``root`` (its labels index them)."""
    return list(_meta(root, detector)[1]["class_names"])


def _meta(root: Path | str, detector: str) -> tuple[Path | str, dict]:
    folder = join(root, DETECTIONS_DIR, detector)
    data = read_optional(join(folder, "detector.json"))
    if data is None:
        found = available_detectors(root)
        raise FileNotFoundError(f"no detections named {detector!r} in {root} "
                                f"(available: {', '.join(found) or 'none'}); run `vivi detect {root} --detector ...`")
    try:
        return folder, json.loads(data)
    except ValueError:
        raise ValueError(f"{join(folder, 'detector.json')} is damaged (not JSON): delete {folder} and run "
                         f"`vivi detect {root} --detector ...` again") from None


def parse_detections(data: bytes, path: Path | str) -> dict[str, list]:
    """The ``videos`` of one per-shard detections file; a damaged file is named, with the fix."""
    try:
        return json.loads(data)["videos"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is damaged (not a detections file): run the same `vivi detect` again, which "
                         "writes it anew") from None


def write_detections_index(root: str | Path, detector: str, dataset: DatasetIndex | None = None) -> Path | str:
    """Write ``DATA/detections/NAME/index.bin``: the boxes of every frame as columns aligned with
    the dataset's index (``dataset``, default: the dataset's own)."""
    root = location(root)
    folder, meta = _meta(root, detector)
    dataset = dataset if dataset is not None else open_index(root)
    with column_scratch(folder) as scratch, ColumnSink(_COLUMNS, scratch=scratch) as sink:
        sidecars = _fill(sink, folder, dataset)
        return sink.write(join(folder, INDEX_FILE), {"version": 1, "detector": detector, "sidecars": sidecars,
                                                     "dataset_shards": dataset.shard_records})


def load_detections(root: str | Path, detector: str, dataset: DatasetIndex | None = None) -> Detections:
    """The detections named ``detector`` of the dataset at ``root`` (whose index is ``dataset``,
    default: opened here): memory-mapped from their index when it matches the dataset and the
    per-shard files, else built from those files in memory."""
    root = location(root)
    folder, meta = _meta(root, detector)
    dataset = dataset if dataset is not None else open_index(root)
    path = join(folder, INDEX_FILE)
    if (size_of(path) is not None) if is_url(path) else path.exists():
        header, columns = read_columns(path, f"vivi index {root}")
        sizes = listing(folder)
        current = [[name, sizes.get(name, -1)] for name in map(_sidecar_name, dataset.shards)]
        if header.get("dataset_shards") == dataset.shard_records and header.get("sidecars") == current:
            return Detections(meta, columns, dataset)
    with ColumnSink(_COLUMNS) as sink:
        _fill(sink, folder, dataset)
        return Detections(meta, sink.arrays(), dataset)
