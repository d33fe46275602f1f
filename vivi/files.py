"""Files and folders that commands write: atomic replacement, and the settings a folder records.

Writing a file goes through :func:`replacing`, so that neither a crash nor an error leaves half of
it under its name. A folder that a command fills over several runs (a world, a dataset, its
detections, an evaluation, a demo) records the settings it was made with; a run with other
settings is refused by :func:`refuse_other_settings` instead of mixing two kinds of results.

A dataset's folder may also be a URL of object storage (``s3://bucket/prefix``, ``vivi.storage``).
The helpers at the end (:func:`location`, :func:`read_optional`, :func:`size_of`,
:func:`listing`, :func:`read_each`, :func:`upload`, :func:`download`, :func:`remove`) take either
a local path or a URL, so that the dataset's modules say once what they do with a file.
"""
from __future__ import annotations

import json
import os
import posixpath
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .storage import filesystem, is_url, read_bytes, retrying


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the file to: renamed over ``path`` (atomic
    on POSIX) when the block ends, removed when it raises, so that a full disk or an interrupted
    write leaves neither a partial file under the name nor a stray temporary file using the space."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())    # as any new file: some writers (safetensors) make theirs owner-only
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def as_json(value):
    """``value`` as it reads back from a JSON file (tuples become lists)."""
    return json.loads(json.dumps(value))


def differing(now: dict, then: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The keys, sorted, whose values differ between ``now`` and ``then`` (a missing key is None)."""
    return sorted(k for k in now.keys() | then.keys() if k not in ignore and now.get(k) != then.get(k))


def refuse_other_settings(record: Path, settings: dict, *, holds: str, fix: str, ignore: tuple[str, ...] = (),
                          read: Callable[[dict], dict] = lambda stored: stored,
                          describe: Callable[[str, dict, dict], str] | None = None) -> dict | None:
    """Check ``settings`` against those recorded in the JSON file ``record``; return the stored
    record (None when there is none yet).

    Raises ValueError "FOLDER holds HOLDS made with other settings (WHAT; see RECORD): FIX" when a
    key outside ``ignore`` differs. ``read`` takes the settings out of the stored record (default:
    the whole record); ``describe(key, then, now)`` says how a key differs (default: its name).
    """
    if is_url(record):
        data = read_optional(record)
        if data is None:
            return None
        stored = json.loads(data)
    else:
        if not record.exists():
            return None
        stored = json.loads(record.read_text())
    then, now = read(stored), as_json(settings)
    changed = differing(now, then, ignore)
    if changed:
        what = "; ".join(describe(key, then, now) for key in changed) if describe else f"{', '.join(changed)} differ"
        raise ValueError(f"{parent_of(record)} holds {holds} made with other settings ({what}; see {record}): {fix}")
    return stored


def location(path: str | os.PathLike) -> str | Path:
    """Where a dataset (or a file of one) is: a URL as a string without a trailing slash, else a
    local Path (``Path("s3://b/x")`` would merge the two slashes)."""
    return os.fspath(path).rstrip("/") if is_url(path) else Path(path)


def parent_of(path: str | os.PathLike) -> str | Path:
    """The folder holding ``path`` (a URL's prefix, or a Path's parent)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[0] if is_url(path) else Path(path).parent


def name_of(path: str | os.PathLike) -> str:
    """The last part of a path or URL."""
    return posixpath.basename(os.fspath(path).rstrip("/")) if is_url(path) else Path(path).name


def missing_bucket(error: OSError) -> bool:
    """Whether a "not found" from object storage is about the bucket (a wrong URL, to report)
    rather than the object (absent, which callers expect)."""
    return "bucket does not exist" in str(error)


def read_optional(path: str | os.PathLike) -> bytes | None:
    """The bytes of a file or object; None when there is none (a missing bucket raises)."""
    try:
        return read_bytes(path)
    except FileNotFoundError as error:
        if missing_bucket(error):
            raise
        return None


def size_of(path: str | os.PathLike) -> int | None:
    """The size of a file or object in bytes; None when there is none (a missing bucket raises)."""
    if not is_url(path):
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None
    fs, remote = filesystem(path)

    def info() -> int:
        fs.invalidate_cache(remote)         # what another process wrote since this one listed the folder
        return int(fs.info(remote)["size"])
    try:
        return retrying(info, os.fspath(path))
    except FileNotFoundError as error:
        if missing_bucket(error):
            raise
        return None


def listing(folder: str | os.PathLike, depth: int = 1) -> dict[str, int]:
    """{path relative to ``folder``, with ``/``: size} of the files in ``folder`` and its sub-folders
    down to ``depth`` levels (1: the folder itself); {} when the folder does not exist. One request
    per folder listed in object storage (a bucket that does not exist raises)."""
    if not is_url(folder):
        found: dict[str, int] = {}
        base = Path(folder)
        for parent, subfolders, files in os.walk(base):
            relative = Path(parent).relative_to(base)
            if len(relative.parts) + 1 >= depth:
                subfolders.clear()
            for name in files:
                try:
                    found[(relative / name).as_posix()] = os.stat(os.path.join(parent, name)).st_size
                except FileNotFoundError:   # removed meanwhile
                    continue
        return found
    fs, remote = filesystem(folder)
    remote = remote.rstrip("/")

    def find() -> dict:
        fs.invalidate_cache(remote)
        return fs.find(remote, maxdepth=depth, detail=True, on_error="raise")
    try:
        entries = retrying(find, os.fspath(folder))
    except FileNotFoundError as error:
        if missing_bucket(error):
            raise
        return {}
    return {name[len(remote) + 1:]: int(entry["size"]) for name, entry in entries.items()
            if entry.get("type") != "directory" and name.startswith(remote + "/")}


def read_each(paths: Iterable[str | os.PathLike], window: int = 16) -> Iterator[bytes | None]:
    """:func:`read_optional` of each path, in order; objects are fetched ``window`` at a time
    (one request each costs a round trip: in a row, ten thousand shard indices would take minutes)."""
    paths = iter(paths)
    first = next(paths, None)
    if first is None:
        return
    if not is_url(first):
        yield read_optional(first)
        yield from map(read_optional, paths)
        return
    with ThreadPoolExecutor(window, thread_name_prefix="vivi-read") as pool:
        pending = deque([pool.submit(read_optional, first)])
        for path in paths:
            pending.append(pool.submit(read_optional, path))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def upload(local: Path, url: str) -> None:
    """Copy the local file ``local`` to the object ``url`` (which appears when complete)."""
    fs, remote = filesystem(url)
    retrying(lambda: fs.put_file(os.fspath(local), remote), url)


def download(url: str, local: Path) -> None:
    """Copy the object ``url`` to the local file ``local``."""
    fs, remote = filesystem(url)
    retrying(lambda: fs.get_file(remote, os.fspath(local)), url)


def remove(path: str | os.PathLike) -> None:
    """Remove a file or object if it is there."""
    if not is_url(path):
        Path(path).unlink(missing_ok=True)
        return
    fs, remote = filesystem(path)
    try:
        retrying(lambda: fs.rm_file(remote), os.fspath(path))
    except FileNotFoundError as error:
        if missing_bucket(error):
            raise
