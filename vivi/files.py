"""Files and folders that commands write: atomic replacement, the settings a folder records, and
one writer per folder.

Writing a file goes through :func:`replacing`, so that neither a crash nor an error leaves half of
it under its name. A folder that a command fills over several runs (a world, a dataset, its
detections, an evaluation, a demo) records the settings it was made with; a run with other
settings is refused by :func:`refuse_other_settings` instead of mixing two kinds of results.
While a command writes a folder it holds the folder's :func:`writer_lock`, so that a second
command started into the same folder is refused instead of mixing two runs.

A record may be an object in storage (``vivi.storage``): the check reads it the same way.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .storage import is_url, parent_of, read_optional


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


def parse_json(data: bytes | str, path: str | Path, fix: str):
    """The JSON value in ``data`` read from ``path``; a file that does not parse (damaged on disk,
    or not vivi's) is named in one line with ``fix``."""
    try:
        return json.loads(data)
    except ValueError as error:
        raise ValueError(f"{path} is damaged (not JSON: {error}): {fix}") from None


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
    else:
        if not record.exists():
            return None
        data = record.read_bytes()
    stored = parse_json(data, record, "it records the settings the folder was made with: restore it from a copy, "
                        "or write into another folder")
    then, now = read(stored), as_json(settings)
    changed = differing(now, then, ignore)
    if changed:
        what = "; ".join(describe(key, then, now) for key in changed) if describe else f"{', '.join(changed)} differ"
        raise ValueError(f"{parent_of(record)} holds {holds} made with other settings ({what}; see {record}): {fix}")
    return stored


# --- one writer per folder -------------------------------------------------------------------

LOCK_NAME = ".vivi-lock"
HEARTBEAT_S = 30.0           # how often a holder refreshes its lock file's modification time
STALE_AFTER_S = 300.0        # a lock of another host not refreshed for this long is left by a dead process
UNWRITTEN_GRACE_S = 10.0     # a lock file still empty this long after its creation was left by a crash


class FolderLocked(ValueError):
    """The folder is being written by another live process (the CLI prints it as one line, exit 2)."""


# Locks this process holds: lock file -> depth, so that a command called inside another on the
# same folder (the demo's stages) re-enters instead of refusing itself. A forked child holds none.
_held: dict[str, int] = {}
_held_pid = os.getpid()
_held_guard = threading.Lock()


@contextmanager
def writer_lock(folder: str | Path, command: str, key: str | None = None) -> Iterator[None]:
    """Hold the lease on writing ``folder`` for the block: ``with writer_lock(out, "eval"): ...``.

    The lease is the file ``FOLDER/.vivi-lock`` (``FOLDER/.vivi-lock.KEY`` with a ``key``: writers
    of disjoint parts of one folder, e.g. ``key="part-0-of-4"`` for an ingest part, or one
    output file, take one each), created atomically (``O_CREAT | O_EXCL``) and holding JSON
    ``{host, pid, start, boot, command, key, since, token}``; ``start`` is the process's start
    time (``/proc/PID/stat``), so that a pid reused by another process is not taken for the
    holder. A daemon thread refreshes the file's modification time every :data:`HEARTBEAT_S`.

    Another holder's live lease raises :class:`FolderLocked` ("FOLDER is being written by `vivi
    COMMAND` (pid P on host H, since ...): wait for it to finish, or pass another folder"). A
    stale lease is taken over, with one line on stderr naming the old holder: on this host, one
    whose process is gone (or whose pid now belongs to another process, or a lease from before
    a reboot); of another host (a shared file system), one not refreshed for
    :data:`STALE_AFTER_S`. The lease is removed when the block ends, by an error, Ctrl-C or
    SIGTERM too; after ``kill -9`` or a power loss it stays and is found stale by the next
    command.

    The same process may enter the same lock again (a command run by another one, as the demo
    runs synth and eval); the lease ends with the outermost block. A folder in object storage (a
    URL) gets no lease: object stores offer no atomic create-if-absent through the interfaces
    vivi uses (fsspec), so two writers cannot be told apart there; the block runs unguarded.
    """
    if is_url(folder):
        yield
        return
    if key is not None and (not key or "/" in key or "\0" in key):
        raise ValueError(f"a lock key must be a non-empty file name without '/', got {key!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder.resolve() / (LOCK_NAME if key is None else f"{LOCK_NAME}.{key}")
    global _held_pid
    with _held_guard:
        if _held_pid != os.getpid():      # a forked child: the parent's leases are not its own
            _held.clear()
            _held_pid = os.getpid()
        depth = _held.get(str(path), 0)
        if depth:
            _held[str(path)] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _held_guard:
                _held[str(path)] -= 1
        return
    lease = _Lease(path, folder, command, key)
    lease.acquire()
    if key is None:
        remove_orphaned_tmp_files(folder)
    with _held_guard:
        _held[str(path)] = 1
    try:
        yield
    finally:
        with _held_guard:
            _held.pop(str(path), None)
        lease.release()


def remove_orphaned_tmp_files(folder: Path) -> list[Path]:
    """Remove the temporary files of :func:`replacing` under ``folder`` whose writer no longer runs
    (killed with SIGKILL, or the machine lost power, while writing); returns them. Called by the
    holder of the folder's whole lease, so no other writer's file can be among them."""
    removed = []
    for tmp in folder.rglob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and tmp.is_file() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (None where /proc has none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[19]     # field 22; the name before ")" may hold spaces


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:           # another user's process
        return True
    return True


def _read_lease(path: Path) -> dict | None:
    """The lease in ``path``: its record (``{}`` while it is still being written), None when gone."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = {}
    return {**record, "age": age} if isinstance(record, dict) else {"age": age}


def _holder(record: dict) -> str:
    since = record.get("since", "?").replace("T", " ")[:16]
    return (f"`vivi {record.get('command', '?')}` (pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
            f"since {since} UTC)")


def _stale(record: dict) -> str | None:
    """Why the lease ``record`` is stale, or None while its holder may be alive."""
    if "token" not in record:
        return "left unwritten by a crash" if record["age"] > UNWRITTEN_GRACE_S else None
    if record.get("host") != socket.gethostname():
        if record["age"] > STALE_AFTER_S:
            return f"not refreshed for {record['age'] / 60:.0f} min"
        return None
    pid = int(record.get("pid", 0))
    boot = _boot_id()
    if record.get("boot") and boot and record["boot"] != boot:
        return "from before the machine restarted"
    if pid <= 0 or not _running(pid):
        return "that process is gone"
    start = _start_time(pid)
    if record.get("start") and start and record["start"] != start:
        return f"pid {pid} is now another process"
    return None


class _Lease:
    """The lock file of one holder: acquire (or take over a stale one), heartbeat, release."""

    def __init__(self, path: Path, folder: Path, command: str, key: str | None) -> None:
        self.path, self.folder, self.key = path, folder, key
        self.token = secrets.token_hex(16)
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid()),
                       "boot": _boot_id(), "command": command, "key": key,
                       "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "token": self.token}
        self.stop = threading.Event()

    def acquire(self) -> None:
        deadline = time.monotonic() + 2 * UNWRITTEN_GRACE_S
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_take_over()
                if time.monotonic() > deadline:
                    raise FolderLocked(f"{self.folder}: could not take {self.path} (other commands keep taking "
                                       "it): run one command at a time into this folder") from None
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.record))
                f.flush()
                os.fsync(f.fileno())      # a holder that crashes leaves a readable lease, not an empty file
            break
        threading.Thread(target=self._heartbeat, name="vivi-lock-heartbeat", daemon=True).start()

    def _refuse_or_take_over(self) -> None:
        record = _read_lease(self.path)
        if record is None:            # released meanwhile: try again
            return
        why = _stale(record)
        if why is None:
            if "token" not in record:     # being written by its holder right now
                time.sleep(0.05)
                return
            where = f"{self.folder} ({self.key})" if self.key else str(self.folder)
            raise FolderLocked(f"{where} is being written by {_holder(record)}: wait for it to finish, or pass "
                               "another folder")
        if self._set_aside(record.get("token")):
            print(f"vivi {self.record['command']}: taking over the lock of {self.folder} left by "
                  f"{_holder(record)}: {why}", file=sys.stderr, flush=True)

    def _set_aside(self, token: str | None) -> bool:
        """Move the stale lease judged by its ``token`` out of the way. Two takers may both judge it
        stale: the rename moves whatever lease is there now, so a taker that finds it moved
        another's fresh lease puts that one back (``link`` fails if yet another lease appeared)."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = _read_lease(aside) or {}
        if moved.get("token") != token:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            except OSError:           # no hard links on this file system
                os.rename(aside, self.path)
        aside.unlink(missing_ok=True)
        return moved.get("token") == token

    def _heartbeat(self) -> None:
        warned = False
        while not self.stop.wait(HEARTBEAT_S):
            record = _read_lease(self.path)
            if record is not None and record.get("token") == self.token:
                try:
                    os.utime(self.path)
                except OSError:
                    pass
            elif not warned:      # taken over by a command that judged this one dead (a long stop?)
                warned = True
                print(f"vivi {self.record['command']}: warning: the lock of {self.folder} was taken over"
                      + (f" by {_holder(record)}" if record else "") + "; two commands may now write it",
                      file=sys.stderr, flush=True)

    def release(self) -> None:
        self.stop.set()
        record = _read_lease(self.path)
        if record is not None and record.get("token") == self.token:
            self.path.unlink(missing_ok=True)
