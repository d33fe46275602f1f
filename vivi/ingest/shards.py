"""Tar shards in the WebDataset layout, written atomically, with a JSON index beside each.

A dataset folder holds::

    plan.json                      what was asked: the sorted input list and the ingest settings
    shards/shard-000000.tar        one WebDataset sample per video: v0000012.json + v0000012.f0000.jpg, ...
    shards/shard-000000.json       the shard's index: each video's record, byte offsets of its
                                   members, and the videos of this shard that failed (with reasons)
    manifest.json                  totals and per-video summary, rebuilt from the shard indices
    failures.jsonl                 one line per video that could not be ingested, with the reason

A shard is complete exactly when its index exists: the tar is written to a temporary name,
flushed to disk and renamed, then the index likewise. A crash leaves at worst a ``.tmp`` file or
a tar without an index, which the next run rewrites; never a truncated shard that looks complete.
Member headers carry no time stamps or owners, so a shard's bytes depend only on its content.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

SHARD_DIR = "shards"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def video_key(index: int) -> str:
    return f"v{index:07d}"


def frame_member(key: str, frame: int) -> str:
    return f"{key}.f{frame:04d}.jpg"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> list[int]:
    """Append one member; return [offset of its data, size] in the tar."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
    tar.addfile(info, io.BytesIO(data))
    return [offset, len(data)]


def write_shard(root: Path, index: int, samples: list[tuple[dict, list[bytes]]], failures: list[dict]) -> dict:
    """Write shard ``index`` of the dataset at ``root`` and its index; return the index.

    ``samples`` are (record, frame JPEGs) of the videos that were ingested, in key order; the
    record's ``key`` names the sample. ``failures`` are the shard's videos that were not.
    """
    folder = root / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = shard_name(index)
    tar_path = folder / f"{name}.tar"
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    videos = []
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for record, jpegs in samples:
                key = record["key"]
                record_member = _add(tar, f"{key}.json", json.dumps(record, sort_keys=True).encode())
                frame_members = [_add(tar, frame_member(key, i), data) for i, data in enumerate(jpegs)]
                videos.append({**record, "record_member": record_member, "frame_members": frame_members})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, tar_path)
    shard_index = {"shard": f"{SHARD_DIR}/{name}.tar", "bytes": tar_path.stat().st_size,
                   "videos": videos, "failures": failures}
    write_json_atomic(folder / f"{name}.json", shard_index)
    return shard_index


def read_shard_index(root: Path, index: int) -> dict | None:
    """The index of shard ``index`` if that shard is complete, else None."""
    folder = Path(root) / SHARD_DIR
    index_path = folder / f"{shard_name(index)}.json"
    tar_path = folder / f"{shard_name(index)}.tar"
    if not index_path.exists() or not tar_path.exists():
        return None
    shard_index = json.loads(index_path.read_text())
    if tar_path.stat().st_size != shard_index["bytes"]:
        return None
    return shard_index


def completed_shard_indices(root: Path) -> list[dict]:
    """Indices of every complete shard of the dataset at ``root``, in shard order."""
    folder = Path(root) / SHARD_DIR
    found = []
    for path in sorted(folder.glob("shard-*.json")):
        shard_index = read_shard_index(root, int(path.stem.split("-")[1]))
        if shard_index is not None:
            found.append(shard_index)
    return found
