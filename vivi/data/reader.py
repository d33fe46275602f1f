"""Random access to an ingested dataset: the videos' records and any of their frames.

The shard indices written by ingest (``shards/shard-*.json``) hold the byte offset of every
member, so a frame is one ``pread`` of its JPEG bytes: no scanning of tar files, and any video
can be read by any DataLoader worker. File handles are opened lazily per process (they must not
cross a fork).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ingest.decode import decode_jpeg
from ..ingest.shards import SHARD_DIR, completed_shard_indices


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


class VideoDataset:
    """The videos of the dataset at ``root`` (complete shards only), in key order."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "plan.json").exists():
            raise FileNotFoundError(f"{self.root} is not a vivi dataset (no plan.json): "
                                    f"create one with `vivi ingest VIDEOS --out {self.root}`")
        self.videos: list[Video] = []
        for shard_index in completed_shard_indices(self.root):
            for v in shard_index["videos"]:
                self.videos.append(Video(
                    key=v["key"], source=v["source"], shard=shard_index["shard"], fps=v["fps"],
                    duration_s=v["duration_s"], frame_size=tuple(v["frame_size"]),
                    shot_starts_s=tuple(v["shot_starts_s"]), frame_times_s=tuple(v["frame_times_s"]),
                    frame_native_index=tuple(v["frame_native_index"]), frame_shot=tuple(v["frame_shot"]),
                    frame_members=tuple(map(tuple, v["frame_members"])),
                    record_member=tuple(v["record_member"])))
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


__all__ = ["SHARD_DIR", "Video", "VideoDataset"]
