"""Training speed on a machine that another program keeps busy: PyTorch's default threads against
vivi's choice.

Starts ``--load`` busy processes (each keeps one core busy, as another job on a shared machine
would), then runs the same short training (`vivi train`, ``--steps`` steps of ``--config``) twice
in one run: with ``--threads`` = every usable core (PyTorch's default: one thread per core) and
with vivi's own choice (the idle cores; `vivi --verbose` prints it). Prints both times and their
ratio.

Usage (a synthetic dataset: `vivi synth W && vivi ingest W/videos --out D --short-side 64`)::

    python bench/threads.py --data D [--config tiny-vivi-ex4] [--steps 40] [--load 1]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

from vivi.threads import usable_cores


def spin() -> None:
    while True:
        pass


def train_seconds(args, threads: list[str]) -> tuple[float, str]:
    """Seconds of one `vivi train` and the thread line it printed."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "vivi.cli", "--verbose", *threads, "train", "--config", args.config,
                   "--data", args.data, "--out", out, f"optim.steps={args.steps}", "run.ckpt_every=100000",
                   "data.workers=0", "run.log_every=1000"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(result.stderr)
    line = next((line for line in result.stderr.splitlines() if "intra-op thread" in line), "?")
    return seconds, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an ingested dataset")
    parser.add_argument("--config", default="tiny-vivi-ex4", help="preset or YAML (default tiny-vivi-ex4)")
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run (default 40)")
    parser.add_argument("--load", type=int, default=1, help="busy processes beside the training (default 1)")
    args = parser.parse_args()
    cores = usable_cores()
    load = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.load)]
    for process in load:
        process.start()
    try:
        time.sleep(1.0)
        default, default_line = train_seconds(args, ["--threads", str(cores)])
        chosen, chosen_line = train_seconds(args, [])
    finally:
        for process in load:
            process.kill()
    print(f"{cores} usable cores, {args.load} busy process(es), {args.steps} steps of {args.config}")
    print(f"  one thread per core:  {default:6.1f} s   ({default_line.split(': ', 1)[-1]})")
    print(f"  vivi's choice:        {chosen:6.1f} s   ({chosen_line.split(': ', 1)[-1]})")
    print(f"  speed-up: {default / chosen:.2f}x")


if __name__ == "__main__":
    main()
