"""Ingest and detect with a Ray task per shard (`--ray`): the same bytes as one process, a worker
lost mid-shard redone, bad videos as failures (not task errors), clear errors for bad addresses."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_INGEST, write_bad_inputs

from vivi.detect import detect_dataset
from vivi.ingest import ingest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the module, at 2 CPUs (the machine's), shut down after."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ingest_on_ray_writes_the_bytes_of_one_process(world, dataset, tmp_path):
    """Every file (tars, shard indices, plan, manifest, failures.jsonl, index.bin) byte for byte
    as `ingest` in one process writes it (``dataset``: the same inputs and settings); would catch
    a task writing shards differently, or the driver not finishing the manifest or the index."""
    summary = ingest([world / "videos"], tmp_path / "ds", TINY_INGEST, progress=False, ray="local")
    assert summary.complete and summary.shards_written == 3
    assert _files(tmp_path / "ds") == _files(dataset)
    again = ingest([world / "videos"], tmp_path / "ds", TINY_INGEST, progress=False, ray="local")
    assert again.shards_written == 0 and again.shards_skipped == 3


def test_a_worker_killed_while_writing_its_shard_is_redone(world, dataset, tmp_path, monkeypatch):
    """The first task to run kills its own process after writing its shard's temporary files:
    Ray runs it again, and the dataset is still byte for byte the one-process one, with no
    temporary file left (would catch tasks that are not retried, or a retry that trips over
    the dead attempt's files)."""
    marker = tmp_path / "killed"
    monkeypatch.setenv("VIVI_KILL_TASK_ONCE", str(marker))
    ingest([world / "videos"], tmp_path / "ds", TINY_INGEST, progress=False, ray="local")
    assert marker.exists(), "no task was killed"
    assert _files(tmp_path / "ds") == _files(dataset)


def test_a_bad_video_is_its_failure_once_not_a_retried_task(world, tmp_path):
    """A corrupt file is a line of failures.jsonl, as in one process (the task returns it rather
    than raising, so Ray does not run the task again); the datasets are byte for byte the same."""
    good = sorted((world / "videos").glob("*.mp4"))[:2]
    bad = tmp_path / "bad"
    write_bad_inputs(bad, good[0])
    inputs = [*good, bad / "notes.mp4", bad / "truncated.mp4"]
    here = ingest(inputs, tmp_path / "here", TINY_INGEST, progress=False)
    there = ingest(inputs, tmp_path / "there", TINY_INGEST, progress=False, ray="local")
    assert there.failed == 2 and there.videos == 2
    failures = [json.loads(line) for line in (tmp_path / "there" / "failures.jsonl").read_text().splitlines()]
    assert sorted(Path(f["source"]).name for f in failures) == ["notes.mp4", "truncated.mp4"]
    assert _files(tmp_path / "there") == _files(tmp_path / "here") and here.failed == 2


@pytest.mark.parametrize("spec", ["groundtruth", "import"])
def test_detect_on_ray_writes_the_bytes_of_one_process(dataset, tmp_path, spec):
    """Detections written by a task per shard (the detector built there from its spec) equal
    those of one process, every file of detections/NAME byte for byte."""
    from vivi.data import VideoDataset
    if spec == "import":
        lines = [{"video": v.key, "frame": f, "boxes": [[0.1, 0.2, 0.5, 0.6]], "labels": ["cat"], "scores": [0.7]}
                 for v in VideoDataset(dataset).videos for f in range(v.num_frames)]
        (tmp_path / "dets.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        spec = f"import:{tmp_path / 'dets.jsonl'}"
    here, there = tmp_path / "here", tmp_path / "there"
    shutil.copytree(dataset, here)
    shutil.copytree(dataset, there)
    a = detect_dataset(here, spec, progress=False, threads=1)
    b = detect_dataset(there, spec, progress=False, threads=1, ray="local")
    assert (b.shards_written, b.frames, b.boxes) == (a.shards_written, a.frames, a.boxes) and b.boxes > 0
    assert _files(there / "detections") == _files(here / "detections")


def test_an_unreachable_cluster_is_one_line_in_seconds(world, tmp_path):
    """`--ray HOST:PORT` with nothing listening: one line naming the address, no traceback,
    well before Ray's own 30 s connection timeout."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "vivi.cli", "ingest", str(world / "videos"), "--out",
                             str(tmp_path / "ds"), "--ray", "127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.monotonic() - start < 30
    assert result.stderr.count("\n") == 1 and "127.0.0.1:9" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_without_ray_installed_the_error_says_how_to_install_it(monkeypatch):
    from vivi import cluster
    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'vivi\[ray\]'"):
        with cluster.connected("local"):
            pass
