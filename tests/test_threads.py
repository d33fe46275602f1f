"""Intra-op threads: the idle usable cores divided by the processes computing at once."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vivi.threads import choose_threads, usable_cores


@pytest.mark.parametrize("processes, cores, busy, expected", [
    (1, 16, 0.0, 16), (4, 16, 0.0, 4), (2, 16, 3.4, 6), (2, 16, 0.4, 8), (8, 2, 0.0, 1), (1, 2, 5.0, 1)])
def test_threads_divide_the_idle_cores_by_the_processes(processes, cores, busy, expected):
    """Catches PyTorch's default kept under load or with several processes (every process one thread
    per core: oversubscription), and a count of 0 when the machine is fully busy."""
    assert choose_threads(processes, cores=cores, busy=busy)[0] == expected


def test_usable_cores_follow_the_cpu_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this system")
    code = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); " \
           "from vivi.threads import usable_cores; print(usable_cores())"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "1"
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("args, environment, reason", [
    (["--threads", "3"], {}, "(--threads)"), ([], {"OMP_NUM_THREADS": "1"}, "(OMP_NUM_THREADS)"),
    ([], {}, "usable core(s)")])
def test_a_torch_command_says_its_threads_in_verbose_mode(tmp_path, args, environment, reason):
    """`vivi -v COMMAND` prints the choice and where it came from; the command itself still runs."""
    import cv2
    import numpy as np
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | environment
    result = subprocess.run([sys.executable, "-m", "vivi.cli", "-v", *args, "embed", str(tmp_path / "a.png"),
                             "--checkpoint", "random:resnet_tiny_v2", "--out", str(tmp_path / "e.npy")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    line = result.stderr.splitlines()[0]
    assert line.startswith("vivi embed: ") and "intra-op thread(s) per process" in line and reason in line, line
    if args:
        assert line.startswith("vivi embed: 3 intra-op")
