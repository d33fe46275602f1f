"""Where datasets live: a local folder, or object storage named by a URL.

vivi reads and writes datasets through `fsspec <https://filesystem-spec.readthedocs.io>`_, so any
URL fsspec knows works where a folder does: ``s3://bucket/prefix`` (s3fs: AWS S3 and every
S3-compatible store), ``gs://`` (with ``gcsfs`` installed), ``http(s)://`` for reading, and plain
paths. The endpoint of an S3-compatible store comes from the standard ``AWS_ENDPOINT_URL``
environment variable, credentials from the usual AWS variables and files.

An object store has no rename: an object appears when its upload is complete, which gives the
same guarantee as a local rename (no reader sees half an object). vivi's datasets rely on that
order: a shard's tar is uploaded before its index, so an index names a complete tar.

Transient failures (a dropped connection, a timeout, a busy server) are retried with exponential
backoff; what still fails raises :class:`StorageError` with one line naming the object and what
to do. Every helper here takes a local path or a URL, so that the dataset's modules say once what
they do with a file.
"""
from __future__ import annotations

import os
import posixpath
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

__all__ = ["StorageError", "download", "filesystem", "is_url", "join", "listing", "location", "missing_bucket",
           "name_of", "parent_of", "read_bytes", "read_each", "read_optional", "remove", "retrying", "size_of",
           "upload", "write_bytes"]

T = TypeVar("T")
ATTEMPTS = 5            # tries of an operation before its failure is reported
BACKOFF_S = 0.5         # first wait between tries; doubled each time (with jitter)


class StorageError(OSError):
    """An object store said no, or could not be reached: the message names the object and the fix."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL of a remote store (``scheme://...``, not ``file://``)."""
    text = os.fspath(path)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme not in ("file", "") and "/" not in scheme


def join(base: str | os.PathLike, *parts: str) -> str | Path:
    """``base / part / ...``: a Path for a local folder, a string URL for a remote one."""
    if is_url(base):
        return "/".join([os.fspath(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return Path(base).joinpath(*parts)


def filesystem(url: str | os.PathLike):
    """(fsspec file system, path inside it) of ``url``."""
    try:
        from fsspec.core import url_to_fs
    except ImportError:        # pragma: no cover - fsspec is a dependency
        raise StorageError(f"{url}: reading URLs needs fsspec (pip install fsspec s3fs)") from None
    text = os.fspath(url)
    # One retry policy, vivi's (retrying): the back ends' own retries would multiply with it.
    options = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 10}} \
        if text.startswith(("s3://", "s3a://")) else {}
    try:
        return url_to_fs(text, **options)
    except (ImportError, ValueError) as error:
        raise StorageError(f"{url}: {error} (an s3:// URL needs s3fs, gs:// needs gcsfs)") from None


def _transient(error: BaseException) -> bool:
    """Whether ``error`` may go away on its own (a connection or a busy server), not a refusal."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "ConnectionClosedError", "ResponseStreamingError", "ClientPayloadError",
                "ServerDisconnectedError", "ClientConnectorError", "IncompleteReadError"}:
        return True
    text = str(error)
    return any(code in text for code in ("SlowDown", "InternalError", "ServiceUnavailable", "503", "500 "))


def describe(error: BaseException, target: str) -> str:
    """One line: what went wrong with ``target`` and what to do."""
    text = " ".join(str(error).split()) or type(error).__name__
    names = {cls.__name__ for cls in type(error).__mro__}
    if "EndpointConnectionError" in names or "ClientConnectorError" in names:
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        where = f"the object store at {endpoint} (AWS_ENDPOINT_URL)" if endpoint else "the object store"
        return f"{target}: cannot reach {where}: check the address and that the server runs ({text})"
    if "bucket does not exist" in text or "NoSuchBucket" in text:
        return f"{target}: the bucket does not exist: create it, or fix the URL"
    if isinstance(error, PermissionError) or any(word in text.lower() for word in (
            "accessdenied", "access denied", "invalidaccesskeyid", "signaturedoesnotmatch", "credentials",
            "forbidden", "403")):
        return (f"{target}: access denied ({text}): set the credentials (AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials) of a user allowed to read and write there")
    if isinstance(error, FileNotFoundError):
        return f"{target}: not found"
    return f"{target}: {text}"


def retrying(operation: Callable[[], T], target: str, attempts: int = ATTEMPTS) -> T:
    """``operation()``, tried again after transient failures with exponential backoff; a failure
    that stays raises :class:`StorageError` naming ``target``."""
    for attempt in range(attempts):
        try:
            return operation()
        except StorageError:
            raise
        except Exception as error:        # what fsspec's back ends raise varies: classified below
            if not _transient(error):
                if isinstance(error, FileNotFoundError):
                    raise FileNotFoundError(describe(error, target)) from None
                raise StorageError(describe(error, target)) from None
            if attempt == attempts - 1:
                raise StorageError(f"{describe(error, target)} (after {attempts} tries)") from None
            time.sleep(BACKOFF_S * 2 ** attempt * (1 + 0.25 * random.random()))
    raise AssertionError("unreachable")   # pragma: no cover


def read_bytes(url: str | os.PathLike, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of a file or object (``start``..``end`` only, when given)."""
    if not is_url(url):
        with open(url, "rb") as f:
            if start is None:
                return f.read()
            f.seek(start)
            return f.read((end if end is not None else os.fstat(f.fileno()).st_size) - start)
    fs, path = filesystem(url)
    return retrying(lambda: fs.cat_file(path, start=start, end=end), os.fspath(url))


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Write a whole file or object; it appears complete or not at all (a local file goes through
    a temporary name and a rename, an object is complete when its upload is)."""
    if not is_url(url):
        from vivi.files import replacing
        with replacing(url) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(url)
    retrying(lambda: fs.pipe_file(path, data), os.fspath(url))


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
