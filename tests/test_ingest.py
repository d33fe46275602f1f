"""Ingest on real H.264 videos of the synthetic world: cuts, sampling, shards, bad input, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import TINY_INGEST, ground_truth, write_bad_inputs, write_video

from vivi.data.inspect import dataset_stats, format_stats, render_contact_sheet
from vivi.ingest import IngestConfig, SamplingConfig, decode_video, detect_cuts, ingest
from vivi.ingest.decode import VideoError, decode_jpeg
from vivi.ingest.shards import read_shard_index, shard_name


def _decode_rgb(path):
    import av
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_cuts_are_frame_exact_on_the_synthetic_world(world):
    truth = ground_truth(world)
    assert sum(len(gt["shot_starts"]) > 1 for gt in truth.values()) >= 4
    for path, gt in truth.items():
        assert detect_cuts(_decode_rgb(path)) == gt["shot_starts"], path
        assert decode_video(path).shot_starts == gt["shot_starts"], path


def test_no_false_cuts_with_strong_motion_and_lighting_drift(tmp_path):
    from vivi.synth import make_world
    make_world(tmp_path, videos=3, seconds=10.0, size=64, seed=3, shots=(1, 1), motion=2.5,
               lighting_drift=2.5, workers=1, tasks=False, progress=False)
    for path in sorted((tmp_path / "videos").glob("*.mp4")):
        assert decode_video(path).shot_starts == [0], path


def test_a_short_shot_between_cuts_is_kept(tmp_path):
    # 30 frames red, 5 frames green (half a second), 30 frames blue: the green shot must survive.
    colours = [(200, 30, 30)] * 30 + [(30, 200, 30)] * 5 + [(30, 30, 200)] * 30
    frames = np.array([np.full((32, 32, 3), c, np.uint8) for c in colours])
    video = decode_video(write_video(tmp_path / "short.mp4", frames))
    assert video.shot_starts == [0, 30, 35]
    assert video.frame_shot.count(1) == 1          # the 1 Hz sampler takes the short shot's first frame


def test_ingest_inspect_round_trip(world, dataset):
    truth = ground_truth(world)
    stats = dataset_stats(dataset)
    assert stats["videos"] == len(truth) and stats["failed"] == 0 and stats["complete"]
    assert stats["shots"] == sum(len(gt["shot_starts"]) for gt in truth.values())
    frames = 0
    for entry in stats["per_video"]:
        gt = truth[entry["source"]]
        fps = gt["fps"]
        assert entry["fps"] == pytest.approx(fps)
        assert entry["duration_s"] == pytest.approx(gt["num_frames"] / fps)
        assert entry["shot_starts_s"] == pytest.approx([s / fps for s in gt["shot_starts"]])
        assert entry["shot_starts_s"][0] == 0.0
        # 1 Hz inside each shot: a shot of n frames gives ceil(n / fps) samples
        bounds = gt["shot_starts"] + [gt["num_frames"]]
        expected = sum(int(np.ceil((b - a) / fps)) for a, b in zip(bounds, bounds[1:]))
        assert entry["frames"] == expected
        frames += expected
    assert stats["frames"] == frames


def test_cli_inspect_json_has_the_documented_keys(dataset):
    out = subprocess.run([sys.executable, "-m", "vivi.cli", "inspect", str(dataset), "--json"],
                         capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout)
    assert {"videos", "shots", "frames", "per_video"} <= stats.keys()
    assert {"source", "duration_s", "fps", "frames", "shot_starts_s"} <= stats["per_video"][0].keys()


def test_shards_are_webdataset_samples(dataset):
    import webdataset as wds
    samples = list(wds.WebDataset(sorted(str(p) for p in (dataset / "shards").glob("*.tar")), shardshuffle=False))
    index = [v for j in range(3) for v in read_shard_index(dataset, j)["videos"]]
    assert [s["__key__"] for s in samples] == [v["key"] for v in index]
    for sample, video in zip(samples, index):
        record = json.loads(sample["json"])
        assert record["key"] == video["key"] and record["frame_times_s"] == video["frame_times_s"]
        jpegs = sorted(k for k in sample if k.endswith(".jpg"))
        assert len(jpegs) == len(video["frame_times_s"])


def test_stored_frames_are_the_sampled_native_frames(world, dataset):
    """Each stored JPEG is its recorded native frame: closer to it than to the frames on either
    side (within a shot neighbours differ by little more than the JPEG error, so an off-by-one
    frame index would fail here), and within JPEG error of it (quality 90: 1-4 grey levels)."""
    from vivi.data import VideoDataset
    data = VideoDataset(dataset)
    for video in data.videos:
        native = _decode_rgb(video.source)
        for i, n in enumerate(video.frame_native_index):
            stored = data.read_frame(video, i).astype(int)
            error = {m: np.abs(stored - native[m]).mean() for m in (n - 1, n, n + 1) if 0 <= m < len(native)}
            assert error[n] < 6 and error[n] == min(error.values()), (video.key, n, error)


def _asymmetric_frame(height: int = 32, width: int = 64) -> np.ndarray:
    """A frame that looks different under each of the 8 turns and mirrors: ramps and a corner block."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 1] = np.linspace(0, 220, width)[None].astype(np.uint8)
    frame[..., 2] = np.linspace(0, 220, height)[:, None].astype(np.uint8)
    frame[: height // 3, : width // 3, 0] = 255
    return frame


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
                    reason="this PyAV cannot write display matrices")
def test_frames_are_stored_as_the_video_is_shown(tmp_path):
    # A display matrix (how phones store portrait video) says: turn the decoded frame `degrees`
    # counter-clockwise, then mirror it. All 8 orientations, each in two ways.
    frame = _asymmetric_frame()
    for degrees in (0, 90, 180, 270):
        for hflip in (False, True):
            for vflip in (False, True):
                path = write_video(tmp_path / f"{degrees}-{hflip:d}{vflip:d}.mp4", np.stack([frame] * 3),
                                   display=(degrees, hflip, vflip))
                shown = np.rot90(frame, degrees // 90)
                shown = shown[:, ::-1] if hflip else shown
                shown = shown[::-1] if vflip else shown
                video = decode_video(path)
                stored = decode_jpeg(video.jpegs[0])
                assert stored.shape == shown.shape and video.frame_size == shown.shape[:2], (degrees, hflip, vflip)
                assert np.abs(stored.astype(int) - shown).mean() < 6, (degrees, hflip, vflip)
    # Quarter turns alone as OpenCV's own reader turns them (it ignores mirrors).
    for degrees in (90, 180, 270):
        video = decode_video(tmp_path / f"{degrees}-00.mp4")
        ok, bgr = cv2.VideoCapture(str(tmp_path / f"{degrees}-00.mp4")).read()
        assert ok and bgr.shape[:2] == video.frame_size
        assert np.abs(decode_jpeg(video.jpegs[0]).astype(int) - bgr[..., ::-1]).mean() < 6


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
                    reason="this PyAV cannot write display matrices")
def test_portrait_and_anamorphic_videos_in_the_dataset(tmp_path):
    frame = _asymmetric_frame()
    portrait = write_video(tmp_path / "portrait.mp4", np.stack([frame] * 12), display=(-90, False, False))
    wide = write_video(tmp_path / "wide.mp4", np.stack([frame] * 12), sample_aspect=Fraction(3, 2))
    out = tmp_path / "data"
    ingest([portrait, wide], out, IngestConfig(sampling=SamplingConfig(short_side=16)), progress=False)
    records = {Path(r["source"]).name: r for r in read_shard_index(out, 0)["videos"]}
    # turned clockwise (as a phone's portrait video is), then the shorter side to 16
    assert records["portrait.mp4"]["display"] == {"rotation_cw": 90, "hflip": False, "sample_aspect": 1.0}
    assert records["portrait.mp4"]["frame_size"] == [32, 16]
    # 64 x 32 pixels each 1.5 as wide as high: shown 96 x 32, stored 48 x 16
    assert records["wide.mp4"]["display"] == {"rotation_cw": 0, "hflip": False, "sample_aspect": 1.5}
    assert records["wide.mp4"]["frame_size"] == [16, 48]
    assert records["wide.mp4"]["width"] == 64 and records["wide.mp4"]["height"] == 32   # as coded


def _damage_packets(path: Path, packets: list[int]) -> Path:
    """Overwrite the bytes of the video packets ``packets`` (in decoding order) with zeros."""
    with av.open(str(path)) as container:
        where = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    for k in packets:
        pos, size = where[k]
        data[pos:pos + size] = bytes(size)
    damaged = path.with_name(f"damaged-{path.name}")
    damaged.write_bytes(bytes(data))
    return damaged


def test_a_damaged_packet_costs_the_frames_it_spoils_not_the_video(tmp_path):
    # Three shots of 3 s at 10 fps, a key frame every 15 frames; packets 40 and 41 are damaged:
    # skipped (as the ffmpeg command line does), and the frames decoded after them until the key
    # frame at 4.5 s are not stored. The cuts, and every other frame, are as without the damage.
    rng = np.random.default_rng(0)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = np.concatenate([np.full((30, 32, 48, 3), c, np.uint8) for c in colours])
    frames = np.clip(frames + rng.integers(-20, 20, frames.shape), 0, 255).astype(np.uint8)
    clean = decode_video(write_video(tmp_path / "shots.mp4", frames, key_every=15))
    video = decode_video(_damage_packets(tmp_path / "shots.mp4", [40, 41]))
    assert (video.damaged_packets, video.unclean_frames, video.num_native_frames) == (2, 3, 88)
    assert video.shot_starts_s == clean.shot_starts_s == [0.0, 3.0, 6.0]
    assert clean.frame_times_s == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert video.frame_times_s == [0.0, 1.0, 2.0, 3.0, 4.5, 5.0, 6.0, 7.0, 8.0]   # 4.0 lost, 4.1-4.4 spoilt
    for k in (0, 1, 2, 3, 5, 6, 7, 8):
        assert video.jpegs[k] == clean.jpegs[k]
    # damage beyond 5 % of the packets: the video is reported, not ingested
    with pytest.raises(VideoError, match="damaged: 10 of its 90 packets"):
        decode_video(_damage_packets(tmp_path / "shots.mp4", list(range(40, 50))))
    summary = ingest([tmp_path / "damaged-shots.mp4", tmp_path / "shots.mp4"], tmp_path / "data",
                     TINY_INGEST, progress=False)
    assert summary.videos == 1 and summary.failed == 1 and summary.damaged == 0
    _damage_packets(tmp_path / "shots.mp4", [40, 41])
    summary = ingest([tmp_path / "damaged-shots.mp4"], tmp_path / "data2", TINY_INGEST, progress=False)
    assert summary.videos == 1 and summary.damaged == 1 and "1 videos have damaged packets" in str(summary)
    stats = dataset_stats(tmp_path / "data2")
    assert stats["damaged"] == 1 and "with damaged packets 1" in format_stats(stats)
    assert dataset_stats(tmp_path / "data")["damaged"] == 0


def test_contact_sheet(dataset, tmp_path):
    import cv2
    path = render_contact_sheet(dataset, tmp_path / "sheet.png", videos=2)
    image = cv2.imread(str(path))
    stats = dataset_stats(dataset)
    rows = sum(v["shots"] for v in stats["per_video"][:2])
    assert image.shape[0] == rows * (96 + 2) + 6       # a 96-px row (and a 2-px gap) per shot, a rule between videos
    # chosen videos, in the order asked: by key, and by a part of the source's file name
    last = stats["per_video"][-1]
    name = Path(last["source"]).name
    path = render_contact_sheet(dataset, tmp_path / "chosen.png", select=[last["key"], name[-8:]], tile=40)
    assert cv2.imread(str(path)).shape[0] == last["shots"] * (40 + 2)
    with pytest.raises(ValueError, match="no video of the dataset is 'nothing-like-it'"):
        render_contact_sheet(dataset, tmp_path / "none.png", select=["nothing-like-it"])
    with pytest.raises(ValueError, match="image extension"):
        render_contact_sheet(dataset, tmp_path / "sheet")
    with pytest.raises(ValueError, match="at least one video"):
        render_contact_sheet(dataset, tmp_path / "none.png", videos=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chosen.png", "sheet.png"]
    table = format_stats(stats)                        # one line per video: key, file name, duration, fps, shots
    assert all(v["key"] in table and Path(v["source"]).name in table for v in stats["per_video"])


def test_bad_inputs_are_reported_and_the_rest_ingested(world, tmp_path):
    good = sorted((world / "videos").glob("*.mp4"))[:2]
    expected = write_bad_inputs(tmp_path / "bad", good[0])
    summary = ingest([*good, tmp_path / "bad"], tmp_path / "ds", TINY_INGEST, workers=2, progress=False)
    assert summary.videos == 2 and summary.failed == len(expected) and summary.complete
    failures = {Path(f["source"]).name: f["reason"]
                for f in map(json.loads, (tmp_path / "ds" / "failures.jsonl").read_text().splitlines())}
    assert failures.keys() == expected.keys()
    for name, words in expected.items():
        assert words in failures[name], (name, failures[name])
    assert "could not be ingested" in str(summary) and "--retry-failed" in str(summary)
    # the empty file replaced by a good video: a plain re-run keeps the complete shards, a retry
    # makes again those that hold failures (and drops their detections, now stale)
    import shutil
    out = tmp_path / "ds"
    shutil.copy(good[1], tmp_path / "bad" / "empty.mp4")
    count = summary.shards_planned
    with_failures = {j for j in range(count) if read_shard_index(out, j)["failures"]}
    (out / "detections" / "unit").mkdir(parents=True)
    for j in range(count):
        (out / "detections" / "unit" / f"{shard_name(j)}.json").write_text("{}")
    inputs = [*good, tmp_path / "bad"]
    assert ingest(inputs, out, TINY_INGEST, progress=False).failed == len(expected)
    retried = ingest(inputs, out, TINY_INGEST, progress=False, retry_failed=True)
    assert retried.videos == 3 and retried.failed == len(expected) - 1 and retried.complete
    assert retried.shards_written == len(with_failures) and 0 < len(with_failures) < count
    assert {p.name for p in (out / "detections" / "unit").iterdir()} == {
        f"{shard_name(j)}.json" for j in range(count) if j not in with_failures}


@pytest.mark.parametrize("flag, value", [("--fps", "-1"), ("--fps", "0"), ("--videos-per-shard", "0"),
                                         ("--short-side", "0"), ("--cut-threshold", "-1"), ("--jpeg-quality", "200")])
def test_ingest_settings_out_of_range_stop_before_anything_is_written(world, tmp_path, flag, value):
    result = subprocess.run([sys.executable, "-m", "vivi.cli", "ingest", str(world / "videos"), "--out",
                             str(tmp_path / "data"), flag, value], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "out of range" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_missing_input_and_empty_folder_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest([tmp_path / "nope"], tmp_path / "ds", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files"):
        ingest([tmp_path / "empty"], tmp_path / "ds", progress=False)


def test_list_file_input_and_changed_plan(world, tmp_path):
    videos = sorted((world / "videos").glob("*.mp4"))
    listing = tmp_path / "list.txt"
    listing.write_text("# videos\n" + "\n".join(str(p) for p in videos[:2]) + "\n\n")
    summary = ingest([listing], tmp_path / "ds", TINY_INGEST, progress=False)
    assert summary.videos == 2
    with pytest.raises(ValueError, match="other settings .the input videos"):
        ingest(videos[:3], tmp_path / "ds", TINY_INGEST, progress=False)
    # a list written with a byte-order mark, naming a folder; a folder reached through a symbolic
    # link (and a link loop, which ends)
    from vivi.ingest.pipeline import expand_inputs
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "linked").symlink_to(world / "videos", target_is_directory=True)
    (tmp_path / "more" / "loop").symlink_to(tmp_path / "more", target_is_directory=True)
    listing.write_text(str(videos[0]) + "\n" + str(world / "videos") + "\n", encoding="utf-8-sig")
    assert expand_inputs([listing]) == videos
    assert expand_inputs([tmp_path / "more"]) == videos


def test_parts_together_equal_one_run(world, tmp_path):
    inputs = [world / "videos"]
    ingest(inputs, tmp_path / "one", TINY_INGEST, progress=False)
    for i in range(3):
        summary = ingest(inputs, tmp_path / "parts", TINY_INGEST, part=(i, 3), progress=False)
    assert summary.complete
    _assert_same_dataset(tmp_path / "one", tmp_path / "parts")


def test_a_part_that_listed_the_shards_too_early_writes_the_manifest_again(world, tmp_path, monkeypatch):
    """Parts side by side: the last to finish may have listed the complete shards before another
    part's last one was in place; its manifest must still count every shard."""
    from vivi.ingest import shards
    inputs, out = [world / "videos"], tmp_path / "ds"
    for i in (0, 1):
        ingest(inputs, out, TINY_INGEST, part=(i, 3), progress=False)
    listed = shards.iter_completed_shard_indices
    calls = []
    monkeypatch.setattr(shards, "iter_completed_shard_indices",
                        lambda root: iter([]) if not calls.append(root) and len(calls) == 1 else listed(root))
    summary = ingest(inputs, out, TINY_INGEST, part=(2, 3), progress=False)
    assert len(calls) >= 2 and summary.complete and summary.videos == 6
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_truncated_shard_is_not_taken_as_complete(dataset, tmp_path):
    import shutil
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    tar = copy / "shards" / f"{shard_name(1)}.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    assert read_shard_index(copy, 1) is None
    summary = ingest([Path(s) for s in json.loads((copy / "plan.json").read_text())["inputs"]], copy,
                     TINY_INGEST, progress=False)
    assert summary.shards_written == 1 and summary.shards_skipped == 2
    _assert_same_dataset(dataset, copy)


def test_the_plan_is_written_with_the_shards(dataset, tmp_path):
    """A new plan goes to disk in the durable round of the first shard, or of the manifest when
    every shard is already complete (here: plan.json lost); the dataset is the same either way."""
    import shutil
    inputs = [Path(s) for s in json.loads((dataset / "plan.json").read_text())["inputs"]]
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    (copy / "plan.json").unlink()
    summary = ingest(inputs, copy, TINY_INGEST, progress=False)
    assert summary.shards_written == 0 and summary.complete
    _assert_same_dataset(dataset, copy)
    fresh = tmp_path / "fresh"
    ingest(inputs, fresh, TINY_INGEST, progress=False)
    _assert_same_dataset(dataset, fresh)
    assert not list(fresh.rglob("*.tmp*")) and not list(copy.rglob("*.tmp*"))


def test_killed_ingest_resumes_to_the_same_dataset(world, dataset, tmp_path):
    out = tmp_path / "ds"
    command = [sys.executable, "-m", "vivi.cli", "ingest", str(world / "videos"), "--out", str(out),
               "--short-side", "64", "--videos-per-shard", "1", "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "shards" / f"{shard_name(1)}.json").exists():
        assert time.time() < deadline and process.poll() is None, "ingest did not start"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / "shards").glob("*.json")))
    assert 2 <= done < 6, "the kill should land mid-run"
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    reference = tmp_path / "reference"
    ingest([world / "videos"], reference, IngestConfig(sampling=SamplingConfig(short_side=64), videos_per_shard=1),
           progress=False)
    _assert_same_dataset(reference, out)
    assert not list(out.rglob("*.tmp*"))


def test_a_full_disk_stops_the_run_without_partial_files_and_it_resumes(dataset, world, tmp_path, monkeypatch):
    """The disk fills while the second shard is written: the first shard stays complete, nothing
    half-written is left behind (it would hold the space), and the run resumes to the same dataset."""
    import errno

    from vivi.ingest import shards
    add, written = shards._TarWriter.add, []

    def add_until_full(self, name, data):
        if name.startswith("v0000002.f0002"):       # video 2 is the first of shard 1
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(name)
        return add(self, name, data)

    monkeypatch.setattr(shards._TarWriter, "add", add_until_full)
    out = tmp_path / "ds"
    with pytest.raises(OSError, match="No space left"):
        ingest([world / "videos"], out, TINY_INGEST, progress=False)
    assert read_shard_index(out, 0) is not None and read_shard_index(out, 1) is None
    assert "v0000002.f0001.jpg" in written
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"{shard_name(0)}.json", f"{shard_name(0)}.tar"]
    monkeypatch.setattr(shards._TarWriter, "add", add)
    summary = ingest([world / "videos"], out, TINY_INGEST, progress=False)
    assert summary.shards_written == 2 and summary.shards_skipped == 1
    _assert_same_dataset(dataset, out)


def test_files_replacing_leaves_the_old_file_when_writing_fails(tmp_path):
    from vivi.files import replacing
    path = tmp_path / "sub" / "result.json"
    with replacing(path) as tmp:
        tmp.write_text("old")
    assert path.read_text() == "old"
    with pytest.raises(OSError):
        with replacing(path) as tmp:
            tmp.write_text("half of the n")
            raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
    with replacing(path) as tmp:                 # a writer that makes its file owner-only (safetensors)
        tmp.write_text("new")
        tmp.chmod(0o600)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def _assert_same_dataset(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for name in files_a:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_crashing_decoder_process_fails_only_its_video(world):
    from crashing_worker import crash_on_bad

    from vivi.ingest.pipeline import _run_jobs
    videos = [str(p) for p in sorted((world / "videos").glob("*.mp4"))[:4]]
    jobs = [(i, source, TINY_INGEST.sampling, 1) for i, source in enumerate(videos[:2] + ["/x/crash.mp4"] + videos[2:])]
    results = list(_run_jobs(jobs, workers=2, work=crash_on_bad))
    assert [r[0] for r in results] == list(range(5))
    assert [r[1] is None for r in results] == [False, False, True, False, False]
    assert "crashed" in results[2][3]


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_with_workers_exits_cleanly_and_resumes(world, tmp_path, signum, status):
    """Ctrl-C (to the process group, as a terminal sends it) or SIGTERM (to the group, as a
    scheduler stops a job): exit status 130 or 143, the interrupted line, only complete shards,
    and the same command then finishes the dataset of an uninterrupted run."""
    import os
    out, videos = tmp_path / "ds", tmp_path / "videos"
    videos.mkdir()           # 8 copies of the world's 6 videos: enough work left when Ctrl-C comes, even under load
    for copy in range(8):
        for path in sorted((world / "videos").glob("*.mp4")):
            (videos / f"{copy}-{path.name}").symlink_to(path)
    command = [sys.executable, "-m", "vivi.cli", "ingest", str(videos), "--out", str(out),
               "--short-side", "64", "--videos-per-shard", "1", "--workers", "2"]
    # A terminal's Ctrl-C is never ignored, but a shell's background job inherits SIGINT ignored
    # (e.g. the test suite started with `cmd &`): give the child the default disposition back.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not (out / "shards" / f"{shard_name(1)}.json").exists():
        assert time.time() < deadline and process.poll() is None, "ingest did not start"
        time.sleep(0.002)
    os.killpg(process.pid, signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == status and "run the same command to resume" in err and "Traceback" not in err, err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    reference = tmp_path / "reference"
    ingest([videos], reference, IngestConfig(sampling=SamplingConfig(short_side=64), videos_per_shard=1),
           progress=False)
    _assert_same_dataset(reference, out)


def _every_frame_distances(frames, config=None) -> tuple[list[float], list[int]]:
    """Reference: every frame's histogram distance to the one before (frames 1 to n-1) and the cut
    rule applied to them, written out plainly (no pre-filter, no batches)."""
    from vivi.ingest.cut_detector import ColourSamples, CutDetectorConfig, histogram_distance, sample_histogram
    config = config or CutDetectorConfig()
    samples = ColourSamples()
    hists = [sample_histogram(samples.one(frame), config.bits) for frame in frames]
    distances = [histogram_distance(hists[t], hists[t - 1]) for t in range(1, len(hists))]
    starts = [0]
    for t, distance in enumerate(distances, 1):
        if distance > config.threshold and t - starts[-1] >= config.min_shot_frames:
            starts.append(t)
    return distances, starts


def _every_frame_cuts(frames, config=None) -> list[int]:
    return _every_frame_distances(frames, config)[1]


def _hard_cuts_video(path: Path) -> tuple[Path, np.ndarray]:
    """Hard cases for the cut detector's pre-filter (only frames whose sample bins changed on at
    least the threshold's share of positions get histograms): noise (every frame a candidate),
    flashes shorter than min_shot_frames, a fade crossing the threshold gradually, and cuts on
    and next to batch boundaries. Returns the video and its RGB frames."""
    from vivi.ingest.cut_detector import MAX_BATCH
    rng = np.random.default_rng(0)
    colours = [rng.integers(0, 256, 3) for _ in range(8)]
    frames = []
    for shot, length in enumerate([MAX_BATCH, 1, MAX_BATCH - 1, 2, 3, MAX_BATCH + 1, 5]):
        frames += [np.broadcast_to(colours[shot], (48, 64, 3)) for _ in range(length)]
    frames += [rng.integers(0, 256, (48, 64, 3)) for _ in range(20)]                      # noise
    frames += [np.full((48, 64, 3), round(255 * t / 30)) for t in range(31)]             # fade
    frames = np.array(frames, np.uint8)
    return write_video(path, frames), frames


def test_batched_prefiltered_detector_equals_every_frame_histograms(tmp_path):
    path, frames = _hard_cuts_video(tmp_path / "hard.mp4")
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    expected = _every_frame_cuts(decoded)
    assert len(expected) > 8
    assert detect_cuts(decoded) == expected
    assert decode_video(path).shot_starts == expected
    assert detect_cuts(frames) == _every_frame_cuts([av.VideoFrame.from_ndarray(f, format="rgb24") for f in frames])


def test_cut_stats_give_every_exact_distance_and_the_cuts_of_ingest(tmp_path):
    """On the hard cases, with the default settings and two others: the statistics hold one row
    per native frame with the exact distance of the plain reference, and their cuts are exactly
    the shot starts ``decode_video`` (ingest) finds with those settings, including frames above
    the threshold that min_shot_frames keeps from being cuts."""
    from vivi.ingest import CutDetectorConfig, cut_stats
    path, _ = _hard_cuts_video(tmp_path / "hard.mp4")
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    suppressed = 0
    for cuts in (CutDetectorConfig(), CutDetectorConfig(threshold=0.2, min_shot_frames=2),
                 CutDetectorConfig(threshold=0.6, min_shot_frames=8)):
        config = SamplingConfig(cuts=cuts)
        rows = cut_stats([path], config)
        distances, starts = _every_frame_distances(decoded, cuts)
        assert [r.frame for r in rows] == list(range(len(decoded)))
        assert [r.time_s for r in rows] == pytest.approx([k / 10 for k in range(len(decoded))])
        assert rows[0].distance is None and not rows[0].cut
        assert [r.distance for r in rows[1:]] == distances
        assert [r.frame for r in rows if r.cut] == starts[1:] == decode_video(path, config).shot_starts[1:]
        suppressed += sum(r.distance > cuts.threshold and not r.cut for r in rows[1:])
    assert suppressed > 0          # the min_shot_frames part of the rule was exercised


def test_cut_stats_of_the_synthetic_world_are_its_ground_truth(world, dataset, tmp_path):
    """The CSV's cuts are the ground-truth cuts of every video and the shot starts ingest stored
    for it; every cut's distance exceeds the threshold and no other frame's does."""
    import csv

    from vivi.ingest import cut_stats, write_cut_stats
    truth = ground_truth(world)
    stored = {v["source"]: v["shot_starts"] for j in range(3) for v in read_shard_index(dataset, j)["videos"]}
    rows = cut_stats(list(truth), TINY_INGEST.sampling)
    path = write_cut_stats(rows, tmp_path / "stats" / "cuts.csv")
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["video", "frame", "time_s", "distance", "cut"] and len(table) == len(rows)
    threshold = TINY_INGEST.sampling.cuts.threshold
    for source, gt in truth.items():
        mine = [r for r in table if r["video"] == source]
        assert [int(r["frame"]) for r in mine] == list(range(gt["num_frames"]))
        assert mine[0]["distance"] == "" and mine[0]["cut"] == "0"
        cuts = [int(r["frame"]) for r in mine if r["cut"] == "1"]
        assert cuts == gt["shot_starts"][1:] == stored[source][1:], source
        for r in mine[1:]:
            assert (float(r["distance"]) > threshold) == (r["cut"] == "1"), (source, r)
    assert sum(len(gt["shot_starts"]) > 1 for gt in truth.values()) >= 4     # there are cuts to find


def test_cut_stats_name_the_file_that_is_not_a_video(world, tmp_path):
    from vivi.ingest import cut_stats
    good = sorted((world / "videos").glob("*.mp4"))[0]
    (tmp_path / "notes.mp4").write_text("this is not a video\n")
    for bad, words in ((tmp_path / "missing.mp4", "file not found"), (tmp_path / "notes.mp4", "not a readable video"),
                       (tmp_path, "a folder")):
        with pytest.raises(ValueError) as error:
            cut_stats([good, bad])
        assert str(error.value).startswith(f"{bad}: ") and words in str(error.value) and "\n" not in str(error.value)


def test_detector_handles_frame_size_changes_within_a_batch():
    frames = ([np.full((32, 32, 3), (200, 30, 30), np.uint8)] * 5 + [np.full((48, 32, 3), (200, 30, 30), np.uint8)] * 5
              + [np.full((48, 32, 3), (30, 30, 200), np.uint8)] * 5)
    assert detect_cuts(frames) == [0, 10]
    yuv = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in frames]
    assert detect_cuts(yuv) == _every_frame_cuts(yuv) == [0, 10]


def test_tar_writer_matches_tarfile_byte_for_byte(tmp_path):
    import io
    import tarfile

    from vivi.ingest import shards
    members = [("v0000001.json", b"{}"), ("v0000001.f0000.jpg", bytes(range(256)) * 3), ("empty", b""),
               ("x" * 100, b"a" * 512), ("folder/" * 20 + "long-name.jpg", b"b" * 513)]
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    written = io.BytesIO()
    writer = shards._TarWriter(written)
    offsets = [writer.add(name, data) for name, data in members]
    assert writer.close() == len(written.getvalue())
    assert written.getvalue() == expected.getvalue()
    for (offset, size), (_, data) in zip(offsets, members):
        assert written.getvalue()[offset:offset + size] == data


def test_kept_frames_encoded_aside_are_the_same_bytes(tmp_path, monkeypatch):
    # A portrait video of three shots at 144x160 (sizes where an idle core takes the kept frames'
    # JPEG): encoded in the second thread, with a short backlog, the stored frames are the same
    # bytes in the same order as encoded in the decoding thread; a failure there is the video's.
    import threading

    from vivi.ingest import decode
    rng = np.random.default_rng(1)
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = np.concatenate([np.full((30, 144, 160, 3), c, np.uint8) for c in colours])
    frames = np.clip(frames + rng.integers(-20, 20, frames.shape), 0, 255).astype(np.uint8)
    path = write_video(tmp_path / "portrait.mp4", frames, display=(90, False, False))
    inline = decode_video(path, SamplingConfig(short_side=96), threads=1)
    encoders, imencode = [], cv2.imencode

    def recording(*args):
        encoders.append(threading.current_thread().name)
        return imencode(*args)
    monkeypatch.setattr(decode.cv2, "imencode", recording)
    monkeypatch.setattr(decode, "threading_plan", lambda width, height, threads: (1, True))
    monkeypatch.setattr(decode._Encoder, "DEPTH", 2)
    aside = decode_video(path, SamplingConfig(short_side=96))
    assert len(encoders) == 9 and all(name.startswith("vivi-jpeg") for name in encoders)
    assert aside.jpegs == inline.jpegs and aside.frame_times_s == inline.frame_times_s
    assert aside.frame_size == inline.frame_size == (106, 96) and aside.shot_starts == inline.shot_starts == [0, 30, 60]
    encoders.clear()
    monkeypatch.setattr(decode.cv2, "imencode", lambda *args: (False, None) if len(encoders) > 3 else recording(*args))
    with pytest.raises(VideoError, match="JPEG encoding failed at frame 40"):
        decode_video(path, SamplingConfig(short_side=96))
    assert not [t for t in threading.enumerate() if t.name.startswith("vivi-jpeg")]


def test_encoding_thread_keeps_order_bounds_its_backlog_and_hands_errors_back():
    import threading

    from vivi.ingest.decode import _Encoder
    release = threading.Event()

    def encode(frame, index):
        release.wait()
        if frame == "bad":
            raise VideoError(f"JPEG encoding failed at frame {index}")
        return f"{frame}-{index}"
    encoder = _Encoder(encode)
    for index in range(_Encoder.DEPTH):          # up to DEPTH frames wait without blocking the decoder
        encoder.submit("frame", index)
    late = threading.Thread(target=encoder.submit, args=("frame", _Encoder.DEPTH))
    late.start()
    late.join(0.2)
    assert late.is_alive() and encoder.results == []  # one more waits until a frame is encoded
    release.set()
    late.join(5)
    assert not late.is_alive()
    assert encoder.finish() == [f"frame-{i}" for i in range(_Encoder.DEPTH + 1)]
    failing = _Encoder(encode)
    for index, frame in enumerate(["frame", "bad", "frame"]):
        failing.submit(frame, index)
    with pytest.raises(VideoError, match="failed at frame 1"):
        failing.finish()
    assert failing.results == ["frame-0"] and not failing._thread.is_alive()


def test_threading_plan_uses_idle_cores_only(monkeypatch):
    import os

    from vivi.ingest import decode
    plan = decode.threading_plan
    cores = os.cpu_count() or 1
    monkeypatch.setattr(decode._OTHERS, "cores", lambda: 0.0)          # an idle machine
    assert plan(64, 64) == (1, False)
    assert plan(256, 256) == (1, cores >= 2)                            # the JPEG aside on the idle core
    assert plan(640, 480) == ((0 if cores >= 2 else 1), False)        # FFmpeg's threads
    # the caller's processes fill the cores
    assert plan(640, 480, threads=1) == plan(256, 256, threads=1) == (1, False)
    monkeypatch.setattr(decode._OTHERS, "cores", lambda: float(cores))  # busy cores: nothing aside
    assert plan(256, 256) == plan(640, 480) == (1, False)
    monkeypatch.setattr(decode._OTHERS, "cores", lambda: None)          # not measurable: as if idle
    assert plan(256, 256) == (1, True) and plan(640, 480) == (0, False)


@pytest.mark.parametrize("environment, part", [
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "16"}, (3, 16)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "0"}, (3, 16)),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "2"}, (3, 4)),
])
def test_part_slurm_is_the_array_tasks_part(environment, part):
    """--part slurm reads the job array's task; an array numbered from 2 (--array=2-5) still
    gives parts 0..3 (would catch SLURM_ARRAY_TASK_MIN not subtracted)."""
    from vivi.ingest.pipeline import parse_part
    assert parse_part("slurm", environment) == part


def test_part_slurm_outside_a_job_array_is_one_line(tmp_path, monkeypatch):
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    result = subprocess.run([sys.executable, "-m", "vivi.cli", "ingest", str(tmp_path), "--out", str(tmp_path / "ds"),
                             "--part", "slurm"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "sbatch --array" in result.stderr and "i/n" in result.stderr


def _process_group(group: int) -> list[int]:
    """Live processes (not zombies) of the process group ``group``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] not in "ZX":
            found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_killing_ingest_leaves_no_worker_process_behind(world, tmp_path):
    """SIGKILL of ingest's own process (not its group) with --workers 2: its workers, the fork
    server and the resource tracker all end within seconds (a worker waits on its task queue
    forever, and the fork server on its workers, unless they watch ingest's process)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for copy in range(60):   # 360 videos, about 10 s for two workers: ingest does not end before it is killed
        for path in sorted((world / "videos").glob("*.mp4")):
            (videos / f"{copy}-{path.name}").symlink_to(path)
    process = subprocess.Popen([sys.executable, "-m", "vivi.cli", "ingest", str(videos), "--out", str(tmp_path / "ds"),
                                "--short-side", "64", "--videos-per-shard", "1", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(_process_group(process.pid)) < 4:       # ingest, fork server, two workers (+ tracker)
            assert time.time() < deadline and process.poll() is None, \
                f"ingest did not start its workers (exit status {process.poll()}, " \
                f"{len(_process_group(process.pid))} processes)"
            time.sleep(0.02)
        process.kill()
        process.wait()
        deadline = time.time() + 10
        while _process_group(process.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert _process_group(process.pid) == []
    finally:
        for pid in _process_group(process.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one_are_refused_in_one_line(world, tmp_path, workers):
    result = subprocess.run([sys.executable, "-m", "vivi.cli", "ingest", str(world / "videos"), "--out",
                             str(tmp_path / "ds"), "--workers", workers], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--workers" in result.stderr, result.stderr
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_frame_rate_that_is_not_a_finite_number_is_refused_by_name(value):
    """inf passed the old `fps > 0` check (and sampled one frame per shot forever); nan is refused
    naming the field, not as a list of every setting."""
    with pytest.raises(ValueError, match=rf"out of range: fps {value}"):
        SamplingConfig(sample_fps=float(value))


def test_an_ingest_whose_every_video_failed_is_an_error_after_failures_jsonl(world, tmp_path):
    """Nothing ingested is an error (the CLI's exit status 2), raised after failures.jsonl is
    written so that the reasons are there to read."""
    bad = tmp_path / "bad"
    write_bad_inputs(bad, sorted((world / "videos").glob("*.mp4"))[0])
    with pytest.raises(ValueError, match="failures.jsonl"):
        ingest([bad], tmp_path / "ds", TINY_INGEST, progress=False)
    assert len((tmp_path / "ds" / "failures.jsonl").read_text().splitlines()) == len(list(bad.iterdir()))


def test_dangling_links_and_folders_named_like_videos_are_reported(world, tmp_path):
    """A broken symbolic link and a folder named clip.mp4 are inputs of the plan (each its key,
    so the plan does not change when they are repaired) and failures with a reason, not skipped."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted((world / "videos").glob("*.mp4"))[0]
    (folder / "a.mp4").symlink_to(good)
    (folder / "b.mp4").symlink_to(tmp_path / "gone.mp4")
    (folder / "c.mp4").mkdir()
    summary = ingest([folder], tmp_path / "ds", TINY_INGEST, progress=False)
    assert summary.videos == 1 and summary.failed == 2
    failures = {Path(f["source"]).name: f["reason"]
                for f in map(json.loads, (tmp_path / "ds" / "failures.jsonl").read_text().splitlines())}
    assert failures == {"b.mp4": "broken symbolic link", "c.mp4": "a folder, not a video file"}
