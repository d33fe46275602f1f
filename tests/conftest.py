"""Shared fixtures: a tiny synthetic world (real H.264 videos) and its ingested dataset."""
from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from vivi.ingest import IngestConfig, SamplingConfig, ingest

WORLD = dict(videos=6, seconds=8.0, size=64, seed=7)
TINY_INGEST = IngestConfig(sampling=SamplingConfig(short_side=64), videos_per_shard=2)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: the 2-core CI machine is shared, and OpenMP's spinning
    threads under oversubscription make training steps many times slower; restored afterwards."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def start_s3_server(**environment: str):
    """Start moto's S3-compatible server on a free port of 127.0.0.1 (``environment``: settings of
    the server, e.g. ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` to check credentials); returns
    (process, endpoint URL)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **environment})
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto's) on 127.0.0.1, started for the session and stopped after it;
    vivi finds it as any user's through AWS_ENDPOINT_URL and the AWS credential variables. Yields
    a function that makes a fresh bucket and returns its s3:// URL."""
    import itertools

    server, endpoint = start_s3_server()
    settings = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    counter = itertools.count()

    def bucket() -> str:
        import fsspec
        name = f"vivi-test-{next(counter)}"
        fsspec.filesystem("s3").mkdir(name)
        return f"s3://{name}"

    try:
        yield bucket
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    from vivi.synth import make_world
    out = tmp_path_factory.mktemp("world")
    make_world(out, **WORLD, workers=2, tasks=False, progress=False)
    return out


@pytest.fixture(scope="session")
def dataset(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "ds"
    ingest([world / "videos"], out, TINY_INGEST, workers=2, progress=False)
    return out


def ground_truth(world: Path) -> dict[str, dict]:
    """Ground truth of every video of a world, keyed by the video's absolute path."""
    return {str((p.with_suffix(".mp4")).resolve()): json.loads(p.read_text())
            for p in sorted((world / "videos").glob("*.json"))}


def write_video(path: Path, frames: np.ndarray, fps: int = 10, *, display: tuple[int, bool, bool] | None = None,
                sample_aspect: Fraction | None = None, key_every: int | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 with PyAV.

    ``display``: (degrees, hflip, vflip) of PyAV's ``set_display_rotation``, a display matrix
    saying "turn the frames this many degrees counter-clockwise, then mirror them" (as phones
    store portrait video). ``sample_aspect``: the pixels' shape (width / height), as DV and DVDs.
    ``key_every``: a key frame every this many frames (x264's default is 250).
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", **({"g": str(key_every)} if key_every else {})}
        if display is not None:
            degrees, hflip, vflip = display
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_bad_inputs(folder: Path, good_video: Path) -> dict[str, str]:
    """One file for each kind of bad input; returns {file name: words its failure reason must contain}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.mp4").write_text("this is not a video\n")
    (folder / "empty.mp4").write_bytes(b"")
    data = good_video.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])    # moov atom is at the end: lost
    mkv = write_video(folder / "full.mkv", np.random.default_rng(0).integers(0, 255, (60, 32, 32, 3), np.uint8))
    data = mkv.read_bytes()
    (folder / "truncated.mkv").write_bytes(data[: len(data) // 2])    # header intact, frames cut
    mkv.unlink()
    with av.open(str(folder / "zero.mkv"), "w") as container:          # a video stream with no frame
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    with av.open(str(folder / "audio.mp4"), "w") as container:         # audio only
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(folder / "music.mp4"), "w") as container:         # audio and its cover picture
        audio = container.add_stream("aac", rate=16000)
        cover = container.add_stream("mjpeg", rate=1)
        cover.width = cover.height = 32
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        container.mux(cover.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")))
        container.mux(cover.encode())
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return {"notes.mp4": "not a readable video", "empty.mp4": "empty file", "truncated.mp4": "truncated",
            "truncated.mkv": "truncated", "zero.mkv": "zero-length", "audio.mp4": "no video stream",
            "music.mp4": "only a cover picture"}


def damage_frame(root: Path, video: int, frame: int) -> str:
    """Overwrite one stored JPEG of a dataset in its shard with zeros (bytes of the same length that
    do not decode), as a flipped sector would; returns the shard's tar name."""
    from vivi.data import VideoDataset
    record = VideoDataset(root)[video]
    offset, size = record.frame_members[frame]
    with open(root / record.shard, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * size)
    return Path(record.shard).name
