"""Ingest on a local Ray instance (a task per shard) against ingest's own worker processes.

    python bench/ray_ingest.py [--videos 32] [--per-shard 4] [--seconds 8] [--size 128] [--cpus 2] [--reps 2]

Both run on the same synthetic videos (``vivi.synth.make_world``) with the same number of
processes (``--cpus``: Ray instance CPUs, ingest ``--workers``), interleaved over ``--reps``
rounds; each run writes a fresh dataset. Ray's instance is started once, before timing (a
cluster is up before a job is submitted to it). Printed: the median seconds of each and
``ray / processes``, the ratio of their throughputs (videos per second; 1.0: no cost for the
engine). Measured figures: docs/benchmarks.md, "Ingest".
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import ray

from vivi.ingest import IngestConfig, SamplingConfig, ingest
from vivi.synth import make_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    config = IngestConfig(sampling=SamplingConfig(short_side=args.size), videos_per_shard=args.per_shard)
    with tempfile.TemporaryDirectory(prefix="vivi-bench-") as scratch:
        scratch = Path(scratch)
        make_world(scratch / "world", videos=args.videos, seconds=args.seconds, size=args.size, seed=0,
                   workers=args.cpus, tasks=False, progress=False)
        inputs = [scratch / "world" / "videos"]
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        times: dict[str, list[float]] = {"processes": [], "ray": []}
        for rep in range(args.reps):
            for name, kwargs in (("processes", {"workers": args.cpus}), ("ray", {"ray": "local"})):
                out = scratch / f"{name}-{rep}"
                start = time.perf_counter()
                ingest(inputs, out, config, progress=False, **kwargs)
                times[name].append(time.perf_counter() - start)
                shutil.rmtree(out)
        ray.shutdown()
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.videos} videos of {args.seconds:g} s at {args.size} px, {args.per_shard} per shard, "
          f"{args.cpus} processes, median of {args.reps}:")
    for name, seconds in median.items():
        print(f"  {name:9s} {seconds:6.2f} s  {args.videos / seconds:5.1f} videos/s  "
              f"(rounds: {' '.join(f'{t:.2f}' for t in times[name])} s)")
    print(f"ray / processes throughput: {median['processes'] / median['ray']:.2f}")


if __name__ == "__main__":
    main()
