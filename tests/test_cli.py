"""The `vivi` command: thin subcommands over the library, clear errors on bad input."""
from __future__ import annotations

import json
import subprocess
import sys


def vivi(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "vivi.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_synth_ingest_inspect(tmp_path):
    vivi("synth", tmp_path / "world", "--videos", 3, "--seconds", 5, "--no-tasks", "--workers", 1)
    assert len(list((tmp_path / "world" / "videos").glob("*.mp4"))) == 3
    for part in ("0/2", "1/2"):
        out = vivi("ingest", tmp_path / "world" / "videos", "--out", tmp_path / "data", "--short-side", 64,
                   "--videos-per-shard", 1, "--part", part, "--workers", 1)
    assert "3 videos" in out.stdout
    stats = json.loads(vivi("inspect", tmp_path / "data", "--json", "--render", tmp_path / "sheet.png").stdout)
    assert stats["videos"] == 3 and stats["complete"]
    assert (tmp_path / "sheet.png").stat().st_size > 0


def test_errors_name_the_problem_and_the_fix(tmp_path):
    result = vivi("ingest", tmp_path / "missing", "--out", tmp_path / "data", check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    result = vivi("ingest", tmp_path, "--out", tmp_path / "data", "--part", "3/2", check=False)
    assert result.returncode == 2 and "part" in result.stderr
    result = vivi("inspect", tmp_path, check=False)
    assert result.returncode == 2 and "vivi ingest" in result.stderr
    result = vivi("ingest", check=False)
    assert result.returncode == 2 and "usage" in result.stderr


def test_demo_flags_are_checked_before_anything_is_written(tmp_path):
    result = vivi("demo", "--out", tmp_path / "demo", "--methods", "vivi-ex5", check=False)
    assert result.returncode == 2 and "unknown demo method" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()
    result = vivi("demo", "--quick", "--full", check=False)
    assert result.returncode == 2 and "not allowed with" in result.stderr
    for flag, value, words in (("--seeds", 0, "--seeds 0"), ("--steps", -1, "--steps -1"), ("--workers", 0, "--workers")):
        result = vivi("demo", "--quick", "--out", tmp_path / "demo", flag, value, check=False)
        assert result.returncode == 2 and words in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "demo").exists()


def test_a_file_where_a_folder_goes_and_a_full_disk_are_named(world, tmp_path):
    import errno

    from vivi.cli import _file_system_error
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for args in (("synth", blocker, "--videos", 1, "--no-tasks"), ("ingest", world / "videos", "--out", blocker / "data")):
        result = vivi(*args, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"{blocker} is a file where a folder is needed" in result.stderr
    assert blocker.read_text() == "not a folder"
    full = _file_system_error(OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("no space left on the device") and "run the command again" in full
