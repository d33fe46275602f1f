"""Random access to an ingested dataset: the videos' records and any of their frames.

The dataset's index (``vivi.ingest.index``, built from the shard indices ingest writes) holds
the byte offset of every member, so a frame is one ``pread`` of its JPEG bytes: no scanning of
tar files, and any video can be read by any DataLoader worker. File handles are opened lazily
per process (they must not cross a fork).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..ingest.decode import decode_jpeg
from ..ingest.index import DatasetIndex, Video, open_index
from ..ingest.shards import SHARD_DIR, require_dataset


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
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        require_dataset(self.root)
        self.index = open_index(self.root)
        self.videos = VideoList(self.index)
        self._files: dict[str, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> Video:
        return self.videos[index]

    def read_jpeg(self, video: Video, frame: int) -> bytes:
        offset, size = video.frame_members[frame]
        return os.pread(self._fd(video.shard), size, offset)

    def read_frame(self, video: Video, frame: int) -> np.ndarray:
        """RGB (H, W, 3) uint8 of sampled frame ``frame`` of ``video``."""
        return decode_jpeg(self.read_jpeg(video, frame))

    def read_record(self, video: Video) -> dict:
        """The JSON record stored in the shard itself (the same as the index entry, minus offsets)."""
        offset, size = video.record_member
        return json.loads(os.pread(self._fd(video.shard), size, offset))

    def _fd(self, shard: str) -> int:
        if self._pid != os.getpid():   # forked into a DataLoader worker: do not share descriptors
            self._files, self._pid = {}, os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.root / shard, os.O_RDONLY)
        return fd

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"] = {}
        return state

    def __del__(self):
        for fd in getattr(self, "_files", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["SHARD_DIR", "Video", "VideoDataset", "VideoList"]
