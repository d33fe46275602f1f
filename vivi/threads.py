"""How many intra-op threads each of vivi's processes runs.

PyTorch's default, one thread per core in every process, oversubscribes the machine as soon as
more than one process computes at once: torchrun's ranks on one machine, the demo's parallel
jobs, or another program on a shared machine. OpenMP threads then spin while they wait for cores
held by the others, and a training step gets several times slower (docs/benchmarks.md,
"Threads"). So every command divides the cores it may use (this process's CPU affinity and the
container's CPU quota) that other programs leave idle by the processes it runs at once.
``vivi --threads N COMMAND`` sets the number instead; ``vivi --verbose`` prints the choice.
"""
from __future__ import annotations

import math
import os
import time

__all__ = ["OtherProcesses", "choose_threads", "usable_cores"]


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (taskset, SLURM's --cpus-per-task), capped
    by a cgroup v2 CPU quota (docker --cpus, Kubernetes limits), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class OtherProcesses:
    """CPU cores used by all other processes, averaged since the previous reading (over at least
    ``WINDOW`` seconds: a shorter one keeps the previous value). Linux (/proc/stat); None elsewhere
    and until a first window has passed."""

    WINDOW = 0.2

    def __init__(self):
        self._last = self._read()
        self._cores: float | None = None

    @staticmethod
    def _read() -> tuple[float, float] | None:
        """(monotonic time, CPU seconds of the whole machine minus this process's) or None."""
        try:
            with open("/proc/stat") as f:
                ticks = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return time.monotonic(), busy - own.user - own.system

    def cores(self) -> float | None:
        now = self._read()
        if now is None or self._last is None:
            return None
        if now[0] - self._last[0] >= self.WINDOW:
            self._cores = max(0.0, (now[1] - self._last[1]) / (now[0] - self._last[0]))
            self._last = now
        return self._cores


def choose_threads(processes: int = 1, *, cores: int | None = None, busy: float | None = None) -> tuple[int, str]:
    """(intra-op threads for each of ``processes`` processes that compute at once, the reason in words).

    ``cores``: the cores this command may use (default :func:`usable_cores`); ``busy``: cores
    other programs keep busy (default: measured over :attr:`OtherProcesses.WINDOW`, Linux only).
    A core counts as taken by others once they use more than half of it.
    """
    cores = usable_cores() if cores is None else cores
    if busy is None:
        others = OtherProcesses()
        time.sleep(OtherProcesses.WINDOW)
        busy = others.cores() or 0.0
    idle = max(1, cores - math.floor(busy + 0.5))
    threads = max(1, idle // max(1, processes))
    reason = (f"{cores} usable core(s), {cores - idle} busy with other programs, {max(1, processes)} process(es) "
              "computing at once")
    return threads, reason
