"""bench/gpu_check.sh --dry-run: every step of the GPU check runs on the CPU at toy sizes and is
recorded with the keys the GPU run writes; a step that hangs is killed with its process group and
recorded, and the check goes on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    """Catches a step of the GPU check that no longer runs (a renamed function, a changed preset,
    an import the check lacks), or a report missing a key that the GPU run's readers expect."""
    out = tmp_path / "report"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert set(report) == {"dry_run", "torch", "python", "device", "steps", "seconds", "summary"}
    assert report["dry_run"] is True and list(report["steps"]) == list(gpu_check.STEPS)
    for name, record in report["steps"].items():
        assert record["ok"] is True, (name, record)
        assert {"name", "ok", "seconds", "timeout_s"} <= set(record) and "error" not in record
    for name in ("step_eager", "step_compiled"):
        step = report["steps"][name]
        assert {"vivi", "supervised", "ratio", "ratio_threshold", "ratio_pass", "frames_per_step"} <= set(step)
        for model in ("vivi", "supervised"):
            assert {"steps_per_s", "frames_per_s", "peak_memory_gib", "first_steps_s"} <= set(step[model])
            assert step[model]["steps"] == 4 and step[model]["steps_per_s"] > 0
    assert report["steps"]["step_compiled"]["compiled"] is True      # compiled, not fallen back to eager
    assert report["steps"]["torchrun"]["steps"] == 2 and report["steps"]["torchrun"]["backend"] == "gloo"
    timm = report["steps"]["timm_export"]
    assert "has no timm counterpart" in timm["torchrun_run"]["refused"]      # the tiny encoder is refused
    assert timm["resnet50_v2_bn"]["names_and_shapes_match"] and timm["resnet50_v2_gnws"]["names_and_shapes_match"]
    summary = report["summary"]
    assert set(summary) == {"ratio_threshold", "ratio_eager", "ratio_compiled", "ratio_pass", "loader_threshold",
                            "loader_over_step", "loader_pass", "timm_max_rel_diff", "failed_steps"}
    assert summary["failed_steps"] == [] and summary["loader_over_step"] > 0
    assert (out / "gpu_check.txt").read_text().rstrip().endswith("all steps ok")


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its new parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_hanging_step_is_killed_with_its_children_and_recorded(tmp_path, monkeypatch):
    """Catches a check that waits for ever on a hung step, or kills the step and leaves its child
    processes (DataLoader workers, torchrun's workers) running."""
    pid_file = tmp_path / "grandchild.pid"
    fake = tmp_path / "fake-python"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gpu_check.sys, "executable", str(fake))
    args = type("Args", (), {"mode": "dry", "steps": 1})()
    logs = tmp_path / "logs"
    logs.mkdir()
    start = time.monotonic()
    record = gpu_check.run_step("world", args, tmp_path, logs, deadline=time.monotonic() + 6)
    assert time.monotonic() - start < 20
    assert record["ok"] is False and record["error"] == "timed out after 6 s"
    assert not _running(int(pid_file.read_text()))
    spent = gpu_check.run_step("loader", args, tmp_path, logs, deadline=time.monotonic() + 1)
    assert spent["ok"] is False and "time budget is spent" in spent["error"]
