"""Damaged data is named and repairable: shards whose frames or index were damaged on disk after
ingest wrote them, damaged detections files, plan files and evaluation units; and one writer per
part of a dataset."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_INGEST, damage_frame

from vivi.data import VideoDataset
from vivi.data.inspect import verify_dataset
from vivi.detect import build_detector, detect_dataset
from vivi.files import FolderLocked
from vivi.ingest import ingest


def _copy(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    return copy


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".vivi-lock")}


def test_repair_rewrites_the_shards_with_damaged_frames_or_index_to_the_original_bytes(world, dataset, tmp_path):
    """`vivi ingest ... --repair` finds a shard with an undecodable frame and a shard whose index
    no longer parses (its first bytes intact, so a quick look takes it for complete), writes both
    again from the source videos, and the dataset is byte-identical to the original (catches a
    repair that misses damage, or rewrites shards that were intact)."""
    copy = _copy(dataset, tmp_path)
    original = _files(dataset)
    damaged_tar = damage_frame(copy, 0, 1)
    index = copy / "shards" / "shard-000002.json"
    text = index.read_bytes()
    index.write_bytes(text[: len(text) // 2])
    assert damaged_tar == "shard-000000.tar"
    plain = ingest([world / "videos"], copy, TINY_INGEST, progress=False)
    assert plain.shards_written == 0          # a plain re-run cannot see damage inside complete shards
    summary = ingest([world / "videos"], copy, TINY_INGEST, repair=True, progress=False)
    assert summary.shards_written == 2 and summary.complete
    assert _files(copy) == original
    assert verify_dataset(copy, progress=False)["damaged_frames"] == []


def test_a_damaged_shard_index_counts_as_not_complete(dataset, tmp_path, capfd):
    """A shard index that does not parse is named once on stderr and its shard left out, instead
    of a bare "Expecting value" from the first reader that opened it."""
    copy = _copy(dataset, tmp_path)
    (copy / "shards" / "shard-000001.json").write_text('{"shard": "shards/sh')
    (copy / "index.bin").unlink()
    assert len(VideoDataset(copy)) == len(VideoDataset(dataset)) - 2
    err = capfd.readouterr().err
    assert err.count("shard-000001.json is damaged") == 1 and "--repair" in err


def test_a_damaged_plan_is_named(world, dataset, tmp_path):
    """plan.json that does not parse: one line naming it and the fix (not a bare JSON error)."""
    copy = _copy(dataset, tmp_path)
    (copy / "plan.json").write_text("{")
    with pytest.raises(ValueError, match=r"plan.json is damaged \(not JSON.*restore it from a copy"):
        ingest([world / "videos"], copy, TINY_INGEST, progress=False)


def test_detect_redoes_a_detections_file_that_does_not_parse(dataset, tmp_path, capfd):
    """A per-shard detections file damaged on disk is detected again (named on stderr), and the
    detections equal those of the first run (catches a re-run that keeps the damaged file)."""
    copy = _copy(dataset, tmp_path)
    detect_dataset(copy, build_detector("groundtruth"), progress=False)
    folder = copy / "detections" / "groundtruth"
    before = (folder / "shard-000001.json").read_bytes()
    (folder / "shard-000001.json").write_bytes(before[:10])
    summary = detect_dataset(copy, build_detector("groundtruth"), progress=False)
    assert summary.shards_written == 1 and (folder / "shard-000001.json").read_bytes() == before
    assert "shard-000001.json is damaged" in capfd.readouterr().err


def test_a_damaged_evaluation_unit_is_run_again(tmp_path, capfd):
    """A finished unit of `vivi eval` damaged on disk runs again instead of stopping the
    evaluation with a JSON error, and the results equal an uninterrupted run's."""
    from vivi.eval import EvalConfig, evaluate
    suite = tmp_path / "digits.yaml"
    suite.write_text("tasks:\n  - name: digits\n    group: natural\n    source: digits\n")
    config = EvalConfig(protocol="linear", resolution=8, batch_size=32)
    first = evaluate("random:resnet_tiny_v2", suite, tmp_path / "out", config, progress=False)
    units = sorted((tmp_path / "out" / "units" / "digits").glob("*.json"))
    units[0].write_text("{")
    again = evaluate("random:resnet_tiny_v2", suite, tmp_path / "out", config, progress=False)
    assert again["tasks"] == first["tasks"]
    assert f"{units[0]} is damaged" in capfd.readouterr().err


def test_the_same_part_of_a_dataset_is_written_by_one_ingest_at_a_time(world, tmp_path):
    """Two runs of the same part into one dataset: the second is refused, naming the first;
    another part is not (parts write disjoint shards)."""
    out = tmp_path / "ds"
    hold = ("import sys, time; from vivi.files import writer_lock\n"
            f"with writer_lock({str(out)!r}, 'ingest', key='part-0-of-2'):\n"
            "    print('held', flush=True); time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderLocked, match=r"\(part-0-of-2\) is being written by `vivi ingest` \(pid "
                                               f"{holder.pid} "):
            ingest([world / "videos"], out, TINY_INGEST, part=(0, 2), progress=False)
        other = ingest([world / "videos"], out, TINY_INGEST, part=(1, 2), progress=False)
        assert other.shards_written == 1 and not other.complete
    finally:
        holder.kill()
        holder.wait()
    summary = ingest([world / "videos"], out, TINY_INGEST, part=(0, 2), progress=False)
    assert summary.complete and json.loads((out / "manifest.json").read_text())["complete"]


def test_training_stops_once_more_frames_than_allowed_did_not_decode(dataset, tmp_path):
    """Undecodable frames are counted in the metrics and the run stops, with a checkpoint and the
    repair commands, once a process met more than data.max_damaged_frames (catches a run that
    trains on for ever on a rotting dataset, or stops without saying what to do)."""
    from vivi.train.checkpoint import read_checkpoint
    from vivi.train.loop import train
    copy = _copy(dataset, tmp_path)
    table = VideoDataset(copy)
    for video in range(len(table)):
        for frame in range(0, table[video].num_frames, 2):
            damage_frame(copy, video, frame)
    over = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2", "optim.steps=50",
            "data.max_damaged_frames=40"]
    with pytest.raises(ValueError, match=r"more than data.max_damaged_frames=40 frames .*--repair.*--resume"):
        train("tiny-ex-yt-s", copy, tmp_path / "run", overrides=over, progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < metrics[-1]["damaged_frames"] <= 40 and len(metrics) < 50
    assert read_checkpoint(tmp_path / "run")["step"] == len(metrics)
