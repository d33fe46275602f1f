"""A file of named columns that readers memory-map: the container of vivi's indices.

Layout: the 8 bytes ``VIVIIDX1``, the length of a JSON header as 8 little-endian bytes, the
header, then each column at a 64-byte aligned offset. The header's ``columns`` entry gives each
column's dtype, shape and offset; the rest of the header is the writer's.

Columns are appended piece by piece (:class:`ColumnSink`), in memory or, for large indices, to
scratch files that are copied into place at the end, so that memory stays small whatever the
number of rows. The file is written under a temporary name and renamed (or uploaded as one
object): it appears complete or not at all. A local file is memory-mapped; a file in object
storage (``vivi.storage``) is read column by column with ranged requests.
"""
from __future__ import annotations

import io
import json
import shutil
import struct
from pathlib import Path

import numpy as np

from ..storage import filesystem, is_url, read_bytes, retrying
from .shards import remove_stale_tmp_files, replace_durably, shared_tmp_name

__all__ = ["ColumnSink", "read_columns"]

_MAGIC = b"VIVIIDX1"
_ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class ColumnSink:
    """Columns named in ``spec`` ({name: (dtype, trailing shape)}), appended with :meth:`put`.

    ``scratch``: a folder for one file per column (removed by :meth:`close`); None keeps them in
    memory, where :meth:`arrays` returns them.
    """

    def __init__(self, spec: dict[str, tuple[str, tuple[int, ...]]], scratch: Path | None = None):
        self.spec, self.scratch = spec, scratch
        self.lengths = dict.fromkeys(spec, 0)
        if scratch is not None:
            remove_stale_tmp_files(scratch.parent)
            scratch.mkdir(exist_ok=True)
        self.files = {name: open(scratch / name, "w+b") if scratch is not None else io.BytesIO() for name in spec}

    def put(self, name: str, values) -> None:
        dtype, trailing = self.spec[name]
        array = np.ascontiguousarray(values, dtype=dtype).reshape(-1, *trailing)
        self.files[name].write(array.tobytes())
        self.lengths[name] += len(array)

    def _layout(self) -> dict[str, list]:
        columns, offset = {}, 0
        for name, (dtype, trailing) in self.spec.items():
            shape = [self.lengths[name], *trailing]
            columns[name] = [dtype, shape, offset]
            offset += _aligned(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return columns

    def arrays(self) -> dict[str, np.ndarray]:
        """The columns as arrays (in memory)."""
        return {name: np.frombuffer(self.files[name].getbuffer(), dtype).reshape(shape)
                for name, (dtype, shape, _) in self._layout().items()}

    def write(self, path: Path | str, header: dict) -> Path | str:
        """Write the columns to ``path`` (a file, or an object URL: assembled in a local temporary
        file, then uploaded) with ``header`` (plus their layout) in front."""
        if is_url(path):
            import tempfile
            with tempfile.TemporaryDirectory(prefix="vivi-columns-") as folder:
                local = self.write(Path(folder) / "columns.bin", header)
                fs, remote = filesystem(path)
                retrying(lambda: fs.put_file(str(local), remote), str(path))
            return path
        header = {**header, "columns": self._layout()}
        encoded = json.dumps(header).encode()
        start = _aligned(16 + len(encoded))
        tmp = shared_tmp_name(path)
        try:
            with open(tmp, "wb") as out:
                out.write(_MAGIC + struct.pack("<Q", len(encoded)) + encoded)
                for name, (_, _, offset) in header["columns"].items():
                    out.write(bytes(start + offset - out.tell()))
                    source = self.files[name]
                    source.seek(0)
                    while chunk := source.read(1 << 24):
                        out.write(chunk)
                out.write(bytes(_aligned(out.tell()) - out.tell()))
            replace_durably([(tmp, path)])
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def close(self) -> None:
        """Remove the scratch files (in-memory columns stay, for the arrays that view them)."""
        if self.scratch is not None:
            for f in self.files.values():
                f.close()
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_columns(path: Path | str, rebuild: str, names: list[str] | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, {name: array}) of the column file ``path``: a local file's columns memory-mapped
    (read-only), an object's read into memory by ranged requests (``names``: only these columns).
    A file that is not one, or is cut short, raises ValueError naming it and ``rebuild`` (the
    command that makes it again)."""
    head = read_bytes(path, 0, 16)
    if len(head) < 16 or head[:8] != _MAGIC:
        raise ValueError(f"{path} is not a vivi index: delete it, or rebuild it with `{rebuild}`")
    (length,) = struct.unpack("<Q", head[8:])
    try:
        header = json.loads(read_bytes(path, 16, 16 + length))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is damaged: rebuild it with `{rebuild}`") from None
    start = _aligned(16 + length)
    size = _size(path)
    columns = {}
    for name, (dtype, shape, offset) in header["columns"].items():
        if names is not None and name not in names:
            continue
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(dtype).itemsize
        if count == 0:
            columns[name] = np.zeros(shape, dtype)
        elif start + offset + nbytes > size:
            raise ValueError(f"{path} is truncated: rebuild it with `{rebuild}`")
        elif is_url(path):
            data = read_bytes(path, start + offset, start + offset + nbytes)
            columns[name] = np.frombuffer(data, dtype).reshape(shape)
        else:
            columns[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + offset, shape=tuple(shape))
    return header, columns


def _size(path: Path | str) -> int:
    if not is_url(path):
        return Path(path).stat().st_size
    fs, remote = filesystem(path)
    return retrying(lambda: fs.size(remote), str(path))
