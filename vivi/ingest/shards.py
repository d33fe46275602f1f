"""Tar shards in the WebDataset layout, written atomically, with a JSON index beside each.

A dataset folder holds::

    plan.json                      what was asked: the sorted input list and the ingest settings
    shards/shard-000000.tar        one WebDataset sample per video: v0000012.json + v0000012.f0000.jpg, ...
    shards/shard-000000.json       the shard's index: each video's record, byte offsets of its
                                   members, and the videos of this shard that failed (with reasons)
    manifest.json                  totals and per-video summary, rebuilt from the shard indices
    failures.jsonl                 one line per video that could not be ingested, with the reason

A shard is complete exactly when its index exists: the tar and the index are written to
temporary names and flushed to disk, then the tar is renamed, then the index. A crash leaves at
worst ``.tmp`` files or a tar without an index, which the next run rewrites; never a truncated
shard that looks complete; an error while writing (a full disk) removes the temporary files.
Files are made durable in rounds (:func:`replace_durably`): every file of a round is flushed, by
concurrent fsyncs that share one journal commit, before the first rename; each round costs a few
ms however many files it holds, so ingest puts the plan in the round of its first shard and the
manifest in the round of its last.
Member headers carry no time stamps or owners, so a shard's bytes depend only on its content.

A dataset in object storage (``--out s3://bucket/prefix``, ``vivi.storage``) has the same objects
and guarantees. An object appears only when its upload is complete, so no rename is needed: a
shard is staged in a local temporary folder as above, then its tar is uploaded, then its index
(:func:`upload_shard`); the temporary files are removed however that ends.

The tar is written directly (:func:`member_header`) rather than through ``tarfile``: the bytes are
the same as ``tarfile``'s USTAR output, but a header costs a fraction of ``tarfile``'s time, which
matters at one member per stored frame. The shard index is compact JSON (the C encoder; an
indented dump goes through the much slower pure-Python one). Measurements: docs/benchmarks.md,
"Ingest".
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from ..storage import is_url, join, listing, read_each, read_optional, remove, size_of, upload, write_bytes

SHARD_DIR = "shards"


def require_dataset(root: Path | str) -> None:
    """Raise FileNotFoundError, saying how to make one, when ``root`` is not a vivi dataset."""
    there = size_of(join(root, "plan.json")) is not None if is_url(root) else (Path(root) / "plan.json").exists()
    if not there:
        raise FileNotFoundError(f"{root} is not a vivi dataset (no plan.json): create one with "
                                f"`vivi ingest VIDEOS --out {root}`")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def video_key(index: int) -> str:
    return f"v{index:07d}"


def frame_member(key: str, frame: int) -> str:
    return f"{key}.f{frame:04d}.jpg"


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename (an object: uploaded
    whole)."""
    if is_url(path):
        write_bytes(path, data)
    else:
        write_all_atomic([(path, data)])


def write_all_atomic(files: list[tuple[Path, bytes]]) -> None:
    """Write several files through temporary files, then rename them in the order given.

    Every file is on disk (fsync) before the first rename, so when a file appears, it and every
    file before it are complete.
    """
    replace_durably(stage_files(files))


def stage_files(files: list[tuple[Path, bytes]]) -> list[tuple[Path, Path]]:
    """Write each ``(path, data)`` to its temporary name; return the renames for :func:`replace_durably`.

    On an error (a full disk, say) the temporary files written so far are removed."""
    renames = []
    with unstaged_on_error(renames):
        for path, data in files:
            renames.append((shared_tmp_name(path), path))
            with open(renames[-1][0], "wb") as f:
                f.write(data)
    return renames


@contextmanager
def unstaged_on_error(renames: list[tuple[Path, Path]]):
    """Remove the temporary files of ``renames`` (those written so far) if the block raises."""
    try:
        yield
    except BaseException:
        for tmp, _ in renames:
            tmp.unlink(missing_ok=True)
        raise


# fsync threads live as long as the process: starting a thread can cost as much as an fsync on a
# loaded virtual machine, and an ingest makes durable several rounds of files.
_FSYNC_THREADS = ThreadPoolExecutor(8, thread_name_prefix="vivi-fsync")


def replace_durably(renames: list[tuple[Path, Path]]) -> None:
    """fsync the written files ``tmp``, then ``os.replace(tmp, path)`` in order.

    The fsyncs run concurrently: they then share one journal commit instead of one per file (a
    large part of a short ingest's time).
    """
    if len(renames) == 1:
        _fsync(renames[0][0])
    elif renames:
        list(_FSYNC_THREADS.map(_fsync, [tmp for tmp, _ in renames]))
    for tmp, path in renames:
        os.replace(tmp, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    """A shard's temporary name: one part of a dataset writes a shard, so the name is fixed and a
    crashed run's file is overwritten by the next."""
    return path.with_name(path.name + ".tmp")


def shared_tmp_name(path: Path) -> Path:
    """The temporary name of a file that several parts (``--part``, side by side, maybe on several
    machines) all write, such as plan.json and manifest.json: one name per host and process."""
    return path.with_name(f"{path.name}.tmp-{_HOST}-{os.getpid()}")


_HOST = socket.gethostname().replace("-", "_") or "host"


def remove_stale_tmp_files(folder: Path) -> None:
    """Remove the shared temporary files in ``folder`` left by processes of this host that no longer
    run (killed while writing); those of other hosts or of running processes are left alone."""
    for tmp in Path(folder).glob(f"*.tmp-{_HOST}-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            if tmp.is_dir():        # the scratch folder of an index being written
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except PermissionError:     # a running process of another user
            continue


def write_json_atomic(path: Path | str, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON, the layout of the dataset's small JSON files."""
    return (json.dumps(obj, indent=1) + "\n").encode()


# USTAR header: name, mode, uid, gid, size, mtime, checksum, type, linkname, magic+version,
# uname, gname, devmajor, devminor, prefix, padding to 512 bytes (what tarfile writes).
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_FIXED = dict(mode=b"0000644\0", owner=b"0000000\0", mtime=b"00000000000\0", magic=tarfile.POSIX_MAGIC)
# Checksum of a header with an empty name and size field and the checksum field as 8 spaces: a
# member's checksum adds the bytes of its name and size field.
_CHECKSUM_BASE = sum(_USTAR.pack(b"", _FIXED["mode"], _FIXED["owner"], _FIXED["owner"], b"", _FIXED["mtime"],
                                 b" " * 8, tarfile.REGTYPE, b"", _FIXED["magic"], b"", b"", b"", b"", b""))
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


def member_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header of a regular file (mode 644, no owner, mtime 0), as tarfile writes it."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or size >= 8 ** 11:     # a long name or a huge file: tarfile knows the rules
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\0" % size
    checksum = _CHECKSUM_BASE + sum(encoded) + sum(size_field)
    return _USTAR.pack(encoded, _FIXED["mode"], _FIXED["owner"], _FIXED["owner"], size_field, _FIXED["mtime"],
                       b"%06o\0 " % checksum, tarfile.REGTYPE, b"", _FIXED["magic"], b"", b"", b"", b"", b"")


class _TarWriter:
    """Appends regular-file members to an open binary file; ``close`` ends the archive like tarfile."""

    def __init__(self, file):
        self.file, self.offset = file, 0

    def add(self, name: str, data: bytes) -> list[int]:
        """Append one member; return [offset of its data, size] in the tar."""
        header = member_header(name, len(data))
        self.file.write(header)
        self.file.write(data)
        padding = -len(data) % _BLOCK
        if padding:
            self.file.write(bytes(padding))
        start = self.offset + len(header)
        self.offset = start + len(data) + padding
        return [start, len(data)]

    def close(self) -> int:
        """End the archive (two zero blocks, then zeros up to a whole record); return its size."""
        end = self.offset + 2 * _BLOCK
        self.file.write(bytes(2 * _BLOCK + -end % _RECORD))
        self.offset = end + -end % _RECORD
        return self.offset


def stage_shard(root: Path, index: int, samples: list[tuple[dict, list[bytes]]],
                failures: list[dict]) -> tuple[dict, list[tuple[Path, Path]]]:
    """Write shard ``index`` of the dataset at ``root`` and its index to their temporary names;
    return the index and the renames, tar first (an index never names a tar that is not all there),
    for :func:`replace_durably`, alone or in a round with other files.

    ``samples`` are (record, frame JPEGs) of the videos that were ingested, in key order; the
    record's ``key`` names the sample. ``failures`` are the shard's videos that were not.
    """
    folder = root / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = shard_name(index)
    tar_path, index_path = folder / f"{name}.tar", folder / f"{name}.json"
    videos = []
    renames = [(_tmp_name(tar_path), tar_path), (_tmp_name(index_path), index_path)]
    with unstaged_on_error(renames):
        with open(_tmp_name(tar_path), "wb") as f:
            tar = _TarWriter(f)
            for record, jpegs in samples:
                key = record["key"]
                record_member = tar.add(f"{key}.json", json.dumps(record, sort_keys=True).encode())
                frame_members = [tar.add(frame_member(key, i), data) for i, data in enumerate(jpegs)]
                videos.append({**record, "record_member": record_member, "frame_members": frame_members})
            size = tar.close()
        shard_index = {"shard": f"{SHARD_DIR}/{name}.tar", "bytes": size, "videos": videos, "failures": failures}
        with open(_tmp_name(index_path), "wb") as f:
            f.write((json.dumps(shard_index) + "\n").encode())
    return shard_index, renames


def upload_shard(root: str, index: int, samples: list[tuple[dict, list[bytes]]], failures: list[dict]) -> dict:
    """Write shard ``index`` of the dataset at the URL ``root`` (arguments as :func:`stage_shard`);
    return its index.

    The shard is staged in a local temporary folder, removed however this ends. An earlier
    version's index is deleted first (no reader pairs it with the new tar), then the tar is
    uploaded, then the index: an index in the store always names a complete tar of its version."""
    with tempfile.TemporaryDirectory(prefix="vivi-shard-") as scratch:
        shard_index, renames = stage_shard(Path(scratch), index, samples, failures)
        remove(join(root, SHARD_DIR, renames[1][1].name))
        for tmp, path in renames:
            upload(tmp, join(root, SHARD_DIR, path.name))
    return shard_index


def read_shard_index(root: Path | str, index: int) -> dict | None:
    """The index of shard ``index`` if that shard is complete, else None."""
    if is_url(root):
        path = join(root, SHARD_DIR, f"{shard_name(index)}.json")
        shard_index = _parse_index(read_optional(path), path)
        if shard_index is None or size_of(join(root, SHARD_DIR, f"{shard_name(index)}.tar")) != shard_index["bytes"]:
            return None
        return shard_index
    folder = Path(root) / SHARD_DIR
    index_path = folder / f"{shard_name(index)}.json"
    tar_path = folder / f"{shard_name(index)}.tar"
    if not index_path.exists() or not tar_path.exists():
        return None
    shard_index = _parse_index(index_path.read_bytes(), index_path)
    if shard_index is None or tar_path.stat().st_size != shard_index["bytes"]:
        return None
    return shard_index


def read_shard_indices(root: Path | str, numbers: list[int],
                       sizes: dict[str, int] | None = None) -> dict[int, dict | None]:
    """{j: :func:`read_shard_index` of shard j} for the shards ``numbers`` (in object storage: the
    shard folder listed once, or its listing ``sizes`` given, and the indices there fetched several
    at a time)."""
    if not is_url(root):
        return {j: read_shard_index(root, j) for j in numbers}
    sizes = listing(join(root, SHARD_DIR)) if sizes is None else sizes
    found = {j: None for j in numbers}
    present = [j for j in numbers if f"{shard_name(j)}.json" in sizes]
    for j, data in zip(present, read_each(join(root, SHARD_DIR, f"{shard_name(j)}.json") for j in present)):
        shard_index = _parse_index(data, join(root, SHARD_DIR, f"{shard_name(j)}.json"))
        if shard_index is not None and sizes.get(f"{shard_name(j)}.tar") == shard_index["bytes"]:
            found[j] = shard_index
    return found


def complete_shards(root: Path | str, numbers: list[int]) -> set[int]:
    """The shards among ``numbers`` that are complete (as :func:`read_shard_index` decides), found
    by one listing of the shard folder: a shard whose index is in place and whose tar has the
    size the index records, read from the index's first bytes (resuming a run of a million videos
    reads no whole index)."""
    if is_url(root):
        return {j for j, shard_index in read_shard_indices(root, numbers).items() if shard_index is not None}
    sizes = {}
    with os.scandir(Path(root) / SHARD_DIR) if (Path(root) / SHARD_DIR).is_dir() else nullcontext([]) as entries:
        for entry in entries:
            if entry.name.startswith("shard-") and entry.name.endswith((".json", ".tar")):
                sizes[entry.name] = entry.stat().st_size if entry.name.endswith(".tar") else -1
    complete = set()
    for j in numbers:
        name = shard_name(j)
        if f"{name}.json" in sizes and sizes.get(f"{name}.tar") == _recorded_bytes(
                Path(root) / SHARD_DIR / f"{name}.json"):
            complete.add(j)
    return complete


_RECORDED_BYTES = re.compile(rb'^{"shard": "[^"]*", "bytes": (\d+),')


def _recorded_bytes(index_path: Path) -> int | None:
    """The tar size a shard index records (its second key, so its first bytes suffice)."""
    with open(index_path, "rb") as f:
        match = _RECORDED_BYTES.match(f.read(256))
    if match is not None:
        return int(match.group(1))
    shard_index = _parse_index(index_path.read_bytes(), index_path)
    return None if shard_index is None else shard_index.get("bytes")


_damage_reported: set[str] = set()


def _parse_index(data: bytes | None, path: Path | str) -> dict | None:
    """A shard index, or None when there is none or it is damaged (not JSON): the shard then
    counts as not complete, so that the readers leave it out and ingest writes it again."""
    if data is None:
        return None
    try:
        shard_index = json.loads(data)
    except ValueError:
        shard_index = None
    if not isinstance(shard_index, dict) or not isinstance(shard_index.get("bytes"), int):
        if str(path) not in _damage_reported:
            _damage_reported.add(str(path))
            print(f"vivi: {path} is damaged (not a shard index): its shard counts as not complete; the same "
                  "`vivi ingest` with --repair writes it again", file=sys.stderr, flush=True)
        return None
    return shard_index


def _index_names(root: Path | str) -> list[str]:
    """``shard-XXXXXX.json`` of every shard index in place, in shard order."""
    if is_url(root):
        return sorted(name for name in listing(join(root, SHARD_DIR)) if name.startswith("shard-")
                      and name.endswith(".json"))
    return sorted(path.name for path in (Path(root) / SHARD_DIR).glob("shard-*.json"))


def complete_shard_names(root: Path | str) -> set[str]:
    """``shards/shard-XXXXXX.tar`` of every shard whose index is in place (cheap: no index is read;
    an index is put in place after its tar, so its presence means the shard is complete)."""
    return {f"{SHARD_DIR}/{name[:-len('.json')]}.tar" for name in _index_names(root)}


def completed_shard_indices(root: Path | str) -> list[dict]:
    """Indices of every complete shard of the dataset at ``root``, in shard order."""
    return list(iter_completed_shard_indices(root))


def iter_completed_shard_indices(root: Path | str) -> Iterator[dict]:
    """The indices of the complete shards, read one at a time, in shard order."""
    if is_url(root):
        sizes = listing(join(root, SHARD_DIR))
        numbers = sorted(int(name[len("shard-"):-len(".json")]) for name in sizes
                         if name.startswith("shard-") and name.endswith(".json"))
        for start in range(0, len(numbers), 256):       # a window: memory stays small
            found = read_shard_indices(root, numbers[start:start + 256], sizes)
            yield from (shard_index for shard_index in found.values() if shard_index is not None)
        return
    for path in sorted((Path(root) / SHARD_DIR).glob("shard-*.json")):
        shard_index = read_shard_index(root, int(path.stem.split("-")[1]))
        if shard_index is not None:
            yield shard_index
