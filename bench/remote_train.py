"""Streaming from object storage against streaming from a local folder: frames per second delivered.

Training from a URL reads each shard whole and in order (``vivi.data.stream``); this benchmark
measures what the object store costs against the same stream read from a local folder. It writes
16:9 videos with camera-like frames (``loader_throughput.make_footage``), ingests them at the
default short side (456 x 256 frames) into shards of ``--videos-per-shard`` videos, uploads the dataset to an
S3-compatible server on 127.0.0.1 (moto's, started here), and times the streaming loader
(K = 4 shots x F = 8 frames, resized and cropped to 224, ``--workers`` DataLoader workers) feeding a
consumer that waits ``--step-ms`` per batch, as a training step on a GPU leaves the CPU free,
alternately from the bucket and from the folder; the median of the rounds is printed, and the
ratio bucket / folder.

    python bench/remote_train.py [--videos 32] [--videos-per-shard 8] [--workers 2] [--batches 24]
                                 [--rounds 3] [--step-ms 0]

With ``--step-ms 0`` the loader alone sets the pace; a step slower than the loader hides the
store altogether.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def make_dataset(root: Path, videos: int, per_shard: int) -> Path:
    """Camera-like footage ingested at the default settings, ``per_shard`` videos a shard."""
    from loader_throughput import make_footage

    from vivi.ingest import IngestConfig, ingest
    make_footage(root / "videos", videos)
    ingest([root / "videos"], root / "data", IngestConfig(videos_per_shard=per_shard), workers=2, progress=False)
    return root / "data"


@contextmanager
def object_store():
    """moto's S3 server on a free port of 127.0.0.1, found by vivi through AWS_ENDPOINT_URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def stream_rate(data: str | Path, workers: int, batches: int, step_s: float) -> float:
    """Frames per second the streaming loader delivers to a consumer that waits ``step_s`` a batch
    (after the first batches, which start the workers and fill the shuffle buffers)."""
    from vivi.data import ClipConfig, make_stream_loader
    loader = make_stream_loader(data, ClipConfig(shots=4, frames=8, size=224), batch_size=8, seed=0,
                                workers=workers, buffer=16)
    it = iter(loader)
    for _ in range(max(1, workers)):
        next(it)
    start = time.perf_counter()
    frames = 0
    for _ in range(batches):
        frames += next(it)["frames"].shape[:3].numel()
        time.sleep(step_s)
    rate = frames / (time.perf_counter() - start)
    del it, loader
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=32, help="videos of the test dataset (default 32)")
    parser.add_argument("--videos-per-shard", type=int, default=8,
                        help="videos a shard (default 8: 2.8 MB shards; every request costs the same whatever its "
                             "size, so smaller shards show the cost of a request, larger ones hide it)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, one stream each (default 2)")
    parser.add_argument("--batches", type=int, default=24, help="batches of 8 clips timed per round (default 24)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bucket then folder (default 3)")
    parser.add_argument("--step-ms", type=float, default=0.0, help="the consumer's wait per batch (default 0)")
    args = parser.parse_args()
    import cv2
    import fsspec
    import torch
    torch.set_num_threads(1)                  # as in a DataLoader worker
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="vivi-remote-") as tmp, object_store():
        data = make_dataset(Path(tmp), args.videos, args.videos_per_shard)
        fs = fsspec.filesystem("s3")
        fs.mkdir("vivi-bench")
        fs.put(str(data), "vivi-bench/data", recursive=True)
        shards = [p.stat().st_size for p in (data / "shards").glob("*.tar")]
        remote, local = [], []
        for _ in range(args.rounds):
            remote.append(stream_rate("s3://vivi-bench/data", args.workers, args.batches, args.step_ms / 1000))
            local.append(stream_rate(data, args.workers, args.batches, args.step_ms / 1000))
    bucket, folder = statistics.median(remote), statistics.median(local)
    size = sum(shards) / len(shards)
    print(f"{args.videos} videos in {len(shards)} shards of {size / 1e6:.1f} MB; K = 4 x F = 8 frames a clip at 224, "
          f"{args.workers} workers, consumer {args.step_ms:g} ms a batch of 8 clips")
    for name, rates in (("stream from s3:// (moto on 127.0.0.1)", remote), ("stream from the local folder", local)):
        print(f"{name:38s} {statistics.median(rates):6.0f} frames/s  (rounds: {', '.join(f'{r:.0f}' for r in rates)})")
    print(f"ratio bucket / folder: {bucket / folder:.2f}")


if __name__ == "__main__":
    main()
