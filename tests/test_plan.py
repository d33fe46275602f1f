"""Planning a run of very many videos: the input list in the order plans have always had, list
entries taken without a file-system call each, complete shards found by one listing."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import TINY_INGEST

from vivi.ingest import ingest
from vivi.ingest.pipeline import expand_inputs, expand_sources, plan_ingest
from vivi.ingest.shards import complete_shards, read_shard_index, shard_name


def test_sources_are_sorted_as_paths_part_by_part(tmp_path):
    """`a/b.mp4` sorts before `a-b.mp4` (Path order, part by part), not after it (text order,
    "-" < "/"): a plan in another order would refuse to resume every dataset planned before."""
    names = ["d/a-b.mp4", "d/a/b.mp4", "d/a.mp4", "d/a/a-b.mp4", "d/a b.mp4", "e.mp4"]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(names) + "\n")
    expected = sorted(Path(tmp_path, name) for name in names)
    assert expand_sources([listing]) == [str(p) for p in expected]
    assert expand_inputs([listing]) == expected


def test_listed_videos_cost_no_file_system_call_each(tmp_path, monkeypatch):
    """Entries with a video extension are made absolute and normalised as text: a list of a
    million is read in seconds (a stat or resolve per entry took minutes); `..` is resolved,
    duplicates are dropped."""
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"videos/{i:05d}.mp4\n" for i in range(2000)) + "x/../videos/00001.mp4\n")
    calls = []

    def counted(original):
        def call(*args, **kwargs):
            calls.append(args)
            return original(*args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", counted(os.stat))
    monkeypatch.setattr(Path, "resolve", counted(Path.resolve))
    sources = expand_sources([listing])
    assert len(sources) == 2000 and sources[1] == str(tmp_path / "videos" / "00001.mp4")
    assert len(calls) < 10, len(calls)


def test_complete_shards_by_listing_agree_with_reading_every_index(dataset, tmp_path):
    """A shard whose tar was cut short or whose index is missing is not complete, as when every
    index is read in full (the listing reads only the tar size each index records)."""
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    tar = copy / "shards" / f"{shard_name(1)}.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    (copy / "shards" / f"{shard_name(2)}.json").unlink()
    assert complete_shards(copy, range(3)) == {j for j in range(3) if read_shard_index(copy, j) is not None} == {0}
    assert complete_shards(tmp_path / "none", range(3)) == set()


def test_a_resumed_plan_finds_only_the_shards_left(world, dataset, tmp_path):
    """plan_ingest on a dataset with one shard missing: that shard is the one to do, for the
    part that owns it only; and the run then equals the dataset made in one go."""
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    for suffix in (".json", ".tar"):
        (copy / "shards" / f"{shard_name(1)}{suffix}").unlink()
    inputs = [world / "videos"]
    assert plan_ingest(inputs, copy, TINY_INGEST)[3] == [1]
    assert plan_ingest(inputs, copy, TINY_INGEST, part=(1, 2))[3] == [1]
    assert plan_ingest(inputs, copy, TINY_INGEST, part=(0, 2))[3] == []
    summary = ingest(inputs, copy, TINY_INGEST, progress=False)
    assert summary.shards_written == 1 and summary.complete
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    assert all((dataset / f).read_bytes() == (copy / f).read_bytes() for f in files)
