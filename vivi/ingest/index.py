"""The dataset's columnar index: every video, shot and frame of its complete shards as flat arrays.

The shard indices (``shards/shard-*.json``) say everything about a video, but reading them makes
Python objects for every frame of every video: ~80 KB a video, so a million videos would need
~80 GB and minutes in every process that opens the dataset (DataLoader workers included, where
reference counting defeats copy-on-write). The columnar index holds the same facts as arrays in
one file, ``DATA/index.bin``, which readers memory-map: opening takes milliseconds whatever the
size, every process shares the pages through the page cache, and Python objects are made only
for the videos a batch draws (:meth:`DatasetIndex.video`, a :class:`Video`).

``vivi ingest`` writes the index when the dataset is complete; ``vivi index DATA`` (re)builds it
from the shard indices, for a dataset ingested without one (shards are never rewritten). A
dataset without an index still opens: the same arrays are built in memory from the shard
indices. An index that no longer matches the shards (a shard added or rewritten since it was
built) is refused with the command that rebuilds it.

A dataset in object storage has the same file, read column by column with ranged requests into
memory (a process reads it once; there is no page cache to share) and written by uploading it whole.

The file is a column file (``vivi.ingest.columns``). Its header lists the shards the index
was built from (name, tar size and the size of the shard's JSON index, by which a shard made again
is recognised) and, per column, its dtype, shape and offset. The file depends only on the shards:
the same shards give the same bytes.

Columns (V videos, S shots, F sampled frames; per-video ranges as offsets, entry i..i+1)::

    video_key, video_source      offsets into key_bytes, source_bytes (UTF-8)     int64 (V+1)
    video_shard                  position in the header's shard list              int32 (V)
    video_fps, video_duration_s                                                   float64 (V)
    video_frame_size             (height, width) of the stored frames              int32 (V, 2)
    video_record                 (offset, size) of the video's JSON in its tar     int64 (V, 2)
    video_shots, video_frames    offsets into the shot and frame columns           int64 (V+1)
    video_run                    longest run of consecutive shots with frames      int32 (V)
    shot_start_s                 start time of each shot                           float64 (S)
    frame_time_s, frame_native   time and native frame index of each sampled frame float64, int64 (F)
    frame_shot                   shot of each frame, within its video              int32 (F)
    frame_member                 (offset, size) of each frame's JPEG in the tar    int64 (F, 2)
"""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..storage import is_url, join, listing, location, parent_of, size_of
from .columns import ColumnSink, read_columns
from .shards import SHARD_DIR, iter_completed_shard_indices, read_shard_index, require_dataset, shared_tmp_name

__all__ = ["INDEX_FILE", "DatasetIndex", "Video", "build_index", "open_index", "write_index"]

INDEX_FILE = "index.bin"
_VERSION = 1
_SUGGEST_INDEX = 20_000     # videos above which opening without the index is worth a note

# name -> (dtype, trailing shape); the first dimension is the column's length
_COLUMNS: dict[str, tuple[str, tuple[int, ...]]] = {
    "video_key": ("<i8", ()), "key_bytes": ("u1", ()), "video_source": ("<i8", ()), "source_bytes": ("u1", ()),
    "video_shard": ("<i4", ()), "video_fps": ("<f8", ()), "video_duration_s": ("<f8", ()),
    "video_frame_size": ("<i4", (2,)), "video_record": ("<i8", (2,)), "video_shots": ("<i8", ()),
    "video_frames": ("<i8", ()), "video_run": ("<i4", ()), "shot_start_s": ("<f8", ()),
    "frame_time_s": ("<f8", ()), "frame_native": ("<i8", ()), "frame_shot": ("<i4", ()),
    "frame_member": ("<i8", (2,)),
}
_OFFSETS = ("video_key", "video_source", "video_shots", "video_frames")     # V + 1 entries, first 0


@dataclass(frozen=True)
class Video:
    """One ingested video: its record from the shard index (see ``vivi.ingest.pipeline``)."""
    key: str
    source: str
    shard: str                              # path of its tar, relative to the dataset root
    fps: float
    duration_s: float
    frame_size: tuple[int, int]             # (height, width) of the stored frames
    shot_starts_s: tuple[float, ...]
    frame_times_s: tuple[float, ...]
    frame_native_index: tuple[int, ...]
    frame_shot: tuple[int, ...]             # shot of each sampled frame
    frame_members: tuple[tuple[int, int], ...]  # (offset, size) of each frame's JPEG in the tar
    record_member: tuple[int, int]          # (offset, size) of the video's JSON record in the tar

    @property
    def num_shots(self) -> int:
        return len(self.shot_starts_s)

    @property
    def num_frames(self) -> int:
        return len(self.frame_times_s)

    def shot_frames(self) -> list[list[int]]:
        """Indices of the sampled frames of each shot (a shot may have none if shorter than 1/fps)."""
        frames: list[list[int]] = [[] for _ in range(self.num_shots)]
        for i, shot in enumerate(self.frame_shot):
            frames[shot].append(i)
        return frames


class DatasetIndex:
    """The columns of a dataset's index (memory-mapped from ``index.bin``, or built in memory).

    ``len(index)`` is the number of videos, in the order of the shards and, inside a shard, of
    its index; :meth:`video` makes the Python object of one video.
    """

    def __init__(self, columns: dict[str, np.ndarray], shard_records: list[list], path: Path | str | None = None):
        self.columns, self.path = columns, path
        self.shard_records = shard_records               # [tar name, tar bytes, shard index bytes] each
        self.shards = [record[0] for record in shard_records]
        for name, array in columns.items():
            setattr(self, name, array)

    def __len__(self) -> int:
        return len(self.video_shard)

    def num_frames(self) -> np.ndarray:
        """Sampled frames of every video, int64 (V,)."""
        return np.diff(self.video_frames)

    def num_shots(self) -> np.ndarray:
        return np.diff(self.video_shots)

    def key(self, i: int) -> str:
        return bytes(self.key_bytes[self.video_key[i]:self.video_key[i + 1]]).decode()

    def video(self, i: int) -> Video:
        s0, s1 = int(self.video_shots[i]), int(self.video_shots[i + 1])
        f0, f1 = int(self.video_frames[i]), int(self.video_frames[i + 1])
        source = bytes(self.source_bytes[self.video_source[i]:self.video_source[i + 1]]).decode()
        return Video(
            key=self.key(i), source=source, shard=self.shards[int(self.video_shard[i])],
            fps=float(self.video_fps[i]), duration_s=float(self.video_duration_s[i]),
            frame_size=tuple(self.video_frame_size[i].tolist()),
            shot_starts_s=tuple(self.shot_start_s[s0:s1].tolist()),
            frame_times_s=tuple(self.frame_time_s[f0:f1].tolist()),
            frame_native_index=tuple(self.frame_native[f0:f1].tolist()),
            frame_shot=tuple(self.frame_shot[f0:f1].tolist()),
            frame_members=tuple(map(tuple, self.frame_member[f0:f1].tolist())),
            record_member=tuple(self.video_record[i].tolist()))

    def __getstate__(self):
        # A memory-mapped index is reopened by the process that unpickles it (a DataLoader worker
        # started by spawn), instead of copying its arrays through the pipe (one read from object
        # storage is in memory already: its arrays travel).
        if self.path is not None and not is_url(self.path):
            return {"path": self.path}
        return self.__dict__

    def __setstate__(self, state):
        if "columns" in state:
            self.__dict__.update(state)
        else:
            opened = _read(Path(state["path"]))
            self.__dict__.update(opened.__dict__)


class _Builder:
    """Appends shard indices to the columns of ``sink``."""

    def __init__(self, sink: ColumnSink):
        self.sink = sink
        self.ends = dict.fromkeys(_OFFSETS, 0)       # running ends of the offset columns
        self.shards: list[list] = []
        for name in _OFFSETS:
            self._put(name, np.zeros(1, np.int64))

    def _put(self, name: str, values) -> None:
        self.sink.put(name, values)

    def add(self, shard_index: dict, index_size: int) -> None:
        """Append the videos of one complete shard (its index as ingest wrote it, of ``index_size`` bytes)."""
        videos = shard_index["videos"]
        number = len(self.shards)
        self.shards.append([shard_index["shard"], shard_index["bytes"], index_size])
        if not videos:
            return
        keys = [v["key"].encode() for v in videos]
        sources = [v["source"].encode() for v in videos]
        shots = [len(v["shot_starts_s"]) for v in videos]
        frames = [len(v["frame_times_s"]) for v in videos]
        self._append_offsets("video_key", [len(k) for k in keys])
        self._put("key_bytes", np.frombuffer(b"".join(keys), np.uint8))
        self._append_offsets("video_source", [len(s) for s in sources])
        self._put("source_bytes", np.frombuffer(b"".join(sources), np.uint8))
        self._put("video_shard", np.full(len(videos), number))
        self._put("video_fps", [v["fps"] for v in videos])
        self._put("video_duration_s", [v["duration_s"] for v in videos])
        self._put("video_frame_size", np.array([v["frame_size"] for v in videos]).reshape(-1, 2))
        self._put("video_record", np.array([v["record_member"] for v in videos]).reshape(-1, 2))
        self._append_offsets("video_shots", shots)
        self._append_offsets("video_frames", frames)
        self._put("video_run", [_longest_run(v["frame_shot"], n) for v, n in zip(videos, shots)])
        self._put("shot_start_s", np.array([t for v in videos for t in v["shot_starts_s"]], np.float64))
        self._put("frame_time_s", np.array([t for v in videos for t in v["frame_times_s"]], np.float64))
        self._put("frame_native", np.array([i for v in videos for i in v["frame_native_index"]], np.int64))
        self._put("frame_shot", np.array([s for v in videos for s in v["frame_shot"]], np.int32))
        self._put("frame_member", np.array([m for v in videos for m in v["frame_members"]], np.int64).reshape(-1, 2))

    def _append_offsets(self, name: str, sizes: list[int]) -> None:
        ends = self.ends[name] + np.cumsum(sizes, dtype=np.int64)
        self._put(name, ends)
        self.ends[name] = int(ends[-1])

    def header(self) -> dict:
        lengths = self.sink.lengths
        return {"version": _VERSION, "videos": lengths["video_shard"], "shots": lengths["shot_start_s"],
                "frames": lengths["frame_time_s"], "shards": self.shards}


def _longest_run(frame_shot: list[int], num_shots: int) -> int:
    """The longest run of consecutive shots that each have a sampled frame (a damaged stretch of a
    video can leave a shot without one; a clip of K shots needs K such shots in a row)."""
    has = np.zeros(num_shots, bool)
    has[np.asarray(frame_shot, np.int64)] = True
    best = run = 0
    for present in has.tolist():
        run = run + 1 if present else 0
        best = max(best, run)
    return best


def _index_sizes(root: Path | str) -> dict[str, int]:
    """{shard tar name: size of the shard's JSON index} of the shard indices in place: with the
    shard's name, what tells the shards an index was built from (a shard made again holds other
    videos or frames, so its index has another size; ingest also removes the index before it
    writes a shard)."""
    return {f"{SHARD_DIR}/{name[:-len('.json')]}.tar": size for name, size in listing(join(root, SHARD_DIR)).items()
            if name.startswith("shard-") and name.endswith(".json")}


def _complete_shards(root: Path | str, indexed: dict[str, tuple[int, int]]) -> dict[str, int]:
    """{shard tar name: size of its JSON index} of the complete shards, found by listing the shard
    folder: a shard is complete when its index is there and its tar has the size the index records
    (the index file's record for the shards it names, the shard's own index for any other)."""
    sizes = {f"{SHARD_DIR}/{name}": size for name, size in listing(join(root, SHARD_DIR)).items()
             if name.startswith("shard-")}
    complete = {}
    for key, size in sizes.items():
        if not key.endswith(".json"):
            continue
        tar = key[: -len(".json")] + ".tar"
        if tar in indexed:
            ok = sizes.get(tar) == indexed[tar][0]
        else:
            ok = read_shard_index(root, int(key[len(SHARD_DIR) + len("/shard-"):-len(".json")])) is not None
        if ok:
            complete[tar] = size
    return complete


@contextmanager
def column_scratch(folder: Path | str) -> Iterator[Path]:
    """A local folder for the scratch files of a column file to be written into ``folder``:
    beside it (a shared temporary name, so that a killed run's is cleaned up), or a temporary
    folder when ``folder`` is in object storage."""
    if not is_url(folder):
        yield shared_tmp_name(Path(folder) / ".index-columns")
        return
    with tempfile.TemporaryDirectory(prefix="vivi-columns-") as scratch:
        yield Path(scratch) / "columns"


def build_index(root: str | Path, shard_indices: Iterable[dict] | None = None) -> DatasetIndex:
    """The index of the dataset at ``root``, built in memory from its complete shards' indices
    (``shard_indices``, in shard order, when the caller holds them already)."""
    root = location(root)
    with ColumnSink(_COLUMNS) as sink:
        builder = _fill(_Builder(sink), root, shard_indices)
        return DatasetIndex(sink.arrays(), builder.shards)


def write_index(root: str | Path, shard_indices: Iterable[dict] | None = None) -> Path | str:
    """Write ``DATA/index.bin`` from the complete shards' indices (read one by one, each column
    streamed to a scratch file, so memory stays small however large the dataset); returns its
    path. The file appears complete or not at all."""
    root = location(root)
    require_dataset(root)
    with column_scratch(root) as scratch, ColumnSink(_COLUMNS, scratch=scratch) as sink:
        builder = _fill(_Builder(sink), root, shard_indices)
        return sink.write(join(root, INDEX_FILE), builder.header())


def _fill(builder: _Builder, root: Path | str, shard_indices: Iterable[dict] | None) -> _Builder:
    sizes = _index_sizes(root)
    for shard_index in iter_completed_shard_indices(root) if shard_indices is None else shard_indices:
        name = shard_index["shard"]
        if name not in sizes:
            raise FileNotFoundError(f"{join(root, name[:-len('.tar')] + '.json')} was removed while the index "
                                    f"was built: run `vivi index {root}` again")
        builder.add(shard_index, sizes[name])
    return builder


def _read(path: Path | str) -> DatasetIndex:
    header, columns = read_columns(path, f"vivi index {parent_of(path)}")
    if header.get("version") != _VERSION:
        raise ValueError(f"{path} was written by another version of vivi: rebuild it with "
                         f"`vivi index {parent_of(path)}`")
    return DatasetIndex(columns, header["shards"], path)


def open_index(root: str | Path) -> DatasetIndex:
    """The index of the dataset at ``root``: ``index.bin`` memory-mapped when there is one (refused,
    with the command that rebuilds it, when it no longer matches the shards), else built in memory."""
    root = location(root)
    path = join(root, INDEX_FILE)
    if (size_of(path) is None) if is_url(path) else not path.exists():
        index = build_index(root)
        if len(index) >= _SUGGEST_INDEX:
            print(f"note: {root} has no {INDEX_FILE}: its {len(index):,} videos were read from the shard indices "
                  f"into memory; `vivi index {root}` writes the index, which every process then maps in "
                  "milliseconds", file=sys.stderr)
        return index
    index = _read(path)
    indexed = {name: (tar_bytes, index_size) for name, tar_bytes, index_size in index.shard_records}
    present = _complete_shards(root, indexed)
    if not present:
        return build_index(root)            # no complete shard at all: said so by the reader
    if {name: size for name, (_, size) in indexed.items()} != present:
        added = sorted(present.keys() - indexed.keys())
        changed = sorted(k for k in present.keys() & indexed.keys() if present[k] != indexed[k][1])
        removed = sorted(indexed.keys() - present.keys())
        what = "; ".join(f"{len(names)} {kind} (first: {names[0]})" for kind, names in
                         (("added", added), ("made again", changed), ("removed or incomplete", removed)) if names)
        raise ValueError(f"{path} is older than the shards of {root} ({what} since it was built): rebuild it "
                         f"with `vivi index {root}`")
    return index
