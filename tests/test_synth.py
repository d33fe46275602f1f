"""Tests of the synthetic video world (vivi.synth): determinism, real decodable videos, ground
truth that a colour-histogram cut detector and a box check confirm, and the task folders."""
import dataclasses
import json
import math
import signal
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vivi.ingest.cut_detector import detect_cuts
from vivi.synth import CLASS_NAMES, TASKS, WorldConfig, make_world
from vivi.synth.backgrounds import pattern, sample_background
from vivi.synth.downstream import TRAIN_SIZE, render_task_image, split_labels, task_scene
from vivi.synth.render import render
from vivi.synth.world import (
    TASK_DOMAIN,
    THEME_DOMAIN,
    VIDEO_DOMAIN,
    make_themes,
    plan_shots,
    rng_for,
    sample_cast,
    sample_object,
    sample_shot,
)

TINY = dict(videos=3, seconds=6.0, fps=10, size=64, seed=0, progress=False)
TEST_SIZE = 300
FRAME_KEYS = {"boxes", "class_ids", "class_names", "object_ids"}
VIDEO_KEYS = {"video", "file", "index", "seed", "fps", "num_frames", "width", "height", "theme",
              "shot_starts", "frames", "cast"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = make_world(out, workers=2, tasks=True, task_test_size=TEST_SIZE, **TINY)
    return out, summary


@pytest.fixture(scope="module")
def single_shot_world(tmp_path_factory):
    """Strong motion and lighting drift in one tracking shot per video (the background slides by
    at 2.5x the tracking speed); the generator's own within-shot
    check is switched off (max_shot_distance=1) so the detector is tested, not the redraws."""
    out = tmp_path_factory.mktemp("single")
    make_world(out, workers=2, tasks=False, shots=(1, 1), motion=2.5, lighting_drift=2.5,
               tracking=1.0, background_warp=1.0, max_shot_distance=1.0, **TINY)
    return out


def decode(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate
        frames = list(container.decode(stream))
    return frames, rate


def decoded_rgb(out: Path, index: int) -> np.ndarray:
    frames, _ = decode(out / "videos" / f"video_{index:05d}.mp4")
    return np.stack([f.to_ndarray(format="rgb24") for f in frames])


def truth(out: Path, index: int) -> dict:
    return json.loads((out / "videos" / f"video_{index:05d}.json").read_text())


# ---- determinism --------------------------------------------------------------------------------

def test_same_seed_gives_same_world_for_any_worker_count(world, tmp_path):
    out, _ = world
    make_world(tmp_path, workers=1, tasks=False, **TINY)
    for i in range(TINY["videos"]):
        assert truth(tmp_path, i) == truth(out, i)
        np.testing.assert_array_equal(decoded_rgb(tmp_path, i), decoded_rgb(out, i))
        name = f"videos/video_{i:05d}.mp4"
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()   # same PyAV build
    config = WorldConfig(**{k: v for k, v in TINY.items() if k != "progress"})
    for task_index in range(len(TASKS)):
        a = render_task_image(config, make_themes(config), task_index, "test", 7, 0)
        b = render_task_image(config, make_themes(config), task_index, "test", 7, 0)
        np.testing.assert_array_equal(a, b)


def test_other_seed_gives_other_world(world, tmp_path):
    out, _ = world
    make_world(tmp_path, workers=1, tasks=False, **{**TINY, "videos": 1, "seed": 1})
    assert truth(tmp_path, 0)["frames"] != truth(out, 0)["frames"]
    assert not np.array_equal(decoded_rgb(tmp_path, 0), decoded_rgb(out, 0))


# ---- videos and ground truth -------------------------------------------------------------------

def test_videos_decode_and_match_ground_truth(world):
    out, summary = world
    config = WorldConfig(**{k: v for k, v in TINY.items() if k != "progress"})
    world_json = json.loads((out / "world.json").read_text())
    assert world_json["classes"] == list(CLASS_NAMES) and len(CLASS_NAMES) >= 10
    assert world_json["config"]["seed"] == 0 and len(world_json["themes"]) == config.themes
    for i in range(TINY["videos"]):
        gt = truth(out, i)
        assert set(gt) == VIDEO_KEYS
        frames, rate = decode(out / "videos" / gt["file"])
        assert len(frames) == gt["num_frames"] == len(gt["frames"]) == config.frames_per_video
        assert rate == gt["fps"] == TINY["fps"]
        assert (frames[0].width, frames[0].height) == (gt["width"], gt["height"]) == (64, 64)
        assert frames[0].format.name == "yuv420p"
        starts = gt["shot_starts"]
        assert starts[0] == 0 and np.all(np.diff(starts + [gt["num_frames"]]) >= config.min_shot_frames)
        assert 0 <= gt["theme"] < config.themes
        for frame in gt["frames"]:
            assert set(frame) == FRAME_KEYS
            assert len(frame["boxes"]) == len(frame["class_ids"]) == len(frame["class_names"])
            assert len(frame["boxes"]) <= config.objects_per_shot[1]
            assert [CLASS_NAMES[c] for c in frame["class_ids"]] == frame["class_names"]
            theme_classes = world_json["themes"][gt["theme"]]["classes"]
            assert set(frame["class_ids"]) <= set(theme_classes)
            for x0, y0, x1, y1 in frame["boxes"]:
                assert 0 <= x0 < x1 <= gt["width"] and 0 <= y0 < y1 <= gt["height"]
    assert summary["unmet_setups"] == 0 and summary["boxes"] > 0


def test_detector_finds_ground_truth_cuts_exactly(world):
    out, summary = world
    assert summary["shots"] > TINY["videos"]            # there are cuts to find
    for i in range(TINY["videos"]):
        assert detect_cuts(decoded_rgb(out, i)) == truth(out, i)["shot_starts"]


def test_no_false_cuts_with_strong_motion_and_lighting_drift(single_shot_world):
    out = single_shot_world
    for i in range(TINY["videos"]):
        gt = truth(out, i)
        assert gt["shot_starts"] == [0]
        rgb = decoded_rgb(out, i)
        assert detect_cuts(rgb) == [0]
        # the motion and drift are real: the brightness swings and the objects travel
        brightness = rgb.reshape(len(rgb), -1).mean(1)
        assert brightness.max() - brightness.min() > 10
        centres = {}
        for frame in gt["frames"]:
            for object_id, (x0, y0, x1, y1) in zip(frame["object_ids"], frame["boxes"]):
                centres.setdefault(object_id, []).append(((x0 + x1) / 2, (y0 + y1) / 2))
        travel = max(np.ptp(np.array(c), axis=0).max() for c in centres.values())
        assert travel > 16                              # pixels, in a 64-pixel frame


def test_boxes_cover_the_pixels_of_their_object():
    """Render each frame with and without one object. What the object changes lies in its box
    (up to the anti-aliased fringe of thin parts), the box of the front-most object is tight
    around the changed pixels, and an object without a box changes next to nothing."""
    config = WorldConfig(size=64)
    themes = make_themes(config)
    checked = 0
    for video in range(6):
        rng = rng_for(123, VIDEO_DOMAIN, video)
        shot = sample_shot(rng, themes[video], config, 12)
        full = render(shot, config.size)
        for k in range(len(shot.objects)):
            without = dataclasses.replace(shot, objects=shot.objects[:k] + shot.objects[k + 1:])
            diff = np.abs(full.rgb.astype(int) - render(without, config.size).rgb).max(-1)
            for t in range(shot.num_frames):
                ys, xs = np.nonzero(diff[t] > 12)
                if not full.visible[k, t]:
                    assert len(xs) < 30
                    continue
                x0, y0, x1, y1 = full.boxes[k, t]
                inside = diff[t, max(0, y0 - 1):y1 + 1, max(0, x0 - 1):x1 + 1].sum()
                assert inside >= 0.97 * diff[t].sum()
                if k == len(shot.objects) - 1:           # front-most: nothing hides it
                    cy, cx = np.nonzero(diff[t] > 0)
                    assert x0 >= cx.min() - 1 and x1 <= cx.max() + 2 and y0 >= cy.min() - 1 and y1 <= cy.max() + 2
                    sy, sx = np.nonzero(diff[t] > 0.5 * diff[t].max())
                    assert sx.min() >= x0 - 1 and sx.max() < x1 + 1 and sy.min() >= y0 - 1 and sy.max() < y1 + 1
                checked += 1
    assert checked > 50


def test_objects_outside_the_frame_get_no_box():
    config = WorldConfig(size=64)
    rng = rng_for(5, VIDEO_DOMAIN, 0)
    shot = sample_shot(rng, make_themes(config)[0], config, 1)
    gone = sample_object(rng, 99, 0, np.ones((2, 3)), shot.camera, np.zeros(1), 0.0,
                         screen_center=(3.0, 0.0), screen_radius=0.3)
    edge = sample_object(rng, 98, 0, np.ones((2, 3)), shot.camera, np.zeros(1), 0.0,
                         screen_center=(1.0, 0.0), screen_radius=0.3)
    frames = render(dataclasses.replace(shot, objects=[gone, edge]), 64)
    assert not frames.visible[0, 0]
    assert frames.visible[1, 0] and frames.boxes[1, 0, 2] == 64        # clipped at the right edge


def test_shot_plans():
    config = WorldConfig(seconds=20, fps=10)
    for i in range(50):
        lengths = plan_shots(rng_for(0, VIDEO_DOMAIN, i), config)
        assert sum(lengths) == 200 and min(lengths) >= config.min_shot_frames
        assert config.shots[0] <= len(lengths) <= config.shots[1]
    assert plan_shots(rng_for(0, VIDEO_DOMAIN, 0), WorldConfig(seconds=2, fps=10)) == [20]


# ---- downstream tasks --------------------------------------------------------------------------

def test_task_folders(world):
    out, summary = world
    suite = json.loads((out / "tasks" / "suite.json").read_text())["tasks"]
    assert [t["name"] for t in suite] == [t.name for t in TASKS]
    assert {t["group"] for t in suite} == {"natural", "specialized", "structured"}
    assert summary["task_images"] == len(TASKS) * (TRAIN_SIZE + TEST_SIZE)
    expected = {"train800": 800, "val200": 200, "train800val200": 1000, "test": TEST_SIZE}
    for entry in suite:
        task_dir = out / "tasks" / entry["name"]
        info = json.loads((task_dir / "task.json").read_text())
        assert info["num_classes"] == len(info["class_names"]) == entry["num_classes"]
        lists = {}
        for split, count in expected.items():
            lines = (task_dir / f"{split}.txt").read_text().splitlines()
            assert len(lines) == count
            lists[split] = [(path, int(label)) for path, label in (line.split() for line in lines)]
        assert lists["train800"] + lists["val200"] == lists["train800val200"]
        assert not {p for p, _ in lists["train800val200"]} & {p for p, _ in lists["test"]}
        for split in ("train800", "test"):
            labels = {label for _, label in lists[split]}
            assert labels == set(range(info["num_classes"]))          # every class occurs
        for path, _ in lists["val200"][:5] + lists["test"][:5]:
            image = cv2.imread(str(task_dir / path))
            assert image is not None and image.shape == (64, 64, 3)


def test_task_images_are_held_out_from_the_videos():
    """Videos, themes and tasks draw from different seed domains, so no task image shares its
    random stream with any video (by construction; written into the JSON files as well)."""
    assert len({THEME_DOMAIN, VIDEO_DOMAIN, TASK_DOMAIN}) == 3
    video_keys = {(0, VIDEO_DOMAIN, i) for i in range(1000)}
    task_keys = {(0, TASK_DOMAIN, t, s, 1, i) for t in range(len(TASKS)) for s in range(2)
                 for i in range(1000)}
    assert not {k[:3] for k in task_keys} & video_keys


def test_count_task_label_matches_visible_objects():
    config = WorldConfig(size=64)
    themes = make_themes(config)
    task_index = [t.name for t in TASKS].index("count")
    labels = split_labels(0, task_index, "test", 60)
    for position, label in enumerate(labels):
        scene = task_scene(config, themes, task_index, "test", position, label)
        assert render(scene, 64).visible[:, 0].sum() == label + 1


def test_tracking_shots_slide_the_background_behind_the_objects():
    """With ``tracking`` the camera travels and the objects travel with it: between frames 3 s
    apart the background pixels change more than without, while the objects move on screen
    no more than without (their own wandering)."""
    def changes(tracking):
        config = WorldConfig(size=64, tracking=tracking)
        themes = make_themes(config)
        background, moved = [], []
        for shot_index in range(12):
            shot = sample_shot(rng_for(7, VIDEO_DOMAIN, shot_index), themes[shot_index], config, 31)
            frames = render(shot, config.size, slice(0, 31, 30))
            clear = np.ones((64, 64), bool)          # pixels no object covers in either frame
            for k in range(len(shot.objects)):
                for x0, y0, x1, y1 in frames.boxes[k]:
                    clear[y0:y1, x0:x1] = False
                if frames.visible[k].all():
                    centres = (frames.boxes[k, :, :2] + frames.boxes[k, :, 2:]) / 2
                    moved.append(np.abs(centres[1] - centres[0]).max())
            diff = np.abs(frames.rgb[1].astype(int) - frames.rgb[0]).mean(-1)
            background.append(diff[clear].mean())
        return np.mean(background), np.median(moved)

    still_bg, still_moved = changes(0.0)
    tracking_bg, tracking_moved = changes(1.0)
    assert tracking_bg > 1.3 * still_bg              # measured: 25 vs 15 grey levels
    assert tracking_moved <= still_moved + 3         # measured: 8 vs 7 pixels (median)


def test_tracking_share_makes_some_shots_tracking_shots(monkeypatch):
    """``tracking_share`` < 1 draws per shot whether it tracks (about that share of the shots
    do); without tracking it draws nothing, so such a world equals the one without the knob."""
    from vivi.synth import world
    tracking = []
    original = world.sample_camera
    monkeypatch.setattr(world, "sample_camera", lambda *a: tracking.append(a[3]) or original(*a))

    def shots(config, count):
        tracking.clear()
        themes = make_themes(config)
        made = [sample_shot(rng_for(3, VIDEO_DOMAIN, i), themes[i % len(themes)], config, 11) for i in range(count)]
        return made, list(tracking)

    _, half = shots(WorldConfig(size=64, tracking=1.0, tracking_share=0.5), 200)
    # 200 draws of Bernoulli(0.5): sd 0.035, so 0.4-0.6 is ~3 sd (the draws are seeded); a share
    # ignored (every shot or none tracking) fails
    assert set(half) == {0.0, 1.0} and 0.4 < np.mean(half) < 0.6
    _, every = shots(WorldConfig(size=64, tracking=1.0), 5)
    assert every == [1.0] * 5
    still, _ = shots(WorldConfig(size=64), 5)
    same, _ = shots(WorldConfig(size=64, tracking_share=0.5), 5)
    assert all(np.array_equal(a.camera.center, b.camera.center) and
               np.array_equal(a.objects[0].center, b.objects[0].center) for a, b in zip(still, same))
    with pytest.raises(ValueError, match="tracking_share"):
        WorldConfig(tracking_share=1.5)


def test_shots_share_only_classes_without_theme_background_and_palette():
    """With ``theme_background`` and ``theme_palette`` off, the shots of one video draw their own
    background family and palette (so they share only the theme's classes); with them on (the
    default) every shot keeps the theme's and draws nothing for them (pinned values below)."""
    config = WorldConfig(size=64, theme_background=False, theme_palette=False)
    theme = make_themes(config)[0]
    shots = [sample_shot(rng_for(3, VIDEO_DOMAIN, 0, i), theme, config, 11) for i in range(40)]
    assert len({s.background.family for s in shots}) > 4
    theme_colors = {tuple(np.round(c, 5)) for c in theme.palette}
    assert all(not {tuple(np.round(c, 5)) for c in s.background.colors} <= theme_colors for s in shots)
    assert {o.class_id for s in shots for o in s.objects} <= set(theme.classes)
    kept = [sample_shot(rng_for(3, VIDEO_DOMAIN, 0, i), theme, WorldConfig(size=64), 11) for i in range(5)]
    assert {s.background.family for s in kept} == {theme.background}
    assert all({tuple(np.round(c, 5)) for c in s.background.colors} <= theme_colors for s in kept)
    # a default world's shot is fixed by its seed: a draw added to the default path changes these
    assert kept[0].camera.center[0].tolist() == pytest.approx([-0.75130939, 2.22329855])
    assert kept[0].background.family == 7 and [o.class_id for o in kept[0].objects] == [3]


def test_background_warp_bends_the_pattern_and_keeps_the_rest():
    """``warp`` only adds a bending to the instance (the other draws are those of an unwarped
    instance, so worlds without it are unchanged); the warped pattern stays in [0, 1], differs
    from the unwarped one, and is no longer periodic across its stripes."""
    colors = np.array([[0.1, 0.2, 0.3], [0.8, 0.7, 0.6]], np.float32)
    plain = sample_background(np.random.default_rng(3), 1, colors)           # stripes
    bent = sample_background(np.random.default_rng(3), 1, colors, warp=1.0)
    assert plain.warp is None and bent.warp.shape == (2, 3)
    assert dataclasses.replace(bent, warp=None).frequency == plain.frequency
    assert np.array_equal(dataclasses.replace(bent, warp=None).shading, plain.shading)
    x, y = np.meshgrid(np.linspace(-4, 4, 200, dtype=np.float32), np.linspace(-4, 4, 200, dtype=np.float32))
    p, q = pattern(plain, x, y), pattern(bent, x, y)
    assert 0 <= q.min() and q.max() <= 1 and np.abs(p - q).mean() > 0.05
    # one period across the stripes: the unbent pattern repeats exactly, the bent one does not
    step = np.array([math.cos(plain.angle), math.sin(plain.angle)], np.float32) / plain.frequency
    assert np.abs(pattern(plain, x + step[0], y + step[1]) - p).max() < 1e-3
    assert np.abs(pattern(bent, x + step[0], y + step[1]) - q).mean() > 0.02


def test_world_overrides_parse_and_check_values():
    from vivi.synth import world_overrides
    parsed = world_overrides(["tracking=1", "background_warp=0.5", "shots=[1, 1]", "object_textures=true"])
    assert parsed == {"tracking": 1.0, "background_warp": 0.5, "shots": (1, 1), "object_textures": True}
    assert isinstance(parsed["tracking"], float) and WorldConfig(**parsed).shots == (1, 1)
    for bad, message in [("trackin=1", "not a world setting; valid: .*tracking"), ("tracking", "KEY=VALUE"),
                         ("seed=3", "its own option"), ("shots=[1]", "shots expects 2 values"),
                         ("shots=[1, 1.5]", r"shots\[1\] expects an integer"), ("crf=1.5", "an integer"),
                         ("motion=fast", "motion expects a number"), ("object_textures=1", "true/false")]:
        with pytest.raises((ValueError, TypeError), match=message):
            world_overrides([bad])


def test_synth_cli_takes_world_settings(tmp_path):
    from vivi.cli import main
    out = tmp_path / "w"
    assert main(["synth", str(out), "--videos", "1", "--seconds", "3", "--workers", "1", "--no-tasks",
                 "--world", "tracking=1", "background_warp=1"]) == 0
    config = json.loads((out / "world.json").read_text())["config"]
    assert config["tracking"] == 1.0 and config["background_warp"] == 1.0 and config["videos"] == 1
    assert main(["synth", str(tmp_path / "bad"), "--videos", "1", "--world", "traking=1"]) == 2
    assert not (tmp_path / "bad").exists()


def test_cast_keeps_count_classes_and_sizes_across_the_shots_of_a_video(tmp_path):
    """With ``cast`` every shot of a video shows the video's objects: the same number and classes
    in every shot, each near its own size (log sd ``cast_size_spread``), at new places; with
    ``cast=False`` shots draw their own objects."""
    config = WorldConfig(size=64, cast=True, objects_per_shot=(1, 3))
    theme = make_themes(config)[0]
    counts, sizes = set(), []
    for video in range(6):
        rng = rng_for(3, VIDEO_DOMAIN, video)
        cast = sample_cast(rng, theme, config)
        shots = [sample_shot(rng, theme, config, 11, cast=cast) for _ in range(5)]
        for shot in shots:
            assert [o.class_id for o in shot.objects] == [m.class_id for m in cast]
            ratio = [o.radius[0] * float(shot.camera.zoom[0]) / m.radius for o, m in zip(shot.objects, cast)]
            sizes.extend(np.log(ratio))
        first = [(shot.objects[0].center[0] - shot.camera.center[0]) * shot.camera.zoom[0] for shot in shots]
        assert len({tuple(np.round(c, 3)) for c in first}) == 5          # new places in every shot
        counts.add(len(cast))
    assert counts == {1, 2, 3}
    # log sizes ~ N(0, 0.15): sample sd and mean within 4 standard errors (sizes stay below the
    # clamp at radius 1: 0.5 * exp(4 * 0.15) < 1); a spread ignored (0) or doubled fails
    n, spread = len(sizes), WorldConfig().cast_size_spread
    assert n > 50
    assert abs(np.std(sizes) - spread) < 4 * spread / math.sqrt(2 * (n - 1))
    assert abs(np.mean(sizes)) < 4 * spread / math.sqrt(n)
    # a whole video: the ground truth records the cast, and every frame's objects are cast members
    from vivi.synth.video import make_video
    make_video(tmp_path, 0, WorldConfig(size=32, seconds=6, cast=True), make_themes(WorldConfig(size=32, cast=True)))
    truth = json.loads((tmp_path / "video_00000.json").read_text())
    names = sorted(m["class_name"] for m in truth["cast"])
    assert all(sorted(f["class_names"]) == names for f in truth["frames"] if len(f["boxes"]) == len(names))
    assert WorldConfig().cast                     # on by default (docs/synth.md)
    make_video(tmp_path, 1, WorldConfig(size=32, seconds=6, cast=False), make_themes(WorldConfig(size=32)))
    assert "cast" not in json.loads((tmp_path / "video_00001.json").read_text())
    with pytest.raises(ValueError, match="cast_size_spread"):
        WorldConfig(cast_size_spread=-1)


def test_settings_out_of_range_and_another_world_in_the_folder_are_refused(tmp_path):
    for bad in (dict(videos=0), dict(seconds=0.0), dict(fps=0), dict(crf=-5), dict(preset="bogus"),
                dict(themes=0), dict(objects_per_shot=(9, 9))):
        with pytest.raises(ValueError):
            WorldConfig(**bad)
    make_world(tmp_path / "w", videos=2, seconds=2.0, tasks=False, progress=False, workers=1)
    before = sorted(p.name for p in (tmp_path / "w" / "videos").iterdir())
    with pytest.raises(ValueError, match="holds a world made with other settings.*seed"):
        make_world(tmp_path / "w", videos=2, seconds=2.0, seed=1, tasks=False, progress=False, workers=1)
    make_world(tmp_path / "w", videos=2, seconds=2.0, tasks=False, progress=False, workers=1)   # the same: rewritten
    assert sorted(p.name for p in (tmp_path / "w" / "videos").iterdir()) == before


def test_ctrl_c_stops_a_parallel_synth_at_once(tmp_path):
    """The workers leave Ctrl-C to the parent, which ends them at once (a close + join would wait
    forever for workers that took the Ctrl-C too)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "w"
    # its own process group, which gets the Ctrl-C as a terminal's foreground group does
    process = subprocess.Popen([sys.executable, "-m", "vivi.cli", "synth", str(out), "--videos", "400",
                                "--workers", "2", "--no-tasks"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while not list(out.glob("videos/*.mp4")):
        assert time.time() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130 and "interrupted" in err and "Traceback" not in err, err


@pytest.mark.parametrize("setting", [{"seconds": float("inf")}, {"seconds": float("nan")},
                                     {"tracking_share": float("nan")}, {"motion": float("inf")}])
def test_numbers_that_are_not_finite_are_named_before_anything_is_written(tmp_path, setting):
    """`vivi synth --seconds inf` crashed with OverflowError after writing world.json, and nan
    passed every range check: every number of the world is checked finite first."""
    from vivi.synth import make_world
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name}=(inf|nan) is not a finite number"):
        make_world(tmp_path / "w", videos=1, tasks=False, progress=False, **setting)
    assert not (tmp_path / "w").exists()


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action, which a shell's background job (a test suite started
    with `make test &`) inherits as ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
