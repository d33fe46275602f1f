"""What opening a dataset and drawing batches cost as the dataset grows: 10^4 to 10^6 videos.

Fabricates, for each N, a dataset of N videos of 230 frames at 1 Hz (a four-minute video, about
YouTube-8M's mean length) in shards of 32 videos: the shard indices as ingest writes them and
sparse tar files of the right size (no pixels: nothing is decoded). Then, each in a fresh
process:

* builds the columnar index (``vivi index``), and times it;
* opens the clip dataset (K = 4 shots x F = 8 frames) from the index: seconds, and resident
  memory per video in the main process;
* draws batches of 64 videos through a DataLoader with 2 workers, reading every frame's bytes
  but not decoding them: a worker's milliseconds to choose a batch's clips (the index's part) and
  to read their frames (sparse tar files: page-cache work, no disk), and each worker's memory;
* at the smallest N, the same opening from the shard indices alone (the dataset without its
  index file), the reference the index is measured against.

    python bench/scale.py                       # N = 10^4, 10^5, 10^6 (the largest needs ~20 GB of disk)
    python bench/scale.py --videos 10000 100000 --dir /big/disk/scale
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FRAMES, SHOTS, PER_SHARD, JPEG_BYTES = 230, 40, 32, 12_000
BASELINE = 100        # videos of the dataset every memory figure is measured against


def fabricate(root: Path, videos: int, seed: int = 0) -> None:
    """Shard indices and sparse tars for ``videos`` videos of FRAMES frames in SHOTS shots."""
    from vivi.ingest.shards import SHARD_DIR, frame_member, json_bytes, member_header, shard_name, video_key
    rng = np.random.default_rng(seed)
    folder = root / SHARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_bytes(json_bytes({"version": 1, "config": {"videos_per_shard": PER_SHARD},
                                                 "inputs": []}))
    times = [k + 0.5 for k in range(FRAMES)]
    native = [int(t * 25) for t in times]
    header = len(member_header(frame_member(video_key(0), 0), JPEG_BYTES))
    for shard in range((videos + PER_SHARD - 1) // PER_SHARD):
        records, offset = [], 0
        for i in range(shard * PER_SHARD, min(videos, (shard + 1) * PER_SHARD)):
            cuts = np.sort(rng.choice(np.arange(1, FRAMES), SHOTS - 1, replace=False))
            frame_shot = np.searchsorted(cuts, np.arange(FRAMES), side="right").tolist()
            record_member = [offset + 512, 600]
            offset += 512 + 1024
            members = []
            for _ in range(FRAMES):
                members.append([offset + header, JPEG_BYTES])
                offset += header + JPEG_BYTES + (-JPEG_BYTES % 512)
            records.append({
                "key": video_key(i), "source": f"/videos/video-{i:07d}.mp4", "fps": 25.0, "duration_s": 230.0,
                "frame_size": [256, 455], "shot_starts": [0, *(int(c * 25) for c in cuts)],
                "shot_starts_s": [0.0, *(float(c) for c in cuts)], "frame_times_s": times,
                "frame_native_index": native, "frame_shot": frame_shot, "record_member": record_member,
                "frame_members": members})
        size = offset + 1024 + (-(offset + 1024) % 10240)
        tar = folder / f"{shard_name(shard)}.tar"
        with open(tar, "wb") as f:
            f.truncate(size)                                  # sparse: no block is written
        index = {"shard": f"{SHARD_DIR}/{shard_name(shard)}.tar", "bytes": size, "videos": records, "failures": []}
        (folder / f"{shard_name(shard)}.json").write_text(json.dumps(index) + "\n")


def _memory_mb() -> tuple[float, float]:
    """(anonymous, resident) memory of this process in MB. Anonymous memory is the process's own
    (Python objects, arrays it made); the rest of the resident set is file pages, such as the
    index's, which every process shares through the page cache and the kernel can drop."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("Rss", "Anonymous"):
                fields[name] = int(value.split()[0]) / 1024
    return fields["Anonymous"], fields["Rss"]


def measure(root: str, batches: int) -> dict:
    """Run in a fresh process: open the clip dataset, draw ``batches`` batches with 2 workers."""
    import torch
    from torch.utils.data import DataLoader, get_worker_info

    from vivi.data import ClipConfig, VideoClipDataset, VideoSampler

    class Bytes(VideoClipDataset):
        """The clip's frames read as bytes, not decoded (the tars are sparse)."""

        def __getitem__(self, item):
            tick = time.perf_counter()
            index, draw = item
            video, shots, frames = self.clip(index, draw)
            chosen = time.perf_counter()
            for shot in frames:
                for f in shot:
                    self.dataset.read_jpeg(video, f)
            read = time.perf_counter()
            info = get_worker_info()
            # memory is read in the last batch only: reading it costs more than drawing a clip
            anonymous, resident = _memory_mb() if draw >= batches * 64 else (0.0, 0.0)
            return torch.tensor([chosen - tick, info.id if info else -1, anonymous, resident, read - chosen],
                                dtype=torch.float64)

    start = time.perf_counter()
    dataset = Bytes(root, ClipConfig(shots=4, frames=8))
    opened = time.perf_counter() - start
    anonymous_open, _ = _memory_mb()
    loader = DataLoader(dataset, batch_size=64, sampler=VideoSampler(len(dataset), seed=0, rank=0, world_size=1),
                        num_workers=2, prefetch_factor=2)
    worker_anonymous: dict[int, float] = {}
    worker_files: dict[int, float] = {}
    choose, work = [], []
    it = iter(loader)
    next(it)                                                  # workers started, first pages touched
    for _ in range(batches):
        batch = next(it)
        choose.append(float(batch[:, 0].sum()))              # a worker's time for the whole batch:
        work.append(float(batch[:, 4].sum()))                # the clips chosen, their frames read
        for _, worker, anonymous, resident, _ in batch.tolist():
            if not resident:
                continue
            worker_anonymous[int(worker)] = max(worker_anonymous.get(int(worker), 0.0), anonymous)
            worker_files[int(worker)] = max(worker_files.get(int(worker), 0.0), resident - anonymous)
    del it
    return {"videos": len(dataset.dataset), "open_s": opened, "anonymous_mb": anonymous_open,
            "worker_anonymous_mb": max(worker_anonymous.values()), "worker_files_mb": max(worker_files.values()),
            "choose_ms": 1000 * float(np.median(choose)), "read_ms": 1000 * float(np.median(work)),
            "mapped": dataset.dataset.index.path is not None}


def _in_fresh_process(root: Path, batches: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", str(root), "--batches", str(batches)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=20, help="batches drawn per measurement (default 20)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the datasets are made (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the fabricated datasets")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.batches)))
        return
    from vivi.ingest.index import INDEX_FILE, write_index
    base = Path(tempfile.mkdtemp(prefix="vivi-scale-", dir=args.dir))
    rows = []
    try:
        for n in [BASELINE, *sorted(args.videos)]:
            root = base / f"n{n}"
            tick = time.perf_counter()
            fabricate(root, n)
            made = time.perf_counter() - tick
            if n == min(args.videos):
                reference = _in_fresh_process(root, args.batches)        # the shard indices alone
            tick = time.perf_counter()
            write_index(root)
            built = time.perf_counter() - tick
            result = _in_fresh_process(root, args.batches)
            result.update(fabricated_s=made, index_s=built, index_mb=(root / INDEX_FILE).stat().st_size / 2**20)
            rows.append(result)
            if n != BASELINE:
                print(f"N = {n:>9,}: fabricated in {made:.0f} s, index built in {built:.0f} s "
                      f"({result['index_mb']:.0f} MB)", flush=True)
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    # Memory per video: the anonymous memory a process holds beyond the same process over a
    # dataset of BASELINE videos (the interpreter, torch, the loader), divided by the extra videos.
    # The index's pages a worker has mapped are file pages, shared by all processes (shown apart).
    floor = rows[0]

    def per_video(r: dict, key: str) -> float:
        return 2**20 * (r[key] - floor[key]) / (r["videos"] - floor["videos"])

    print(f"\n{'videos':>10} {'open (s)':>9} {'main (B/video)':>15} {'worker (B/video)':>17} "
          f"{'index pages in a worker (MB, shared)':>37} {'choose 64 clips (ms)':>21} {'read their frames (ms)':>23}")
    for r in rows[1:]:
        print(f"{r['videos']:>10,} {r['open_s']:>9.3f} {per_video(r, 'anonymous_mb'):>15.0f} "
              f"{per_video(r, 'worker_anonymous_mb'):>17.0f} {r['worker_files_mb'] - floor['worker_files_mb']:>37.0f} "
              f"{r['choose_ms']:>21.1f} {r['read_ms']:>23.1f}")
    small = rows[1]
    ratio_open = small["open_s"] / reference["open_s"]
    ratio_memory = per_video(small, "anonymous_mb") / per_video(reference, "anonymous_mb")
    print(f"\nreference, N = {reference['videos']:,} opened from the shard indices alone (no index file): "
          f"open {reference['open_s']:.2f} s, {per_video(reference, 'anonymous_mb'):.0f} B/video in the main "
          f"process, {per_video(reference, 'worker_anonymous_mb'):.0f} in a worker, "
          f"64 clips chosen in {reference['choose_ms']:.1f} ms")
    print(f"index file / shard indices at N = {small['videos']:,}: open time {ratio_open:.3f}x, "
          f"main memory per video {ratio_memory:.3f}x")


if __name__ == "__main__":
    main()
