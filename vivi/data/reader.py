"""Random access to an ingested dataset: the videos' records and any of their frames.

The dataset's index (``vivi.ingest.index``, built from the shard indices ingest writes) holds
the byte offset of every member, so a frame is one ``pread`` of its JPEG bytes: no scanning of
tar files, and any video can be read by any DataLoader worker. File handles are opened lazily
per process (they must not cross a fork).

A dataset in object storage (``root`` a URL, ``vivi.storage``) is read the same way: a frame is
one ranged request for its bytes. A pass over every frame of a shard (``vivi detect``) fetches the
shard's tar once instead (:meth:`VideoDataset.shard_at_hand`).
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..ingest.decode import decode_jpeg
from ..ingest.index import DatasetIndex, Video, open_index
from ..ingest.shards import SHARD_DIR, require_dataset, shard_name
from ..storage import download, is_url, join, location, read_bytes


def planned_shards(root: str | Path) -> int:
    """How many shards ingest planned for the dataset at ``root`` (its manifest says; a dataset
    whose first run has not finished yet, its plan)."""
    try:
        return int(json.loads(read_bytes(join(root, "manifest.json")))["shards_planned"])
    except FileNotFoundError:
        plan = json.loads(read_bytes(join(root, "plan.json")))
        return -(-len(plan["inputs"]) // plan["config"]["videos_per_shard"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{join(root, 'manifest.json')} is damaged (not a manifest): `vivi ingest` with the same "
                         "inputs and --out writes it again") from None


def missing_shards(root: str | Path, shards: Sequence[str]) -> tuple[int, list[str]]:
    """(shards planned for ``root``, the tar names of those not among the complete ``shards``:
    missing, or damaged, a tar shorter than its index says)."""
    planned = planned_shards(root)
    have = {posixpath.basename(shard) for shard in shards}
    return planned, [name for name in (f"{shard_name(j)}.tar" for j in range(planned)) if name not in have]


def require_complete(root: str | Path, shards: Sequence[str]) -> None:
    """Raise, naming them, when some shards ingest planned for ``root`` are not complete."""
    planned, missing = missing_shards(root, shards)
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} of the {planned} shards of {root} are missing or damaged ({listed}): "
                         "run the same `vivi ingest` again to write them (or wait for the parts still running), "
                         f"or set data.allow_incomplete=true to train on the {planned - len(missing)} complete ones")


class VideoList(Sequence):
    """The videos of a :class:`~vivi.ingest.index.DatasetIndex` (or of the rows ``rows`` of it) as
    a sequence of :class:`Video` objects, each made when it is asked for."""

    def __init__(self, table: DatasetIndex, rows: np.ndarray | None = None):
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return len(self.table) if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"video {i} of {len(self)}")
        return self.table.video(int(i if self.rows is None else self.rows[i]))


class VideoDataset:
    """The videos of the dataset at ``root`` (complete shards only), in shard order.

    The facts about every video come from the dataset's columnar index (``vivi.ingest.index``:
    memory-mapped, shared by every process), so opening costs milliseconds and a few bytes a video
    whatever the dataset's size; ``videos[i]`` makes the :class:`Video` object of one video.
    ``root`` may be a URL of object storage (module docstring).
    """

    def __init__(self, root: str | Path, index: DatasetIndex | None = None):
        self.root = location(root)
        require_dataset(self.root)
        self.index = open_index(self.root) if index is None else index
        self.videos = VideoList(self.index)
        self._files: dict[str, int] = {}
        self._copies: dict[str, Path] = {}       # local copies of a remote dataset's shards (shard_at_hand)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> Video:
        return self.videos[index]

    def read_jpeg(self, video: Video, frame: int) -> bytes:
        offset, size = video.frame_members[frame]
        return self._read(video.shard, offset, size)

    def read_frame(self, video: Video, frame: int) -> np.ndarray:
        """RGB (H, W, 3) uint8 of sampled frame ``frame`` of ``video``."""
        return decode_jpeg(self.read_jpeg(video, frame))

    def read_record(self, video: Video) -> dict:
        """The JSON record stored in the shard itself (the same as the index entry, minus offsets)."""
        offset, size = video.record_member
        return json.loads(self._read(video.shard, offset, size))

    def _read(self, shard: str, offset: int, size: int) -> bytes:
        self._own()
        if is_url(self.root):
            copy = self._copies.get(shard)
            if copy is None:
                return read_bytes(join(self.root, shard), offset, offset + size)
            if not copy.exists():
                self._fetch(shard, copy)
        return os.pread(self._fd(shard), size, offset)

    def _own(self) -> None:
        if self._pid != os.getpid():   # forked into a DataLoader worker: do not share descriptors
            self._files, self._copies, self._pid = {}, {}, os.getpid()

    def _fd(self, shard: str) -> int:
        self._own()
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self._copies.get(shard) or self.root / shard, os.O_RDONLY)
        return fd

    @contextmanager
    def shard_at_hand(self, shard: str) -> Iterator[None]:
        """Within the block, frames of ``shard`` (a tar name as in :attr:`Video.shard`) of a dataset
        in object storage are read from a local copy of its tar, fetched whole at the first read,
        instead of by one request each: for a pass over every frame of a shard. The copy is
        removed when the block ends. A local dataset reads its files as always."""
        if not is_url(self.root):
            yield
            return
        with tempfile.TemporaryDirectory(prefix="vivi-shard-") as folder:
            self._copies[shard] = Path(folder) / Path(shard).name
            try:
                yield
            finally:
                self._copies.pop(shard, None)
                fd = self._files.pop(shard, None)
                if fd is not None:
                    os.close(fd)

    def _fetch(self, shard: str, copy: Path) -> None:
        download(join(self.root, shard), copy)
        expected = next(record[1] for record in self.index.shard_records if record[0] == shard)
        if copy.stat().st_size != expected:
            copy.unlink()
            raise ValueError(f"{join(self.root, shard)} does not have the {expected} bytes the dataset's index "
                             f"records: it was made again since; run `vivi index {self.root}`")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_copies"] = {}, {}
        return state

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["SHARD_DIR", "Video", "VideoDataset", "VideoList"]
