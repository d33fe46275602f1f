"""SIGTERM (what SLURM, Kubernetes, docker and systemd send before a kill) ends a command as Ctrl-C
does: exit status 143, the interrupted line, only complete files and no lock left, and the same
command then finishes with the outputs of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_eval import write_colour_task

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def vivi(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vivi.cli", *map(str, args)], capture_output=True, text=True,
                            env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def terminate_when(args, ready, group: bool) -> subprocess.CompletedProcess:
    """Run `vivi ARGS`, send SIGTERM (to its process group, as SLURM does, or to it alone, as docker
    and Kubernetes do) once ``ready()``, and return how it ended."""
    process = subprocess.Popen([sys.executable, "-m", "vivi.cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ready():
            assert time.time() < deadline and process.poll() is None, process.communicate()
            time.sleep(0.02)
        if group:
            os.killpg(process.pid, signal.SIGTERM)
        else:
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_stopped_cleanly(result, command: str, folder: Path) -> None:
    assert result.returncode == 143, result.stderr
    assert result.stderr.endswith(f"vivi {command}: interrupted; what was written is kept, run the same command to "
                                  "resume\n") and "Traceback" not in result.stderr, result.stderr
    left = [p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.startswith(".vivi-lock")]
    assert left == [], left


def test_sigterm_stops_a_parallel_synth_and_the_rerun_equals_an_uninterrupted_one(tmp_path):
    """SIGTERM to the whole process group (workers included): 143, no traceback from the workers,
    every file left is complete (byte-equal to an uninterrupted run's: no truncated video under its
    name), no staging folder or lock; the same command then writes the uninterrupted run's world."""
    settings = ["--videos", 80, "--seconds", 2, "--no-tasks", "--workers", 2]
    vivi("synth", tmp_path / "reference", *settings)
    reference = files_of(tmp_path / "reference")
    out = tmp_path / "w"
    result = terminate_when(["synth", out, *settings], lambda: len(list(out.glob("videos/*.json"))) >= 5, group=True)
    assert_stopped_cleanly(result, "synth", out)
    left = files_of(out)
    assert 5 <= len(left) < len(reference)
    assert {name: data for name, data in left.items() if reference[name] != data} == {}
    vivi("synth", out, *settings)
    assert files_of(out) == reference


def test_sigterm_stops_an_evaluation_and_the_resumed_one_equals_an_uninterrupted_one(tmp_path):
    """SIGTERM to `vivi eval` alone mid-sweep: 143, the finished units kept, no temporary file or
    lock; running the same command again computes the rest and gives the uninterrupted results."""
    suite = write_colour_task(tmp_path)
    settings = ["--checkpoint", "random:resnet_tiny_v2", "--suite", suite, "--protocol", "vtab1k", "--reps", 1,
                "--steps-scale", 0.01, "--resolution", 8, "--batch-size", 4, "--no-progress"]
    out = tmp_path / "out"
    result = terminate_when(["eval", *settings, "--out", out], lambda: list(out.glob("units/*/*.json")), group=False)
    assert_stopped_cleanly(result, "eval", out)
    assert not (out / "results.json").exists()
    vivi("eval", *settings, "--out", out)
    vivi("eval", *settings, "--out", tmp_path / "reference")
    assert files_of(out) == files_of(tmp_path / "reference")
