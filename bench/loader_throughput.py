"""How many DataLoader workers keep a GPU fed: frames per second one worker delivers at 224 px.

A training step consumes N x K x F frames; each has to be read from its shard, JPEG-decoded,
cropped and resized before it reaches the device (flip and colour run there). This benchmark writes a few
16:9 videos with camera-like frames (5 shots each, sensor noise), ingests them at the default
short side of 256 (456 x 256 frames, what YouTube-style footage becomes), then measures the clip
loader (``vivi.data.make_loader``, K = 4, F = 8, each frame's inception crop resized to 224) in one process
with one thread, as a DataLoader worker runs it, and with 2 workers, against the bare cost of
decoding the same JPEGs with OpenCV in a loop (the reference measured in the same run).

    python bench/loader_throughput.py [--frames-per-s 3000] [--videos 12] [--batches 12]

It prints frames/s per worker and how many workers a training step of ``--frames-per-s``
frames/s needs (3000: a ResNet-50 step on one H100 in bf16).
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_footage(folder: Path, videos: int, width: int = 456, height: int = 256, fps: int = 10) -> list[Path]:
    """H.264 videos at 16:9 with camera-like frames: each of 5 shots a smooth gradient of its own
    colours, a moving disc and sensor noise (noise makes JPEGs as costly to decode as footage's;
    the synthetic world's flat colours decode faster)."""
    import av
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for v in range(videos):
        path = folder / f"footage-{v:03d}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for _ in range(5):
                top, bottom, disc = rng.uniform(0, 255, (3, 3))
                gradient = top + (bottom - top) * (y / height)[..., None]
                for t in range(3 * fps):
                    frame = gradient.copy()
                    cx, cy = width * (0.2 + 0.02 * t), height / 2
                    frame[(x - cx) ** 2 + (y - cy) ** 2 < (height / 5) ** 2] = disc
                    frame += rng.normal(0, 6, frame.shape)
                    image = np.clip(frame, 0, 255).astype(np.uint8)
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


def make_dataset(root: Path, videos: int) -> Path:
    from vivi.ingest import IngestConfig, ingest
    make_footage(root / "videos", videos)
    data = root / "data"
    ingest([root / "videos"], data, IngestConfig(), workers=2, progress=False)
    return data


def loader_rate(data: Path, batches: int, workers: int, batch_size: int = 8) -> float:
    """Frames per second the clip loader delivers (after a first batch that starts the workers)."""
    from vivi.data import ClipConfig, make_loader
    from vivi.train.augment import augment_config
    # as training reads frames: shorter side 256, each frame's inception crop resized to 224
    loader = make_loader(data, ClipConfig(shots=4, frames=8, size=256), batch_size=batch_size, seed=0,
                         workers=workers, crop=augment_config("inception", size=224))
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    frames = 0
    for _ in range(batches):
        frames += next(it)["frames"].shape[:3].numel()
    return frames / (time.perf_counter() - start)


def bare_decode_rate(data: Path, frames: int) -> float:
    """Frames per second of OpenCV decoding the dataset's JPEGs one after another (bytes in memory)."""
    from vivi.data import VideoDataset
    dataset = VideoDataset(data)
    jpegs = [dataset.read_jpeg(v, f) for v in dataset.videos for f in range(v.num_frames)]
    start = time.perf_counter()
    for k in range(frames):
        cv2.imdecode(np.frombuffer(jpegs[k % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames-per-s", type=float, default=3000.0,
                        help="frames/s a training step consumes (default 3000: ResNet-50, one H100, bf16)")
    parser.add_argument("--videos", type=int, default=12, help="videos of the test dataset (default 12)")
    parser.add_argument("--batches", type=int, default=12, help="batches of 8 clips timed (default 12)")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)                  # as in a DataLoader worker
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="vivi-loader-") as tmp:
        data = make_dataset(Path(tmp), args.videos)
        from vivi.data import VideoDataset
        video = VideoDataset(data).videos[0]
        bare = bare_decode_rate(data, 2000)
        one = loader_rate(data, args.batches, workers=0)
        two = loader_rate(data, args.batches, workers=2)
    height, width = video.frame_size
    print(f"stored frames {width}x{height} JPEG, loader output 224x224 (K = 4 shots x F = 8 frames a clip)")
    print(f"bare OpenCV decoding, one thread:      {bare:8.0f} frames/s")
    print(f"clip loader, one process, one thread:  {one:8.0f} frames/s  ({one / bare:.2f}x bare decoding)")
    print(f"clip loader, 2 workers:                {two:8.0f} frames/s  ({two / one:.2f}x one process)")
    print(f"a step consuming {args.frames_per_s:.0f} frames/s needs {math.ceil(args.frames_per_s / one)} workers "
          f"at {one:.0f} frames/s each")


if __name__ == "__main__":
    main()
