"""The dataset's columnar index: the loader gives the same batches from it as from the shard
indices, a stale or damaged index is refused with the command that rebuilds it."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vivi.cli import main
from vivi.data import ClipConfig, VideoClipDataset, VideoDataset, load_detections, make_loader
from vivi.detect import build_detector, detect_dataset
from vivi.ingest.index import INDEX_FILE, open_index, write_index

REFERENCE = Path(__file__).parent / "data" / "loader_reference.json"

# The clip settings of the recorded reference (tests/data/loader_reference.json): the samples
# drawn by the loader that read the shard indices into Python objects, batch size 3, seeds 0 and 3.
CASES = {
    "shots2x3": ClipConfig(shots=2, frames=3),
    "shots1x4": ClipConfig(shots=1, frames=4),
    "frame_fixed": ClipConfig(shots=1, frames=2, mode="frame"),
    "frame_each": ClipConfig(shots=1, frames=2, mode="frame", frame_choice="each_draw"),
    "boxes": ClipConfig(shots=2, frames=2, size=32, detector="groundtruth"),
}


@pytest.fixture(scope="module")
def tagged(dataset, tmp_path_factory) -> Path:
    """A copy of the shared dataset with the world's boxes (the shared one stays untouched)."""
    copy = tmp_path_factory.mktemp("indexed") / "ds"
    shutil.copytree(dataset, copy)
    detect_dataset(copy, build_detector("groundtruth"), progress=False)
    return copy


def _draws(root: Path, config: ClipConfig, seed: int, batches: int = 5, workers: int = 0) -> list[dict]:
    loader = make_loader(root, config, batch_size=3, seed=seed, workers=workers)
    it = iter(loader)
    return [next(it) for _ in range(batches)]


def test_ingest_writes_the_index_and_the_loader_maps_it(tagged):
    """A complete ingest leaves DATA/index.bin, which the loader memory-maps (catches an ingest that
    forgets the index, or a reader that rebuilds it in memory although the file is there)."""
    assert (tagged / INDEX_FILE).is_file()
    dataset = VideoDataset(tagged)
    assert dataset.index.path == tagged / INDEX_FILE
    assert isinstance(dataset.index.frame_member, np.memmap)
    manifest = json.loads((tagged / "manifest.json").read_text())
    assert len(dataset) == manifest["videos"] and len(dataset.index.frame_time_s) == manifest["frames"]


def test_batches_are_those_recorded_from_the_shard_index_loader(tagged):
    """Every case of the recorded reference draws the same videos, shots, frames and boxes (catches
    a change of the video order, of which videos take part, of the windows of K shots or of the
    random stream; the reference was recorded from the loader that read the JSON shard indices)."""
    reference = json.loads(REFERENCE.read_text())
    for name, config in CASES.items():
        eligible = VideoClipDataset(tagged, config).videos
        for seed in (0, 3):
            rows = []
            for batch in _draws(tagged, config, seed):
                row = {"keys": [eligible[i].key for i in batch["video"].tolist()], "shots": batch["shots"].tolist(),
                       "frames": batch["frame_index"].tolist()}
                if "boxes" in batch:
                    row["labels"] = batch["box_labels"].tolist()
                    row["boxes_sum"] = round(float(batch["boxes"].double().sum()), 6)
                rows.append(row)
            assert rows == reference[f"{name}/seed{seed}"], (name, seed)


def test_the_index_file_and_the_shard_indices_give_identical_batches(tagged, tmp_path):
    """Without index.bin the index is built in memory from the shard indices: both give batches
    equal in every tensor, with and without DataLoader workers (catches a column written or read
    with another dtype, order or offset)."""
    plain = tmp_path / "plain"
    shutil.copytree(tagged, plain)
    (plain / INDEX_FILE).unlink()
    (plain / "detections" / "groundtruth" / INDEX_FILE).unlink()
    assert VideoDataset(plain).index.path is None
    assert isinstance(load_detections(tagged, "groundtruth").all_boxes, np.memmap)
    assert not isinstance(load_detections(plain, "groundtruth").all_boxes, np.memmap)
    for config in (CASES["shots2x3"], CASES["boxes"], CASES["frame_fixed"]):
        for workers in (0, 2):
            mapped, built = _draws(tagged, config, 1, 3, workers), _draws(plain, config, 1, 3, workers)
            for a, b in zip(mapped, built):
                assert a.keys() == b.keys()
                assert all(torch.equal(a[k], b[k]) for k in a), config
    assert list(VideoDataset(plain).videos) == list(VideoDataset(tagged).videos)


def test_an_index_older_than_its_shards_is_refused_and_rebuilt(tagged, tmp_path, capsys):
    """A shard rewritten, added or removed after the index was built: opening names it and the
    fix; `vivi index` rebuilds the index (catches a loader that would read stale offsets)."""
    copy = tmp_path / "ds"
    shutil.copytree(tagged, copy)
    shard = copy / "shards" / "shard-000001.json"
    content = json.loads(shard.read_text())
    content["videos"][0]["frame_times_s"][0] += 0.5                         # as a shard made again
    shard.write_text(json.dumps(content, indent=1))
    with pytest.raises(ValueError, match=r"older than the shards .*1 made again \(first: shards/shard-000001.tar\)"
                                         r".*vivi index"):
        VideoDataset(copy)
    assert main(["index", str(copy)]) == 0
    assert "index of 6 videos" in capsys.readouterr().out
    assert len(VideoDataset(copy)) == 6
    for suffix in (".json", ".tar"):                                    # a shard gone since
        (copy / "shards" / f"shard-000002{suffix}").unlink()
    with pytest.raises(ValueError, match=r"1 removed or incomplete \(first: shards/shard-000002.tar\)"):
        open_index(copy)
    write_index(copy)
    assert len(VideoDataset(copy)) == 4
    tar = copy / "shards" / "shard-000000.tar"                           # a tar cut short
    tar.write_bytes(tar.read_bytes()[:1024])
    with pytest.raises(ValueError, match=r"1 removed or incomplete \(first: shards/shard-000000.tar\)"):
        VideoDataset(copy)


def test_detections_columns_follow_their_files(tagged, tmp_path):
    """`vivi detect` writes the boxes' columns; a per-shard file changed since is read instead of
    the columns (catches boxes served from a stale detections index)."""
    copy = tmp_path / "ds"
    shutil.copytree(tagged, copy)
    folder = copy / "detections" / "groundtruth"
    assert (folder / INDEX_FILE).is_file()
    key = VideoDataset(copy).videos[0].key
    sidecar = folder / "shard-000000.json"
    content = json.loads(sidecar.read_text())
    content["videos"][key][0] = [[0.1, 0.1, 0.2, 0.2, 7, 0.99]]
    sidecar.write_text(json.dumps(content))
    boxes = load_detections(copy, "groundtruth").frame_boxes(key, 0)
    np.testing.assert_allclose(boxes, [[0.1, 0.1, 0.2, 0.2, 7, 0.99]], rtol=1e-6)
    assert main(["index", str(copy)]) == 0                            # rebuilt: the columns say the same
    rebuilt = load_detections(copy, "groundtruth")
    assert isinstance(rebuilt.all_boxes, np.memmap)
    np.testing.assert_allclose(rebuilt.frame_boxes(key, 0), boxes)


def test_a_damaged_index_is_named_with_the_fix(tagged, tmp_path, capsys):
    """A truncated index or a file that is no index: one line naming it and `vivi index`
    (catches a reader that maps past the end of the file or reads garbage as columns)."""
    copy = tmp_path / "ds"
    shutil.copytree(tagged, copy)
    data = (copy / INDEX_FILE).read_bytes()
    (copy / INDEX_FILE).write_bytes(data[: len(data) - 200])
    assert main(["inspect", str(copy)]) == 2
    assert f"{copy / INDEX_FILE} is truncated: rebuild it with `vivi index {copy}`" in capsys.readouterr().err
    (copy / INDEX_FILE).write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="is not a vivi index"):
        VideoDataset(copy)
    assert main(["index", str(tmp_path / "nothing")]) == 2
    assert "is not a vivi dataset (no plan.json)" in capsys.readouterr().err


def test_a_mapped_index_pickles_as_its_path(tagged):
    """DataLoader workers started by spawn receive the index by pickling: a memory-mapped one
    travels as its path and is mapped again (catches copying every column through the pipe)."""
    index = VideoDataset(tagged).index
    payload = pickle.dumps(index)
    assert len(payload) < 500
    again = pickle.loads(payload)
    assert [again.video(i) for i in range(len(again))] == [index.video(i) for i in range(len(index))]
