"""Streaming clips from whole shards (vivi.data.stream) against an S3-compatible server: the batches
of a bucket equal those of the folder, streams split the shards, resume is exact without reading
the skipped shards, failures name the shard in one line, boxes come with the clips."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import vivi.data.stream as stream_module
from vivi.data import ClipConfig, VideoClipDataset, VideoDataset, VideoStream, make_stream_loader
from vivi.data.boxes import write_detections_index
from vivi.data.images import fit_square
from vivi.storage import StorageError, write_bytes
from vivi.train.checkpoint import read_checkpoint
from vivi.train.loop import train

CONFIG = ClipConfig(shots=2, frames=3, size=48, detector="scored")
FAST = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2", "data.buffer=2"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _equal(a: list[dict], b: list[dict]) -> bool:
    return all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def local(dataset, tmp_path_factory) -> Path:
    """A copy of the shared dataset (3 shards of 2 videos, with index.bin) with the boxes of a
    detector "scored": 0 to 8 boxes a frame in no order, with scores that tie now and then, so that
    keeping a frame's highest-scoring ``max_boxes`` in score order is put to the test."""
    out = tmp_path_factory.mktemp("stream") / "ds"
    shutil.copytree(dataset, out)
    folder = out / "detections" / "scored"
    folder.mkdir(parents=True)
    (folder / "detector.json").write_text(json.dumps({"detector": "scored", "coords": "xyxy_normalized",
                                                      "class_names": [str(c) for c in range(10)]}))
    rng = np.random.default_rng(0)
    by_shard: dict[str, dict] = {}
    for video in VideoDataset(out).videos:
        frames = []
        for _ in range(video.num_frames):
            corner = rng.uniform(0, 0.6, (rng.integers(0, 9), 2))
            boxes = np.concatenate([corner, corner + rng.uniform(0.1, 0.4, corner.shape),
                                    rng.integers(0, 10, (len(corner), 1)), rng.integers(1, 5, (len(corner), 1)) / 4],
                                   axis=1)
            frames.append(boxes.round(4).tolist())
        by_shard.setdefault(Path(video.shard).stem, {})[video.key] = frames
    for shard, videos in by_shard.items():
        (folder / f"{shard}.json").write_text(json.dumps({"videos": videos}))
    write_detections_index(out, "scored")
    return out


def _upload(folder: Path, url: str) -> str:
    import fsspec
    fsspec.filesystem("s3").put(str(folder), url[len("s3://"):], recursive=True)
    return url


@pytest.fixture(scope="module")
def bucket(local, s3_server) -> str:
    return _upload(local, f"{s3_server()}/ds")


@pytest.fixture
def tar_reads(monkeypatch) -> list[str]:
    """The tars read, in order (names only), through the stream's one sequential reader."""
    reads: list[str] = []
    read = stream_module.read_sequentially

    def counted(url, *args, **kwargs):
        reads.append(Path(str(url)).name)
        return read(url, *args, **kwargs)
    monkeypatch.setattr(stream_module, "read_sequentially", counted)
    return reads


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bucket_streams_the_batches_of_the_folder(local, bucket, workers):
    """The stream from s3:// equals the stream from the local folder bit for bit, boxes included
    (catches members cut at wrong offsets from ranged reads, and a URL path that orders shards,
    videos or clips differently)."""
    args = dict(batch_size=2, seed=5, workers=workers, buffer=3)
    remote = _take(make_stream_loader(bucket, CONFIG, **args), 6)
    folder = _take(make_stream_loader(local, CONFIG, **args), 6)
    assert _equal(remote, folder)
    assert remote[0]["frames"].shape == (2, 2, 3, 3, 48, 48) and remote[0]["frames"].float().std() > 0
    # resuming at batch 3 gives batches 3.. of the run that never stopped, with workers taking turns
    resumed = _take(make_stream_loader(bucket, CONFIG, start_batch=3, **args), 3)
    assert _equal(resumed, remote[3:])


def test_streams_split_the_shards_and_an_epoch_holds_every_video_once(local):
    """Within an epoch no two streams read the same shard, and every eligible video enters one
    stream once (catches streams that overlap, skip a shard, or permute every epoch alike)."""
    config = ClipConfig(shots=2, frames=2, size=48)
    stream = VideoStream(local, config, workers=2, buffer=1)
    n = stream.num_videos
    orders = set()
    for epoch in range(6):
        parts = [stream.shards_of(s, epoch).tolist() for s in range(2)]
        assert sorted(parts[0] + parts[1]) == [0, 1, 2]
        orders.add(tuple(parts[0] + parts[1]))
    assert len(orders) > 1                                    # epochs are permuted, each by its own seed
    # what the streams yield: with a buffer of one video, the videos in the order they entered
    for epoch_videos in _entries_by_epoch(stream, epochs=3):
        assert sorted(epoch_videos) == list(range(n))
    # one pass (infinite=False) over two workers' streams: every video once, the buffers emptied
    seen = [int(v) for batch in make_stream_loader(local, config, batch_size=1, workers=2, buffer=4, infinite=False)
            for v in batch["video"]]
    assert sorted(seen) == list(range(n))


def _entries_by_epoch(stream: VideoStream, epochs: int) -> list[list[int]]:
    """The videos that entered the streams of ``stream`` in each of the first ``epochs`` epochs, read
    from what the streams yield: a one-video buffer passes each video on when the next one enters."""
    out = [[] for _ in range(epochs)]
    for s in range(stream.num_streams):
        sizes = [int(sum(stream.last[n] - stream.first[n] for n in stream.shards_of(s, e))) for e in range(epochs)]
        videos = [int(sample["video"]) for _, sample in zip(range(sum(sizes)), stream.samples(s))]
        for e, size in enumerate(sizes):
            out[e] += videos[sum(sizes[:e]):sum(sizes[:e]) + size]
    return out


def test_fewer_shards_than_streams_or_no_index_are_refused(local, s3_server):
    """Catches a stream set larger than the shards (some streams would read nothing, or share) and
    a bucket without index.bin (the stream would list and read every shard index first)."""
    with pytest.raises(ValueError, match=r"has 3 shards with videos of 2 shots, fewer than the 4 streams \(2 ranks x "
                                         r"2 DataLoader workers\).*fewer workers"):
        VideoStream(local, CONFIG, workers=2, rank=0, world_size=2)
    url = f"{s3_server()}/ds"
    write_bytes(f"{url}/plan.json", (local / "plan.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=f"{url} has no index.bin.*`vivi index {url}`"):
        VideoStream(url, CONFIG)


def test_resume_from_a_bucket_is_exact_and_reads_only_the_buffered_shards(local, bucket, tmp_path, tar_reads,
                                                                          monkeypatch):
    """k steps from the bucket + --resume to n steps gives the weights of n steps in one go (and of
    the folder streamed with data.stream=true); the resumed run replays the k steps from the index
    without reading their tars: before its first step it reads at most one shard per buffered
    video, the shard the stream stopped in and those of its first batch (catches a replay that
    reads every skipped shard, a stream restarted from the start, a buffer not restored)."""
    import vivi.train.loop as loop
    step = loop.train_step

    def marked(*args, **kwargs):
        tar_reads.append("step")
        return step(*args, **kwargs)
    monkeypatch.setattr(loop, "train_step", marked)
    k, n, buffer, per_batch = 4, 6, 2, 4
    train("tiny-vivi-ex4", local, tmp_path / "straight", overrides=FAST + [f"optim.steps={n}", "data.stream=true"],
          progress=False)
    tar_reads.clear()
    train("tiny-vivi-ex4", bucket, tmp_path / "split", overrides=FAST + [f"optim.steps={k}"], progress=False)
    first_run = list(tar_reads)
    tar_reads.clear()
    train("tiny-vivi-ex4", bucket, tmp_path / "split", resume=True, overrides=[f"optim.steps={n}"], progress=False)
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == n
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["optim"]:
        assert torch.equal(a["optim"][key], b["optim"][key]), key
    before_first_step = tar_reads.index("step")
    # one shard per buffered video, the shard the stream stopped in, and the shards of the first
    # batch's new videos (2 videos a shard): far fewer than the k steps read
    assert before_first_step <= buffer + 1 + per_batch // 2 + 1 < len(first_run) - first_run.count("step")


def test_a_cache_keeps_the_shards_and_gives_the_same_batches(local, bucket, tmp_path, monkeypatch):
    """With data.cache the second loader reads no tar from the store and gives the same batches
    (catches a cache that is never used, or holds incomplete copies)."""
    import vivi.storage as storage
    remote: list[str] = []
    filesystem = storage.filesystem

    def counting(url):
        fs, path = filesystem(url)
        if path.endswith(".tar"):
            remote.append(path)
        return fs, path
    monkeypatch.setattr(storage, "filesystem", counting)
    args = dict(batch_size=2, seed=2, workers=0, buffer=2)
    plain = _take(make_stream_loader(bucket, CONFIG, **args), 5)
    first = _take(make_stream_loader(bucket, CONFIG, cache=tmp_path / "cache", **args), 5)
    assert remote and _equal(plain, first)
    cached = sorted((tmp_path / "cache").rglob("*.tar"))
    assert [p.name for p in cached] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all(p.read_bytes() == (local / "shards" / p.name).read_bytes() for p in cached)
    remote.clear()
    again = _take(make_stream_loader(bucket, CONFIG, cache=tmp_path / "cache", **args), 5)
    assert not remote and _equal(plain, again)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_cut_short_is_named_in_one_line(local, s3_server, workers):
    """A tar shorter than the index says (an upload cut off): one line naming the shard, its size
    and the fix, also through DataLoader workers (catches silently missing clips, and a worker's
    traceback reaching the user)."""
    url = _upload(local, f"{s3_server()}/ds")
    tar = (local / "shards" / "shard-000001.tar").read_bytes()
    write_bytes(f"{url}/shards/shard-000001.tar", tar[:30000])
    with pytest.raises(ValueError) as error:
        _take(make_stream_loader(url, CONFIG, batch_size=2, workers=workers, buffer=2), 20)
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"{url}/shards/shard-000001.tar is 30000 bytes but the dataset's index says "
                              f"{len(tar)}") and f"`vivi index {url}`" in message


def test_a_connection_dropped_mid_shard_is_retried_then_named(bucket, monkeypatch):
    """A connection that drops after some of a shard's bytes: each chunk is retried (vivi.storage),
    then one line names the shard (catches a failure swallowed as a short shard, or a hang)."""
    import vivi.storage as storage
    filesystem = storage.filesystem
    calls: list[int] = []

    class Dropping:
        """A file system whose reads of shard 1 fail from its third chunk on, like a dropped connection."""

        def __init__(self, fs):
            self.fs = fs

        def cat_file(self, path, start=None, end=None):
            calls.append(start)
            if start is not None and start >= 2 * stream_module.CHUNK_BYTES:
                raise ConnectionResetError("Connection reset by peer")
            return self.fs.cat_file(path, start=start, end=end)

    def flaky(url):
        fs, path = filesystem(url)
        return (Dropping(fs), path) if path.endswith("shard-000001.tar") else (fs, path)
    monkeypatch.setattr(storage, "filesystem", flaky)
    monkeypatch.setattr(storage, "BACKOFF_S", 0.001)
    monkeypatch.setattr(stream_module, "CHUNK_BYTES", 8192)
    with pytest.raises(StorageError, match=r"^\S+/shards/shard-000001.tar: Connection reset by peer \(after 5 "
                                           r"tries\)$"):
        _take(make_stream_loader(bucket, CONFIG, batch_size=2, workers=0, buffer=2), 20)
    assert calls.count(2 * 8192) == storage.ATTEMPTS


def test_streamed_boxes_and_frames_equal_the_clip_datasets(local, bucket):
    """Each streamed clip's pixels and boxes equal what the map-style clip dataset reads for the same
    video and frames (catches boxes of another frame or video, an order other than highest score
    first, and boxes left in the stored frame instead of the crop)."""
    clips = VideoClipDataset(local, CONFIG)
    full = 0
    for batch in _take(make_stream_loader(bucket, CONFIG, batch_size=2, workers=0, buffer=2), 4):
        for i, index in enumerate(batch["video"].tolist()):
            video = clips.videos[index]
            frames = batch["frame_index"][i].tolist()
            _, crop = fit_square(np.zeros((*video.frame_size, 3), np.uint8), CONFIG.size)
            expected = clips.detections.boxes(int(clips.rows[index]), frames, crop, CONFIG.max_boxes)
            for key, value in expected.items():
                assert torch.equal(batch[key][i], value), key
            for k, shot in enumerate(frames):
                for f_pos, frame in enumerate(shot):
                    image, _ = fit_square(clips.dataset.read_frame(video, frame), CONFIG.size)
                    assert torch.equal(batch["frames"][i, k, f_pos], torch.from_numpy(image).permute(2, 0, 1))
            full += int(((batch["box_labels"][i] >= 0).sum(-1) == CONFIG.max_boxes).sum())
    assert full > 0                   # frames whose boxes were cut to the highest-scoring max_boxes


def test_frame_mode_streams_the_fixed_frame_of_each_video(local):
    """Ex-YT-F's data set holds one frame per video (VIVI §4): streamed, every draw of a video gives
    the frame the clip dataset fixes for it, and ``each_draw`` other frames in other epochs
    (catches a stream that draws the fixed frame anew, or ignores the frame choice)."""
    def frames_seen(choice: str) -> tuple[dict[int, set[int]], VideoClipDataset]:
        config = ClipConfig(shots=1, frames=2, size=48, mode="frame", frame_choice=choice)
        clips = VideoClipDataset(local, config)
        clips.seed = 3
        seen: dict[int, set[int]] = {}
        for _, sample in zip(range(5 * clips.num_videos), VideoStream(local, config, seed=3, buffer=2).samples(0)):
            seen.setdefault(int(sample["video"]), set()).update(sample["frame_index"].flatten().tolist())
        return seen, clips

    fixed, clips = frames_seen("fixed")
    assert fixed == {i: {clips.fixed_frame(clips.videos[i])} for i in range(clips.num_videos)}
    each, _ = frames_seen("each_draw")
    assert any(len(frames) > 1 for frames in each.values())


def test_streamed_crops_are_seeded_by_the_clip_and_resume_exactly(local):
    """With the loader's crop every streamed frame is S x S and keeps only the boxes centred in its
    crop (fewer than the whole frame's), and a stream that skips the samples before a resumed step
    gives the same pixels and boxes as one that never stopped (catches crops drawn from a generator
    that the replay does not restore)."""
    from itertools import islice

    from vivi.train.augment import AugmentConfig
    crop = AugmentConfig(size=16, area=(0.1, 0.5))
    stream = VideoStream(local, CONFIG, seed=3, buffer=2, rank=0, world_size=1, crop=crop)
    whole = list(islice(stream.samples(0), 5))
    assert whole[0]["frames"].shape == (2, 3, 3, 16, 16)
    resumed = list(islice(stream.samples(0, skip=3), 2))
    for a, b in zip(whole[3:], resumed):
        for key in ("frames", "boxes", "box_labels"):
            assert torch.equal(a[key], b[key]), key
    plain = list(islice(VideoStream(local, CONFIG, seed=3, buffer=2, rank=0, world_size=1).samples(0), 5))
    kept = sum(int((s["box_labels"] >= 0).sum()) for s in whole)
    assert kept < sum(int((s["box_labels"] >= 0).sum()) for s in plain)     # crops of 10-50 % lose boxes
