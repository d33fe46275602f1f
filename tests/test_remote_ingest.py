"""Datasets and input videos in object storage (conftest's S3-compatible server on 127.0.0.1):
ingest, index, inspect, detect and the reader give exactly what they give with local folders."""
from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest
from conftest import TINY_INGEST

from vivi.cli import main
from vivi.data import VideoDataset, load_detections
from vivi.data.inspect import dataset_stats, render_contact_sheet
from vivi.detect import ImageDetector, detect_dataset
from vivi.ingest import expand_inputs, ingest
from vivi.storage import StorageError, download, read_bytes

DATASET_FILES = ("plan.json", "manifest.json", "failures.jsonl", "index.bin")
CLI_TINY = ["--short-side", "64", "--videos-per-shard", "2"]      # TINY_INGEST on the command line


def _objects(url: str) -> dict[str, bytes]:
    """Every object under ``url``, by its path relative to it."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    root = url[len("s3://"):]
    return {path[len(root) + 1:]: fs.cat_file(path) for path in fs.find(root)}


def _files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def _dataset_part(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files ingest writes (not the detections)."""
    return {name: data for name, data in files.items() if name in DATASET_FILES or name.startswith("shards/")}


def _content(root) -> list[tuple[dict, list[bytes]]]:
    """Each video's record without its source and tar offsets (they depend on the source's
    length), and its frames' JPEG bytes, as the reader gives them."""
    dataset = VideoDataset(root)
    out = []
    for video in dataset.videos:
        record = dataset.read_record(video)
        record.pop("source")
        out.append((record, [dataset.read_jpeg(video, f) for f in range(video.num_frames)]))
    return out


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def _web_server(folder: Path) -> Iterator[str]:
    """A web server of ``folder`` on 127.0.0.1 while the block runs; yields its address."""
    with ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(folder))) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


class Brightness(ImageDetector):
    """A detector that looks at the pixels: one whole-frame box scored by the frame's mean brightness."""
    name, class_names, batch_size = "brightness", ["frame"], 4

    def detect_images(self, images):
        return [np.array([[0, 0, 1, 1, 0, image.mean() / 255]], np.float32) for image in images]


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server()


@pytest.fixture(scope="module")
def remote(world, bucket) -> str:
    """The world ingested into the bucket as the local ``dataset`` fixture is into a folder, in two
    parts (the second with worker processes), as two machines would."""
    url = f"{bucket}/world/ds"
    first = ingest([world / "videos"], url, TINY_INGEST, part=(0, 2), progress=False)
    assert not first.complete and not _objects(url).keys() & {"index.bin"}
    assert ingest([world / "videos"], url, TINY_INGEST, part=(1, 2), workers=2, progress=False).complete
    return url


def test_a_bucket_holds_the_bytes_a_local_folder_holds(remote, dataset):
    """Catches a shard, shard index, plan, manifest or index.bin in object storage that differs from
    a local ingest of the same inputs (a URL or a temporary path leaking into the bytes, offsets of
    another tar), an object missing, or parts that do not add up to the whole dataset."""
    stored, local = _dataset_part(_objects(remote)), _dataset_part(_files(dataset))
    assert sorted(stored) == sorted(local)
    assert len([name for name in stored if name.endswith(".tar")]) == 3
    for name in local:
        assert stored[name] == local[name], name


def test_resume_redoes_only_the_incomplete_shards(world, bucket, dataset, monkeypatch):
    """A shard whose index object is gone, or whose tar is shorter than its index records, is made
    again; the complete ones are not uploaded again (catches a resume that trusts a lone tar or a
    cut one, or that redoes everything), and the result equals the local dataset."""
    url = f"{bucket}/resume/ds"
    ingest([world / "videos"], url, TINY_INGEST, progress=False)
    fs = fsspec.filesystem("s3")
    root = url[len("s3://"):]
    fs.rm_file(f"{root}/shards/shard-000001.json")
    fs.pipe_file(f"{root}/shards/shard-000002.tar", fs.cat_file(f"{root}/shards/shard-000002.tar")[:10240])
    import vivi.ingest.shards as shards
    uploaded, upload = [], shards.upload
    monkeypatch.setattr(shards, "upload", lambda local, target: (uploaded.append(target), upload(local, target)))
    summary = ingest([world / "videos"], url, TINY_INGEST, progress=False)
    assert (summary.shards_written, summary.shards_skipped) == (2, 1)
    assert sorted(name[len(url) + 1:] for name in uploaded) == [
        "shards/shard-000001.json", "shards/shard-000001.tar", "shards/shard-000002.json", "shards/shard-000002.tar"]
    assert _dataset_part(_objects(url)) == _dataset_part(_files(dataset))


def test_a_failed_upload_leaves_no_complete_shard_and_no_temporary_file(world, bucket, tmp_path, monkeypatch):
    """The upload of a shard's index fails: the shard is not complete (its tar alone does not count),
    the local staging folder is removed, and the same command then finishes it (catches an index
    uploaded before its tar, or staged files left in the temporary folder)."""
    import tempfile

    import vivi.ingest.shards as shards
    url = f"{bucket}/failed/ds"
    video = world / "videos" / "video_00000.mp4"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    upload = shards.upload

    def refuse_indices(local, target):
        if target.endswith(".json"):
            raise StorageError(f"{target}: the store said no")
        upload(local, target)
    monkeypatch.setattr(shards, "upload", refuse_indices)
    with pytest.raises(StorageError, match="the store said no"):
        ingest([video], url, TINY_INGEST, progress=False)
    assert sorted(_objects(url)) == ["plan.json", "shards/shard-000000.tar"]
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shards, "upload", upload)
    summary = ingest([video], url, TINY_INGEST, progress=False)
    assert summary.complete and summary.shards_written == 1 and summary.videos == 1


def test_inspect_index_detect_and_the_reader_match_the_local_dataset(remote, dataset, tmp_path, capsys,
                                                                     monkeypatch):
    """`vivi inspect`, `vivi index`, `vivi detect --detector groundtruth`, a detector that reads
    the frames, the contact sheet and VideoDataset on the bucket give what they give on a local
    copy (catches frames read at wrong offsets, detections or their columns that differ, a detector
    that reads frame by frame over the network instead of fetching each shard's tar once, a
    dataset without index.bin that does not open, an index rebuilt differently)."""
    local = tmp_path / "local"
    shutil.copytree(dataset, local)
    for data in (remote, str(local)):
        assert main(["detect", data, "--detector", "groundtruth"]) == 0
    capsys.readouterr()
    stored, files = _objects(remote), _files(local)
    detections = sorted(name for name in files if name.startswith("detections/"))
    assert len(detections) == 5          # detector.json, three shards' boxes, index.bin
    for name in detections:
        assert stored[name] == files[name], name
    mine, theirs = dataset_stats(remote), dataset_stats(local)
    assert mine.pop("root") == remote and theirs.pop("root") == str(local)
    assert mine == theirs and mine["detections"]["groundtruth"]["boxes"] > 0
    boxes = load_detections(remote, "groundtruth")
    assert np.array_equal(np.asarray(boxes.all_boxes), np.asarray(load_detections(local, "groundtruth").all_boxes))
    assert _content(remote) == _content(local)

    import vivi.data.reader as reader
    fetched, ranged = [], []
    monkeypatch.setattr(reader, "download", lambda url, local: (fetched.append(url), download(url, local)))
    monkeypatch.setattr(reader, "read_bytes", lambda *args: (ranged.append(args), read_bytes(*args))[1])
    for data in (remote, local):
        detect_dataset(data, Brightness(), progress=False)
    assert sorted(fetched) == [f"{remote}/shards/shard-00000{j}.tar" for j in range(3)] and ranged == []
    stored = _objects(f"{remote}/detections/brightness")
    assert sorted(stored) == sorted(path.name for path in (local / "detections/brightness").iterdir())
    for name, data in stored.items():
        assert data == (local / "detections/brightness" / name).read_bytes(), name
    monkeypatch.undo()

    sheets = [render_contact_sheet(root, tmp_path / f"sheet-{i}.png", detector="groundtruth")
              for i, root in enumerate((remote, local))]
    assert sheets[0].read_bytes() == sheets[1].read_bytes()

    fsspec.filesystem("s3").rm_file(f"{remote[len('s3://'):]}/index.bin")
    assert _content(remote) == _content(local)           # opened from the shard indices
    assert main(["index", remote]) == 0
    assert "index of 6 videos" in capsys.readouterr().out
    assert _objects(remote)["index.bin"] == files["index.bin"]
    assert main(["inspect", remote]) == 0
    assert f"dataset {remote} (complete, shards 3/3)" in capsys.readouterr().out


def test_videos_in_the_bucket_are_ingested_like_local_files(world, bucket, tmp_path):
    """Two world videos uploaded to the bucket and named by URL (on the command line, in a list
    file, over plain HTTP), or by their prefix, give the frames and records of the same local
    files; the plan keeps the URLs; a URL that cannot be downloaded is that video's failure, and
    --retry-failed takes it once it is there (catches URLs turned into paths, a prefix or a list in
    the bucket not read, a download failure that stops the run, a retried shard that keeps stale
    detections)."""
    fs = fsspec.filesystem("s3")
    root = bucket[len("s3://"):]
    names = ["video_00000.mp4", "video_00001.mp4"]
    for name in names:
        fs.put_file(str(world / "videos" / name), f"{root}/videos/{name}")
    fs.pipe_file(f"{root}/lists/two.txt", b"# relative to the list\n../videos/video_00001.mp4\n"
                 b"../videos/video_00000.mp4\n")
    urls = [f"{bucket}/videos/{name}" for name in names]
    assert expand_inputs([f"{bucket}/lists/two.txt"]) == urls
    ingest([world / "videos" / name for name in names], tmp_path / "local", TINY_INGEST, progress=False)
    expected = _content(tmp_path / "local")

    assert main(["ingest", f"{bucket}/videos/", "--out", str(tmp_path / "by-prefix"), *CLI_TINY]) == 0
    assert _content(tmp_path / "by-prefix") == expected
    assert json.loads((tmp_path / "by-prefix" / "plan.json").read_text())["inputs"] == urls
    with _web_server(world / "videos") as address:
        ingest([f"{address}/video_00000.mp4"], tmp_path / "by-http", TINY_INGEST, progress=False)
    assert _content(tmp_path / "by-http") == expected[:1]

    missing = f"{bucket}/videos/zz-later.mp4"
    listed = tmp_path / "listed.txt"
    listed.write_text(f"{urls[1]}\n{missing}\n")
    by_url = f"{bucket}/by-url"
    summary = ingest([urls[0], listed], by_url, TINY_INGEST, progress=False)
    assert (summary.videos, summary.failed) == (2, 1)
    assert _content(by_url) == expected
    assert json.loads(_objects(by_url)["failures.jsonl"]) == {"key": "v0000002", "source": missing,
                                                               "reason": "file not found"}
    fs.pipe_file(f"{root}/by-url/detections/x/shard-000001.json", b"{}")
    fs.pipe_file(f"{root}/by-url/detections/x/shard-000000.json", b"{}")
    fs.put_file(str(world / "videos" / "video_00002.mp4"), f"{root}/videos/zz-later.mp4")
    summary = ingest([urls[0], listed], by_url, TINY_INGEST, retry_failed=True, progress=False)
    assert (summary.shards_written, summary.videos, summary.failed) == (1, 3, 0)
    assert sorted(name for name in _objects(by_url) if name.startswith("detections/")) == [
        "detections/x/shard-000000.json"]


def test_a_missing_bucket_or_dataset_is_one_line(world, bucket, tmp_path, capsys, monkeypatch):
    """A bucket that does not exist, as the output, an input or a dataset to read, a prefix with no
    dataset, and a server that cannot be reached: one line naming the URL and the fix, exit status
    2 (catches tracebacks from the storage back end, and a missing bucket taken for an empty
    dataset)."""
    video = str(world / "videos" / "video_00000.mp4")
    cases = [(["ingest", video, "--out", "s3://no-such-bucket-vivi/ds"], "the bucket does not exist: create it"),
             (["ingest", "s3://no-such-bucket-vivi/videos/", "--out", str(tmp_path / "x")],
              "the bucket does not exist: create it"),
             (["inspect", "s3://no-such-bucket-vivi/ds"], "the bucket does not exist: create it"),
             (["detect", f"{bucket}/nothing-here", "--detector", "groundtruth"],
              f"{bucket}/nothing-here is not a vivi dataset (no plan.json)")]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")        # nothing listens there
    monkeypatch.setattr("vivi.storage.BACKOFF_S", 0.01)
    fsspec.filesystem("s3").clear_instance_cache()
    try:
        assert main(["ingest", video, "--out", f"{bucket}/ds"]) == 2
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
    err = capsys.readouterr().err
    assert "cannot reach the object store at http://127.0.0.1:9" in err and err.count("\n") == 1, err
