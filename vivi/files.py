"""Files and folders that commands write: atomic replacement, and the settings a folder records.

Writing a file goes through :func:`replacing`, so that neither a crash nor an error leaves half of
it under its name. A folder that a command fills over several runs (a world, a dataset, its
detections, an evaluation, a demo) records the settings it was made with; a run with other
settings is refused by :func:`refuse_other_settings` instead of mixing two kinds of results.

A record may be an object in storage (``vivi.storage``): the check reads it the same way.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
