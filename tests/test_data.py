"""The clip loader: N videos x K consecutive shots x F consecutive frames, seeded, split across ranks."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import damage_frame

from vivi.data import ClipConfig, VideoClipDataset, VideoDataset, VideoSampler, load_detections, make_loader
from vivi.ingest.index import write_index


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batch_geometry_and_order_inside_shots(dataset):
    config = ClipConfig(shots=2, frames=3)
    batch = next(iter(make_loader(dataset, config, batch_size=3, workers=0)))
    assert batch["frames"].shape == (3, 2, 3, 3, 64, 64) and batch["frames"].dtype == torch.uint8
    videos = VideoDataset(dataset)
    clips = VideoClipDataset(dataset, config)
    for i in range(3):
        video = clips.videos[int(batch["video"][i])]
        shots = batch["shots"][i].tolist()
        assert shots[1] == shots[0] + 1                                # consecutive shots
        for k, shot in enumerate(shots):
            frames = batch["frame_index"][i, k].tolist()
            assert all(video.frame_shot[f] == shot for f in frames)      # every frame is of its shot
            assert frames == sorted(frames)                              # in order
            available = video.shot_frames()[shot]
            if len(available) >= 3:                                      # consecutive when the shot is long enough
                assert frames == list(range(frames[0], frames[0] + 3))
            for f_pos, f in enumerate(frames):                           # the pixels are that frame's
                expected = torch.from_numpy(videos.read_frame(video, f)).permute(2, 0, 1)
                assert torch.equal(batch["frames"][i, k, f_pos], expected)


def test_videos_with_too_few_shots_are_skipped(dataset):
    videos = VideoDataset(dataset).videos
    for k in (1, 2, 3):
        clips = VideoClipDataset(dataset, ClipConfig(shots=k, frames=2))
        assert len(clips) == sum(v.num_shots >= k for v in videos)
    with pytest.raises(ValueError, match="no video .* has 99 shots"):
        VideoClipDataset(dataset, ClipConfig(shots=99))


def test_a_shot_without_stored_frames_breaks_the_run_of_shots(dataset, tmp_path):
    """A damaged stretch of a video can leave a shot with no stored frame: clips take K consecutive
    shots that each have frames (catches a draw of an empty shot, an IndexError in ``choose``, and
    an index whose longest run of shots with frames is counted wrongly)."""
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    path = copy / "shards" / "shard-000000.json"
    shard = json.loads(path.read_text())
    video = shard["videos"][0]
    keep = [i for i, shot in enumerate(video["frame_shot"]) if shot != 1]      # shot 1 loses its frames
    for name in ("frame_times_s", "frame_native_index", "frame_shot", "frame_members"):
        video[name] = [video[name][i] for i in keep]
    path.write_text(json.dumps(shard))
    write_index(copy)
    key, num_shots = video["key"], len(video["shot_starts_s"])
    assert num_shots >= 4, "the test needs a video of 4 shots first"
    clips = VideoClipDataset(copy, ClipConfig(shots=2, frames=2, size=64))
    index = [v.key for v in clips.videos].index(key)
    assert clips.windows(index) == list(range(2, num_shots - 1))     # pairs (0, 1) and (1, 2) hold shot 1
    seen = {tuple(clips[(index, draw)]["shots"].tolist()) for draw in range(40)}
    assert seen and all(1 not in shots for shots in seen)
    longest = max(2, num_shots - 2)                                  # shots 2 .. num_shots-1 keep their frames
    assert key in [v.key for v in VideoClipDataset(copy, ClipConfig(shots=longest, frames=2, size=64)).videos]
    short = VideoClipDataset(copy, ClipConfig(shots=longest + 1, frames=2, size=64))
    assert key not in [v.key for v in short.videos]                  # no run of K shots with frames left


def test_frame_mode_repeats_one_frame(dataset):
    clip = VideoClipDataset(dataset, ClipConfig(shots=1, frames=4, mode="frame"))[(0, 5)]
    assert len(set(clip["frame_index"].flatten().tolist())) == 1
    assert all(torch.equal(clip["frames"][0, 0], clip["frames"][0, f]) for f in range(4))
    with pytest.raises(ValueError, match="valid modes"):
        ClipConfig(mode="frames")


def test_frame_mode_keeps_one_frame_per_video_unless_asked_for_each_draw(dataset):
    """The papers' Ex-YT-F data set holds one frame per video (VIVI §4): every draw of a video gives
    the same frame, chosen by the seed; ``each_draw`` gives the video's other frames too."""
    def frames_drawn(choice, seed, index):
        clips = VideoClipDataset(dataset, ClipConfig(shots=1, frames=2, mode="frame", frame_choice=choice))
        clips.seed = seed
        return {int(clips[(index, draw)]["frame_index"][0, 0]) for draw in range(40)}, clips.videos[index]

    for index in range(3):
        fixed, video = frames_drawn("fixed", 0, index)
        assert len(fixed) == 1
        each, _ = frames_drawn("each_draw", 0, index)
        assert len(each) > 1 and each <= set(range(video.num_frames))
    # the seed picks the frame: over a few seeds a video's fixed frame changes
    assert len({next(iter(frames_drawn("fixed", seed, 0)[0])) for seed in range(8)}) > 1
    # the same frames whatever the number of workers (the choice is made from the key, not the process)
    config = ClipConfig(shots=1, frames=2, mode="frame")
    a = _batches(make_loader(dataset, config, batch_size=2, workers=0, seed=3), 3)
    b = _batches(make_loader(dataset, config, batch_size=2, workers=2, seed=3), 3)
    assert all(torch.equal(x["frame_index"], y["frame_index"]) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="valid: fixed, each_draw"):
        ClipConfig(frame_choice="random")


def test_seeded_and_independent_of_worker_count(dataset):
    config = ClipConfig(shots=2, frames=2)
    a = _batches(make_loader(dataset, config, batch_size=2, workers=0, seed=3), 4)
    b = _batches(make_loader(dataset, config, batch_size=2, workers=2, seed=3), 4)
    c = _batches(make_loader(dataset, config, batch_size=2, workers=0, seed=4), 4)
    for x, y in zip(a, b):
        assert all(torch.equal(x[key], y[key]) for key in x)
    assert any(not torch.equal(x["frame_index"], z["frame_index"]) or not torch.equal(x["video"], z["video"])
               for x, z in zip(a, c))


def test_resume_continues_the_stream(dataset):
    config = ClipConfig(shots=1, frames=2)
    full = _batches(make_loader(dataset, config, batch_size=2, workers=0, seed=1), 7)
    resumed = _batches(make_loader(dataset, config, batch_size=2, workers=0, seed=1, start_batch=4), 3)
    for x, y in zip(full[4:], resumed):
        assert all(torch.equal(x[key], y[key]) for key in x)


def test_two_ranks_two_workers_see_every_video_once(dataset):
    config = ClipConfig(shots=1, frames=1)
    n = len(VideoClipDataset(dataset, config))
    seen = []
    for rank in range(2):
        loader = make_loader(dataset, config, batch_size=1, workers=2, infinite=False, rank=rank, world_size=2)
        assert len(loader) == len(loader.sampler)
        seen += [int(b["video"]) for b in loader]
    assert sorted(seen) == list(range(n))


def test_infinite_sampler_ranks_are_disjoint_within_an_epoch():
    n, world = 11, 3
    streams = [VideoSampler(n, seed=0, rank=r, world_size=world) for r in range(world)]
    draws = [[next(it) for _ in range(8)] for it in map(iter, streams)]
    positions = sorted(p for stream in draws for _, p in stream)
    assert positions == list(range(24))
    epoch0 = [v for stream in draws for v, p in stream if p < n]
    assert sorted(epoch0) == list(range(n))


def test_boxes_are_read_and_follow_the_crop(dataset):
    from vivi.data import Detections
    video = VideoDataset(dataset).videos[0]
    box = [0.25, 0.25, 0.5, 0.75, 3, 0.9]
    corner = [0.0, 0.0, 0.1, 0.1, 1, 0.95]
    folder = dataset / "detections" / "unit"
    folder.mkdir(parents=True)
    (folder / "detector.json").write_text(json.dumps({"detector": "unit", "coords": "xyxy_normalized",
                                                      "class_names": [str(i) for i in range(5)]}))
    (folder / "shard-000000.json").write_text(json.dumps({"videos": {video.key: [[box, corner]] * video.num_frames}}))
    try:
        # detections for video 0 only (a `vivi detect` that stopped early): the loader says so
        with pytest.raises(ValueError, match=r"cover 1 of its \d+ videos .* `vivi detect"):
            VideoClipDataset(dataset, ClipConfig(shots=1, frames=2, size=32, detector="unit"))
        from vivi.data.inspect import dataset_stats, format_stats
        assert "incomplete: these detections cover 1 of the" in format_stats(dataset_stats(dataset))
        by_shard = {}                                # the other videos' (empty) boxes, each in its shard's file
        for v in VideoDataset(dataset).videos:
            by_shard.setdefault(Path(v.shard).stem, {})[v.key] = [[]] * v.num_frames
        by_shard["shard-000000"][video.key] = [[box, corner]] * video.num_frames
        for shard, videos in by_shard.items():
            (folder / f"{shard}.json").write_text(json.dumps({"videos": videos}))
        clip = VideoClipDataset(dataset, ClipConfig(shots=1, frames=2, size=32, detector="unit"))[(0, 0)]
        assert clip["frames"].shape[-2:] == (32, 32)
        assert clip["box_labels"][0, 0].tolist() == [1, 3, -1, -1, -1]      # highest score first
        np.testing.assert_allclose(clip["boxes"][0, 0, 1].numpy(), box[:4], atol=1e-6)
        with pytest.raises(FileNotFoundError, match="available: unit"):
            VideoClipDataset(dataset, ClipConfig(shots=1, detector="other"))
        # a centre crop of the middle half in x: boxes are mapped into it, a box centred outside is dropped
        detections = load_detections(dataset, "unit")
        assert isinstance(detections, Detections) and detections.covered.all()
        out = detections.boxes(0, [[0]], (0.25, 0.0, 0.75, 1.0), max_boxes=3)
        assert out["box_labels"][0, 0].tolist() == [3, -1, -1]
        np.testing.assert_allclose(out["boxes"][0, 0, 0].numpy(), [0.0, 0.25, 0.5, 0.75], atol=1e-6)
    finally:
        shutil.rmtree(dataset / "detections")


# ---------------------------------------------------------------- damaged data


def _copy(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy)
    return copy


def test_a_truncated_shard_is_named_and_training_refuses_unless_allowed(dataset, tmp_path):
    """A shard tar cut short (a copy that stopped, a full disk) is not complete: the training
    loader refuses the dataset naming that shard instead of training on fewer videos in silence;
    ``allow_incomplete`` trains on the complete ones (catches the silent drop)."""
    copy = _copy(dataset, tmp_path)
    tar = copy / "shards" / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    (copy / "index.bin").unlink()
    config = ClipConfig(shots=1, frames=2)
    with pytest.raises(ValueError, match=r"1 of the 3 shards .* \(shard-000001.tar\).*data.allow_incomplete=true"):
        make_loader(copy, config, batch_size=2, workers=0)
    loader = make_loader(copy, replace(config, allow_incomplete=True), batch_size=2, workers=0)
    assert len(loader.dataset.dataset) == len(VideoClipDataset(dataset, config).dataset) - 2


def test_an_undecodable_frame_is_replaced_by_a_neighbour_and_counted(dataset, tmp_path, capfd):
    """A stored frame that no longer decodes does not stop training: the clip takes the nearest
    frame of the same shot instead, the sample counts one damaged frame, and stderr names the
    shard, video and frame once (catches the bare "not a decodable JPEG image" that stopped runs)."""
    copy = _copy(dataset, tmp_path)
    data = VideoClipDataset(copy, ClipConfig(shots=1, frames=2))
    video = data.videos[0]
    shot = max(range(len(video.shot_frames())), key=lambda s: len(video.shot_frames()[s]))
    frames = video.shot_frames()[shot]
    assert len(frames) >= 2
    damaged = frames[0]
    damage_frame(copy, int(data.rows[0]), damaged)
    data = VideoClipDataset(copy, ClipConfig(shots=1, frames=2))
    clip = next(c for c in (data[(0, draw)] for draw in range(200))
                if damaged in c["frame_index"].tolist()[0] and c["shots"].tolist() == [shot])
    assert int(clip["damaged"]) == 1
    order = clip["frame_index"].tolist()[0]
    at = order.index(damaged)
    neighbour = min((j for j, f in enumerate(order) if f != damaged), key=lambda j: (abs(order[j] - damaged), order[j]))
    assert torch.equal(clip["frames"][0, at], clip["frames"][0, neighbour])
    err = capfd.readouterr().err
    assert f"frame {damaged}" in err and video.key in err and video.shard in err
    assert err.count("not a decodable JPEG image") == 1
    clean = VideoClipDataset(dataset, ClipConfig(shots=1, frames=2))
    assert all(int(clean[(i, 0)]["damaged"]) == 0 for i in range(len(clean)))


def test_a_clip_without_one_decodable_frame_names_it():
    """No frame of a clip decodes: a DamagedFrame error naming the frame, not an image of zeros."""
    from vivi.data.clips import DamagedFrame, clip_tensors
    with pytest.raises(DamagedFrame, match="frame 4 of video 0 is not a decodable JPEG image"):
        clip_tensors(lambda frame: b"\x00" * 100, [0], [[4, 5]], 0, None)


def test_verify_finds_damaged_frames_and_incomplete_shards(dataset, tmp_path):
    """``verify_dataset`` decodes every stored frame and checks every planned shard: it names the
    one damaged frame and the one truncated shard, and the shards a repair must write again;
    an intact dataset has nothing to report."""
    from vivi.data.inspect import format_verification, verify_dataset
    clean = verify_dataset(dataset, progress=False)
    assert (clean["incomplete"], clean["damaged_frames"], clean["shards_to_repair"]) == ([], [], [])
    assert clean["frames"] == len(VideoDataset(dataset).index.frame_time_s)
    copy = _copy(dataset, tmp_path)
    video = VideoDataset(copy)[0]
    damage_frame(copy, 0, 1)
    tar = copy / "shards" / "shard-000002.tar"
    tar.write_bytes(tar.read_bytes()[:-512])
    (copy / "index.bin").unlink()
    result = verify_dataset(copy, progress=False)
    assert result["incomplete"] == ["shard-000002.tar"]
    assert result["damaged_frames"] == [{"shard": video.shard, "video": video.key, "frame": 1}]
    assert result["shards_to_repair"] == ["shard-000000.tar"]
    assert "--repair" in format_verification(result)


def test_a_damaged_detections_file_is_named(dataset, tmp_path):
    """A per-shard detections file that is not JSON stops the loader with its path and the fix
    (catches the bare "Expecting value: line 1 column 1" that named no file)."""
    from vivi.detect import build_detector, detect_dataset
    copy = _copy(dataset, tmp_path)
    detect_dataset(copy, build_detector("groundtruth"), progress=False)
    sidecar = copy / "detections" / "groundtruth" / "shard-000001.json"
    sidecar.write_text('{"videos": {"v00')
    (sidecar.parent / "index.bin").unlink()
    with pytest.raises(ValueError, match=r"shard-000001.json is damaged .* run the same `vivi detect` again"):
        load_detections(copy, "groundtruth")


def test_cli_verify_lists_the_damage_and_exits_1(dataset, tmp_path, capsys):
    """`vivi inspect DATA --verify`: exit status 0 and "0 not decodable" on an intact dataset, 1 with
    the damaged frame named and the repair command on a damaged one (scripts can act on it)."""
    from vivi.cli import main
    assert main(["inspect", str(dataset), "--verify"]) == 0
    assert "0 not decodable" in capsys.readouterr().out
    copy = _copy(dataset, tmp_path)
    video = VideoDataset(copy)[1]
    damage_frame(copy, 1, 0)
    assert main(["inspect", str(copy), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"damaged frame 0 of video {video.key} in {video.shard}" in out and "--repair" in out
