"""Planning an ingest of a list of 10^4 .. 10^6 videos, and finding what is left on resume.

    python bench/plan_scale.py [--sizes 10000 100000 1000000] [--done 0.1]

For each size, in a fresh process (so that peak memory is that size's): a list file of that many
video paths is written (the files need not exist: planning takes an entry with a video extension
as a file without looking at it); then

* plan:    ``vivi.ingest.pipeline.plan_ingest`` on a new dataset folder (the list read, the sorted
           de-duplicated inputs, plan.json written durably, the shards to do);
* resume:  a fraction ``--done`` of the shards made complete (small stand-in tars and indices),
           then ``plan_ingest`` again: the plan read back and checked, the shards still to do found;
* manifest: ``finalize``, what every run ends with: the complete shards' indices read one at a
           time into manifest.json and failures.jsonl.

Printed: seconds of each, and the process's peak resident memory after the resume and after
the manifest. Measured figures:
docs/benchmarks.md, "Ingest".
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(size: int, done: float) -> None:
    from vivi.ingest import IngestConfig, shards
    from vivi.ingest.pipeline import finalize, plan_ingest
    config = IngestConfig()
    with tempfile.TemporaryDirectory(prefix="vivi-plan-") as scratch:
        listing, out = Path(scratch) / "videos.txt", Path(scratch) / "ds"
        listing.write_text("".join(f"/data/videos/{i % 1000:03d}/clip-{i:08d}.mp4\n" for i in range(size)))
        start = time.perf_counter()
        plan, unwritten, mine, todo, _ = plan_ingest([listing], out, config)
        shards.write_all_atomic(unwritten)
        planned = time.perf_counter() - start
        per_shard = config.videos_per_shard
        (out / shards.SHARD_DIR).mkdir()
        for j in range(0, len(mine), round(1 / done)):
            tar = out / shards.SHARD_DIR / f"{shards.shard_name(j)}.tar"
            tar.write_bytes(bytes(1024))
            videos = [{"key": shards.video_key(i), "source": plan["inputs"][i], "fps": 25.0, "duration_s": 30.0,
                       "shot_starts": [0, 150, 300, 450, 600], "shot_starts_s": [0.0, 6.0, 12.0, 18.0, 24.0],
                       "frame_times_s": [k + 0.5 for k in range(30)], "frame_shot": [k // 6 for k in range(30)]}
                      for i in range(j * per_shard, min((j + 1) * per_shard, size))]
            tar.with_suffix(".json").write_text(json.dumps({"shard": f"shards/{tar.name}", "bytes": 1024,
                                                            "videos": videos, "failures": []}) + "\n")
        del plan, todo
        start = time.perf_counter()
        _, _, mine, todo, _ = plan_ingest([listing], out, config)
        resumed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        finalize(out)
        finalized = time.perf_counter() - start
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{size:>9,d} videos: plan {planned:6.2f} s, resume {resumed:6.2f} s "
          f"({len(mine) - len(todo)} of {len(mine)} shards done), peak RSS {peak:5.0f} MiB; "
          f"manifest {finalized:6.2f} s, peak RSS then {peak_after:5.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--done", type=float, default=0.1, help="fraction of shards complete before resuming")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)      # a size, measured in this process
    args = parser.parse_args()
    if args.one is not None:
        measure(args.one, args.done)
        return
    for size in args.sizes:
        subprocess.run([sys.executable, __file__, "--one", str(size), "--done", str(args.done)], check=True)


if __name__ == "__main__":
    main()
