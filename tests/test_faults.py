"""Faults in the middle of a run: a process killed with SIGKILL (no clean-up of any kind) leaves a
folder from which the same command continues to exactly what an uninterrupted run gives.

The other cases of the fault campaign live beside the code they guard: ingest killed and resumed
(tests/test_ingest.py), two writers of one folder (tests/test_locks.py), SIGTERM (tests/test_signals.py,
tests/test_train.py), damaged shards, frames and JSON (tests/test_data.py), damaged checkpoints
(tests/test_checkpoint.py); docs/reliability.md lists them all.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vivi.cli import main
from vivi.train.checkpoint import read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# One thread in every process: the same float operations in the same order, so equal bit for bit.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _vivi(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vivi.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 180) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds (the test fails if it ends first)."""
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def test_training_killed_with_sigkill_resumes_to_the_weights_of_a_straight_run(dataset, tmp_path):
    """kill -9 between checkpoints: `--resume` continues from the newest checkpoint and ends with
    the parameters of a run never interrupted (catches state missing from checkpoints, a metrics
    log that blocks resume, or temporary files taken for checkpoints)."""
    over = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2", "run.ckpt_every=2",
            "run.keep_checkpoints=3"]
    run = tmp_path / "killed"
    process = _vivi("train", "--config", "tiny-vivi-ex4", "--data", str(dataset), "--out", str(run), *over,
                    "optim.steps=400")
    metrics = run / "metrics.jsonl"
    _kill_when(process, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5)
    stopped = read_checkpoint(run)["step"]
    assert 2 <= stopped < 400
    end = stopped + 3
    assert main(["train", "--data", str(dataset), "--out", str(run), "--resume", f"optim.steps={end}",
                 "data.workers=0"]) == 0
    straight = tmp_path / "straight"
    assert main(["train", "--config", "tiny-vivi-ex4", "--data", str(dataset), "--out", str(straight), *over,
                 f"optim.steps={end}"]) == 0
    a, b = read_checkpoint(straight), read_checkpoint(run)
    assert a["step"] == b["step"] == end
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
    assert logged[-(end - stopped):] == list(range(stopped + 1, end + 1))


def test_evaluation_killed_with_sigkill_resumes_to_the_results_of_a_straight_run(tmp_path):
    """kill -9 during the fine-tuning sweep: the same command keeps the finished units, does the
    rest, and writes the results of an uninterrupted evaluation (catches a unit file written
    before its run ended, or results that depend on where the run was stopped)."""
    suite = tmp_path / "digits.yaml"
    suite.write_text("tasks:\n  - name: digits\n    group: natural\n    source: digits\n")
    args = ["--checkpoint", "random:resnet_tiny_v2", "--suite", str(suite), "--reps", "1", "--steps-scale", "0.02",
            "--resolution", "8", "--batch-size", "32", "--no-progress"]
    out = tmp_path / "killed"
    process = _vivi("eval", *args, "--out", str(out))
    units = out / "units" / "digits"
    _kill_when(process, lambda: units.is_dir() and len(list(units.glob("*.json"))) >= 1)
    kept = sorted(p.name for p in units.glob("*.json"))
    assert main(["eval", *args, "--out", str(out)]) == 0
    assert main(["eval", *args, "--out", str(tmp_path / "straight")]) == 0
    resumed = json.loads((out / "results.json").read_text())
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert resumed["tasks"] == straight["tasks"] and resumed["mean"] == straight["mean"]
    assert set(kept) <= {p.name for p in units.glob("*.json")}
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
