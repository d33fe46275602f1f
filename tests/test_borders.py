"""Letterbox and pillarbox bars: the cut detector looks inside them, stored frames leave them out.

The synthetic world's videos are re-encoded with black bars (what a 4:3 or 2.39:1 film shown in
another frame looks like) and must keep exactly the cuts of the world's ground truth, which the
same videos without bars give."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import write_video

from vivi.ingest import IngestConfig, SamplingConfig, decode_video, ingest
from vivi.ingest.decode import decode_jpeg


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.array([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _with_bars(frames: np.ndarray, fraction: float, axis: int) -> tuple[np.ndarray, int]:
    """``frames`` inside a larger black frame whose bars, above and below (axis 0) or left and
    right (axis 1), are each ``fraction`` of its height or width; returns the frames and the bar's
    size in pixels."""
    size = frames.shape[1 + axis]
    bar = round(size * fraction / (1 - 2 * fraction)) // 2 * 2
    pad = [(0, 0)] * 4
    pad[1 + axis] = (bar, bar)
    return np.pad(frames, pad), bar


def _truth(world: Path) -> dict[Path, list[int]]:
    return {path.with_suffix(".mp4"): json.loads(path.read_text())["shot_starts"]
            for path in sorted((world / "videos").glob("*.json"))}


@pytest.mark.parametrize("fraction, axis", [(0.0, 0), (0.1, 0), (0.25, 0), (0.1, 1), (0.25, 1)])
def test_barred_world_videos_keep_exactly_their_cuts(world, tmp_path, fraction, axis):
    """Bars of 10 and 25 % of the height (letterbox) or width (pillarbox) on each side: the same
    shot starts as the world's ground truth (which the unbarred videos give, fraction 0). A
    detector whose histograms count the bars loses cuts at 25 % (half the frame is the same black
    on both sides of a cut), and the crop must be exactly the bars: the stored frames are the
    picture's size (64 x 64), not the barred frame's."""
    for path, truth in _truth(world).items():
        frames, bar = _with_bars(_frames(path), fraction, axis)
        video = decode_video(write_video(tmp_path / path.name, frames))
        assert video.shot_starts == truth, path.name
        if fraction:
            x, y = (bar, 0) if axis else (0, bar)
            assert video.crop == (x, y, 64, 64), path.name
        else:
            assert video.crop is None
        assert video.frame_size == (64, 64)


def _squeezed(frames: np.ndarray, width: int, height: int, frame: int) -> np.ndarray:
    """``frames`` resized to ``width`` x ``height``, centred in black ``frame`` x ``frame`` frames."""
    out = np.zeros((len(frames), frame, frame, 3), np.uint8)
    top, left = (frame - height) // 2, (frame - width) // 2
    for k, picture in enumerate(frames):
        out[k, top:top + height, left:left + width] = cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    return out


def _montage(world: Path, layouts: list[str], frame: int = 96, length: int = 12) -> tuple[np.ndarray, list[int]]:
    """Clips of ``length`` frames from inside consecutive shots of the world's videos (the shots
    of one video share its theme's colours: their cuts are the hardest), each laid out as
    ``layouts`` says ("letter": 96 x 40 between bars of 28 rows, "pillar": 40 x 96 between bars of
    28 columns, "full"), in one ``frame`` x ``frame`` video; returns it and its shot starts."""
    shots = [(path, start) for path, starts in _truth(world).items()
             for start, end in zip(starts, starts[1:] + [80]) if end - start > length]
    clips = []
    for (path, start), layout in zip(shots, layouts):
        width, height = {"letter": (frame, 40), "pillar": (40, frame), "full": (frame, frame)}[layout]
        clips.append(_squeezed(_frames(path)[start + 1:start + 1 + length], width, height, frame))
    assert len(clips) == len(layouts)
    return np.concatenate(clips), [length * k for k in range(len(layouts))]


def test_montage_of_letterboxed_pillarboxed_and_full_frame_clips_finds_every_cut(world, tmp_path):
    """Every change of layout (letterbox <-> pillarbox, bars <-> full frame) and every cut between
    two clips with the same bars is found, and nothing else. Histograms that count the bars miss
    the cuts between letterbox and pillarbox (58 % of both frames is the same black); comparing
    each frame only inside its own bars would not see the picture the two frames share. The
    stored frames are not cropped: the first clips kept already disagree on where the bars are."""
    layouts = ["letter", "pillar", "letter", "letter", "full", "pillar", "pillar", "letter", "full", "pillar"]
    frames, starts = _montage(world, layouts)
    video = decode_video(write_video(tmp_path / "montage.mp4", frames))
    assert video.shot_starts == starts
    assert video.crop is None and video.frame_size == (96, 96)


def _cuts_by_rule(frames: list[av.VideoFrame]) -> tuple[list[float], list[int]]:
    """Every frame's histogram distance to the one before and the shot starts, written out frame
    by frame from the rules: each frame's bars (grid_bars of that frame alone), its steady bars
    (those it shares with the frame before), the two frames compared without the steady bars of
    either (none if that leaves nothing), the cut rule."""
    from vivi.ingest.borders import grid_bars, inside
    from vivi.ingest.cut_detector import ColourSamples, CutDetectorConfig, histogram_distance, sample_histogram
    config, reader = CutDetectorConfig(), ColourSamples()
    grid = [reader.one(frame) for frame in frames]
    bars = [(0, 0, 0, 0)] * 2                            # the frames before the first have none
    for samples in grid:
        found = grid_bars(samples[None, ..., 0])
        bars.append((0, 0, 0, 0) if found is None else tuple(int(v) for v in found[0]))
    steady = [None] + [tuple(map(min, a, b)) for a, b in zip(bars[1:], bars[:-1])]
    distances, starts = [], [0]
    for t in range(1, len(grid)):
        region = tuple(map(max, steady[t + 1], steady[t + 2]))
        rows, cols = grid[t].shape[:2]
        if region[0] + region[1] >= rows or region[2] + region[3] >= cols:
            region = (0, 0, 0, 0)
        distances.append(histogram_distance(sample_histogram(inside(grid[t], region)),
                                            sample_histogram(inside(grid[t - 1], region))))
        if config.is_cut(distances[-1], t - starts[-1]):
            starts.append(t)
    return distances, starts


def test_detector_with_bars_equals_the_rule_frame_by_frame(world, tmp_path):
    """The batched detector works out a frame's exact bars only for frames that may start a shot,
    and rules the others out with a bound from four samples a batch: its cuts, and the every-frame
    distances of ``vivi inspect --cuts``, must be those of the rule applied frame by frame, on a
    montage whose bars the encoder's ringing makes flicker at their edge, cut into by black frames
    and a fade, with cuts on and off batch boundaries."""
    from vivi.ingest.cut_detector import ColourSamples, ExactDistances, detect_cuts
    layouts = ["letter", "letter", "pillar", "full", "letter", "letter", "pillar", "pillar", "letter", "full"]
    frames, _ = _montage(world, layouts)
    frames[40] = 0                                                       # a black frame
    frames[90:100] = (frames[90:100] * np.linspace(1, 0.05, 10)[:, None, None, None]).astype(np.uint8)  # a fade
    with av.open(str(write_video(tmp_path / "montage.mp4", frames))) as container:
        decoded = list(container.decode(video=0))
    distances, starts = _cuts_by_rule(decoded)
    assert len(starts) >= 8
    assert detect_cuts(decoded) == starts
    assert decode_video(tmp_path / "montage.mp4").shot_starts == starts
    exact, reader, found = ExactDistances(), ColourSamples(), []
    for first in range(0, len(decoded), 7):                             # batches of 7: edges elsewhere
        for _, run in reader(decoded[first:first + 7]):
            found += exact.push(run)
    assert found[0] == (None, False)
    np.testing.assert_allclose([d for d, _ in found[1:]], distances, atol=1e-6)
    assert [t for t, (_, cut) in enumerate(found) if cut] == starts[1:]


def _night(frames: int = 60, height: int = 64, width: int = 96, cut: int = 30) -> np.ndarray:
    """Two night shots: dark sensor noise (luma about 16-24: the rows above and below the lit
    windows stay at or below cropdetect's black limit in every frame) around a row of lit windows
    across the whole width, and a dim lamp moving across; bluish, then orange."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    windows = np.where((np.abs(yy - height // 2) < 4) & (xx % 8 < 5), 50, 0)
    out = []
    for t in range(frames):
        second = t >= cut
        lamp = 40 * np.exp(-((xx - (10 + 1.5 * t) % width) ** 2 + (yy - height * (0.7 if second else 0.3)) ** 2) / 30)
        grey = rng.integers(0, 7, (height, width)) + lamp + windows
        tint = np.array([1.4, 0.9, 0.5] if second else [0.6, 0.8, 1.4])
        out.append(np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8))
    return np.array(out)


def test_dark_night_scene_is_neither_cropped_nor_cut(tmp_path):
    """Rows of a night scene are as dark as bars (a sixth of them at the top and at the bottom
    below the limit in every frame) but not flat and not the same from frame to frame: nothing is
    cropped (a dark-rows rule alone, cropdetect's, would crop them), and the two shots are found
    with no extra cut."""
    video = decode_video(write_video(tmp_path / "night.mp4", _night()))
    assert video.shot_starts == [0, 30]
    assert video.crop is None and video.frame_size == (64, 96)


def test_bars_of_a_long_video_are_judged_over_all_of_it(world, tmp_path):
    """A video longer than a minute that starts letterboxed and then shows full frames: the key
    frames looked at across the video show picture where the first seconds have bars, so its
    frames are not cropped (cropping them to the first clip's picture would cut off the top and
    bottom of most of the video)."""
    path = sorted((world / "videos").glob("*.mp4"))[0]
    picture = _frames(path)
    barred, _ = _with_bars(picture, 0.25, 0)
    full = np.stack([cv2.resize(f, (64, 128), interpolation=cv2.INTER_AREA) for f in picture])
    frames = np.concatenate([barred] + [full] * 7)                          # 8 s with bars, 56 s without
    video = decode_video(write_video(tmp_path / "long.mp4", frames, key_every=40))
    assert video.duration_s > 60
    assert video.crop is None and video.frame_size == (128, 64)


def _stored(root: Path) -> dict[str, tuple[dict, list[np.ndarray]]]:
    """{source file name: (record, decoded stored frames)} of a one-shard dataset."""
    shard_index = json.loads((root / "shards" / "shard-000000.json").read_text())
    out = {}
    with tarfile.open(root / "shards" / "shard-000000.tar") as tar:
        for record in shard_index["videos"]:
            frames = [decode_jpeg(tar.extractfile(f"{record['key']}.f{i:04d}.jpg").read())
                      for i in range(len(record["frame_times_s"]))]
            out[Path(record["source"]).name] = (record, frames)
    return out


def test_stored_frames_leave_the_bars_out_unless_kept(world, tmp_path):
    """Ingest stores a letterboxed video's frames without its bars and records the crop; a video
    without bars has no ``crop`` in its record (old datasets read the same); with
    ``--keep-borders`` the frames keep their bars and no crop is recorded."""
    from vivi.cli import main
    path = sorted((world / "videos").glob("*.mp4"))[1]
    videos = tmp_path / "videos"
    videos.mkdir()
    frames, bar = _with_bars(_frames(path), 0.25, 0)
    write_video(videos / "letterboxed.mp4", frames)
    write_video(videos / "plain.mp4", _frames(path))
    ingest([videos], tmp_path / "cropped", IngestConfig(sampling=SamplingConfig(short_side=64)), workers=1,
           progress=False)
    cropped = _stored(tmp_path / "cropped")
    record, stored = cropped["letterboxed.mp4"]
    assert record["crop"] == [0, bar, 64, 64] and record["frame_size"] == [64, 64]
    assert {f.shape for f in stored} == {(64, 64, 3)}
    assert min(f[:2].mean() for f in stored) > 30           # the top rows are picture, not bar
    plain_record, plain = cropped["plain.mp4"]
    assert "crop" not in plain_record and plain_record["frame_size"] == [64, 64]
    assert record["shot_starts"] == plain_record["shot_starts"] and len(stored) == len(plain)
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(stored, plain)) < 8   # the same picture

    assert main(["ingest", str(videos), "--out", str(tmp_path / "kept"), "--workers", "1", "--short-side", "64",
                 "--keep-borders"]) in (0, None)
    record, stored = _stored(tmp_path / "kept")["letterboxed.mp4"]
    assert "crop" not in record and record["frame_size"] == [128, 64]
    assert {f.shape for f in stored} == {(128, 64, 3)}
    assert max(f[:bar].mean() for f in stored) < 8          # the bars are there (black, some JPEG ringing)
    assert json.loads((tmp_path / "kept" / "plan.json").read_text())["config"]["sampling"]["keep_borders"] is True


def test_a_dataset_planned_before_the_setting_resumes_only_keeping_the_bars(world, tmp_path):
    """A plan.json without ``keep_borders`` was written when frames kept their bars: resuming it
    with the default (bars cut off) would mix cropped and uncropped frames and is refused; with
    ``keep_borders`` it resumes."""
    videos = sorted((world / "videos").glob("*.mp4"))[:1]
    kept = IngestConfig(sampling=SamplingConfig(short_side=64, keep_borders=True))
    ingest(videos, tmp_path / "data", kept, workers=1, progress=False)
    plan = json.loads((tmp_path / "data" / "plan.json").read_text())
    del plan["config"]["sampling"]["keep_borders"]
    (tmp_path / "data" / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ValueError, match="other settings"):
        ingest(videos, tmp_path / "data", IngestConfig(sampling=SamplingConfig(short_side=64)), workers=1,
               progress=False)
    assert ingest(videos, tmp_path / "data", kept, workers=1, progress=False).shards_skipped == 1


# The pieces of the border pass, against plain definitions of what they find.

LIMIT, FLAT = 24, 6       # borders.LIMIT, borders.FLAT, restated: the tests spell out the rules


def _grid_batches(seed: int = 0):
    """(rows, cols, batches of (n, rows, cols) luma) like a letterboxed video's detector samples:
    bars of constant, slightly uneven black; their innermost line now and then lit by the picture
    or unevenly grey (ringing at the bar's edge: one frame's bars one line shorter); the picture's
    first row black (one line longer); a cut to pillarbox bars; a black frame; a fade; the bars
    ending. Each batch holds 1 to 32 frames."""
    rng = np.random.default_rng(seed)
    rows, cols = 40, 32
    black = (12 + rng.integers(0, 4, (rows, cols))).astype(np.uint8)
    layouts = [(5, 5, 0, 0)] * 24 + [(0, 0, 6, 6)] * 6 + [(0, 0, 0, 0)] * 4
    batches = []
    for layout in layouts:
        top, bottom, left, right = layout
        frames = rng.integers(40, 256, (int(rng.integers(1, 33)), rows, cols)).astype(np.uint8)
        for frame in frames:
            frame[:top], frame[rows - bottom:] = black[:top], black[rows - bottom:]
            frame[:, :left], frame[:, cols - right:] = black[:, :left], black[:, cols - right:]
            if top and rng.random() < 0.01:
                frame[top - 1] = rng.integers(40, 256, cols)           # the edge line lit
            elif top and rng.random() < 0.01:
                frame[top - 1, ::2] = black[top - 1].min() + 8          # ... or unevenly grey (still dark)
            elif top and rng.random() < 0.01:
                frame[top] = 0                                         # the picture's first row black
        if rng.random() < 0.15:
            frames[int(rng.integers(len(frames)))] = rng.choice([0, 16])    # a black frame (full or limited range)
        if rng.random() < 0.15:
            frames[-1] = frames[-1] // 8                               # a fade: dark, textured
        batches.append(frames)
    return rows, cols, batches


def test_grid_bars_batch_after_batch_are_each_frame_s_bars_looked_at_whole():
    """GridBars looks at most batches only where the last batch's bars were (four samples that
    bound them, or a band along the edges) and works out a frame's exact bars only when asked; a
    wrong shortcut would give some frame other bars than looking at all its lines does
    (grid_bars), or a bound below them: bars that flicker at their edge, a cut to other bars, a
    black frame and the bars' end must all come out as grid_bars says. The batches pass through
    one reused array, as the detector's samples do (given whole or as their luma), and the two
    frames before a batch are asked for only in the next batch."""
    from vivi.ingest.borders import GridBars, _Later, grid_bars
    rng = np.random.default_rng(0)
    for seed in range(8):
        rows, cols, batches = _grid_batches(seed)
        bars, bounded = GridBars(), 0
        buffer = np.zeros((32, rows, cols, 4), np.uint8)      # Y, Cb, Cr, 0: the detector's samples
        seen = [(0, 0, 0, 0)] * 2                             # every frame's bars so far, two before the first
        for luma in batches:
            count = len(luma)
            expected = grid_bars(luma)
            rows_expected = [(0, 0, 0, 0)] * count if expected is None else [tuple(b) for b in expected.tolist()]
            buffer[:count, ..., 0] = luma
            found = bars(buffer[:count] if count % 2 else buffer[:count, ..., 0])     # samples, or their luma
            frames = seen[-2:] + rows_expected                 # frames -2 to count - 1
            if found is None:
                assert not any(map(any, frames[1:]))
            else:
                assert all(b <= bound for frame in frames[1:] for b, bound in zip(frame, found.bound))
                # a frame's region needs the bars of it and the two frames before it, worked out
                # together (with those of the batch before for its first two frames)
                k = int(rng.integers(count))
                if rng.random() < 0.5:
                    assert found.around(k) == tuple(frames[k:k + 3])
                asked = [k for k in range(-2, count) if rng.random() < 0.5]
                assert [found[k] for k in asked] == [frames[k + 2] for k in asked]
                assert found.around(k) == tuple(frames[k:k + 3])
                bounded += isinstance(found._rows, _Later)
            buffer[:count] = 255                               # the next batch overwrites the samples
            seen += rows_expected
        assert bounded > 0                       # the bounded check was laid out and used


def test_the_bars_around_a_batch_s_first_frames_are_each_frame_s_own():
    """A frame's region needs the bars of it and of the two frames before it; for a batch's
    first two frames, those come from the last frames of the batch before (a kept copy) and are
    worked out in one go with the batch's. Every frame here has bars of its own height, so a
    frame given another's bars shows."""
    from vivi.ingest.borders import GridBars, grid_bars
    rng = np.random.default_rng(3)
    rows, cols = 40, 32
    bars, joined = GridBars(), 0
    buffer = np.zeros((8, rows, cols, 4), np.uint8)
    seen = [(0, 0, 0, 0)] * 2
    for batch in range(40):
        count = int(rng.integers(1, 9))
        luma = rng.integers(60, 256, (count, rows, cols)).astype(np.uint8)
        tops, bottoms = rng.integers(1, 6, count), rng.integers(1, 6, count)
        if batch == 0:
            tops[0] = bottoms[0] = 5             # the bound: rows 5 and 34 are picture in every frame
        for frame, top, bottom in zip(luma, tops, bottoms):
            frame[:top], frame[rows - bottom:] = 16, 16
        expected = [tuple(b) for b in grid_bars(luma).tolist()]
        buffer[:count, ..., 0] = luma
        found = bars(buffer[:count])
        frames = seen[-2:] + expected
        k = int(rng.integers(min(count, 2)))
        assert found.around(k) == tuple(frames[k:k + 3])
        assert [found[j] for j in range(-2, count)] == frames
        joined += found._rows._before is not None
        buffer[:count] = 255                     # the next batch overwrites the samples
        seen += expected
    assert joined > 30


def _regions_by_rule(frames: list[tuple[int, ...]], rows: int, cols: int):
    """Each frame's region straight from the rule (``frames``: the bars of frames -2 and -1, then
    the batch's): without the steady bars (those shared with the frame before) of it and of the
    frame before it, none if that leaves nothing."""
    steady = [None] + [tuple(map(min, a, b)) for a, b in zip(frames[1:], frames[:-1])]
    out = []
    for k in range(2, len(frames)):
        both = tuple(map(max, steady[k - 1], steady[k]))
        out.append((0, 0, 0, 0) if both[0] + both[1] >= rows or both[2] + both[3] >= cols else both)
    return out


def test_regions_worked_out_when_asked_follow_the_rule_for_every_frame():
    """The cut detector asks only the frames that may start a shot for their region and rules
    out the others with one bound (`fewest`): every frame's region must be the rule's, and the
    bound at most what any frame compares (above it, a cut could be missed)."""
    from vivi.ingest.borders import BatchBars
    from vivi.ingest.cut_detector import _Regions
    rng = np.random.default_rng(1)
    rows, cols = 20, 16
    before = [(0, 0, 0, 0)] * 2
    choices = [(0, 0, 0, 0), (3, 3, 0, 0), (2, 3, 0, 0), (0, 0, 4, 4), (15, 0, 0, 0)]
    for _ in range(300):
        count = int(rng.integers(1, 9))
        bars = [choices[int(rng.integers(len(choices)))] for _ in range(count)]
        frames = before + bars
        bound = tuple(map(max, *frames[1:]))                              # frames -1 to count - 1
        loose = tuple(b + int(rng.integers(0, 2)) for b in bound)       # a bound may be above the bars
        regions = _Regions(BatchBars(bars, tuple(before), loose, (rows, cols)), (rows, cols))
        expected = _regions_by_rule(frames, rows, cols)
        assert [regions[k] for k in range(count)] == expected
        for k, (top, bottom, left, right) in enumerate(expected):
            assert regions.compared(k) == (rows - top - bottom) * (cols - left - right) >= regions.bars.fewest
        before = frames[-2:]


def _crop_by_rule(lumas: list[np.ndarray]):
    """The crop from the definitions, frame by frame: a frame has picture when its non-bar rows
    and columns span a quarter of its height and width; a line is cut off when it is a bar line
    in the combined brightest and darkest of the frames with picture."""
    kept = []
    for luma in lumas:
        spans = []
        for axis in (1, 0):
            picture = np.flatnonzero(~((luma.max(axis=axis) <= LIMIT)
                                       & (luma.max(axis=axis).astype(int) - luma.min(axis=axis) <= FLAT)))
            spans.append(len(picture) and picture[-1] - picture[0] + 1 >= 0.25 * luma.shape[1 - axis])
        if all(spans):
            kept.append(luma)
    if len(kept) < 2:
        return None
    high, low = np.max(kept, axis=0).astype(int), np.min(kept, axis=0).astype(int)
    runs = []
    for axis in (1, 0):
        bar = (high.max(axis=axis) <= LIMIT) & (high.max(axis=axis) - low.min(axis=axis) <= FLAT)
        runs += [int(np.argmin(bar)) if not bar.all() else len(bar),
                 int(np.argmin(bar[::-1])) if not bar.all() else len(bar)]
    top, bottom, left, right = runs
    height, width = lumas[0].shape
    if height - top - bottom < 0.25 * height or width - left - right < 0.25 * width or not any(runs):
        return None
    x, y, x2, y2 = left + left % 2, top + top % 2, (width - right) // 2 * 2, (height - bottom) // 2 * 2
    if x2 - x < 0.25 * width or y2 - y < 0.25 * height or (x, y, x2, y2) == (0, 0, width, height):
        return None
    return x, y, x2 - x, y2 - y


@pytest.mark.parametrize("large", [False, True], ids=["small frames", "large frames"])
def test_border_finder_taking_the_held_frames_at_once_crops_as_the_rule_says(large, monkeypatch):
    """The held frames' statistics are taken all at once (one pass when every frame has picture
    across a quarter of each side, frame by frame otherwise; large frames first on a coarse grid,
    then only the lines along the edges): black frames and fades among them must not count, and
    the crop must be the one the definitions give frame by frame."""
    from vivi.ingest import borders
    from vivi.ingest.borders import BorderFinder
    if large:
        monkeypatch.setattr(borders, "SMALL_FRAME", 0)       # these frames taken as large ones
        monkeypatch.setattr(borders, "LARGE_FRAME", 0)
    rng = np.random.default_rng(2)
    for trial in range(200 if large else 60):
        height, width = (65, 81) if large else (48, 64)     # odd: a line missed at the bottom or right shows
        top, bottom, left, right = (int(v) for v in rng.integers(0, 20 if large else 12, 4))
        lumas = []
        for _ in range(int(rng.integers(1, 9))):
            luma = rng.integers(30, 256, (height, width)).astype(np.uint8)
            luma[:top], luma[height - bottom:], luma[:, :left], luma[:, width - right:] = 16, 16, 16, 16
            kind = rng.random()
            if kind < 0.1:
                luma[:] = 16                                          # black
            elif kind < 0.2:
                luma //= 12                                           # a fade: dark, textured
            elif kind < 0.3:
                luma[:, :width // 2] = 16                             # half black: the bars are not the same
            elif kind < 0.35:
                luma[:height * 2 // 5], luma[height * 3 // 5:] = 16, 16   # too little picture: no evidence
            lumas.append(luma)
        finder = BorderFinder()
        finder.add_frames(lumas)
        assert finder.crop() == _crop_by_rule(lumas), trial


def test_frame_crop_refills_one_frame_with_each_frame_s_picture():
    """Cropping reuses one output frame per video: each call must show that call's frame (not
    the one before) exactly as a fresh crop does, for 4:2:0 frames and for frames converted to
    it first."""
    from vivi.ingest.borders import FrameCrop, crop_frame
    rng = np.random.default_rng(3)
    crop = (4, 10, 56, 40)
    cropper = FrameCrop(crop)
    for fmt in ("yuv420p", "yuv420p", "yuv444p", "yuv420p"):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (60, 64, 3), dtype=np.uint8),
                                           format="rgb24").reformat(format=fmt)
        fresh, reused = crop_frame(frame, crop), cropper(frame)
        source = frame.reformat(format="yuv420p")
        for out in (fresh, reused):
            assert (out.width, out.height, out.format.name) == (56, 40, "yuv420p")
            for shift, plane, cut in zip((0, 1, 1), source.planes, out.planes):
                x, y, width, height = (v >> shift for v in crop)
                np.testing.assert_array_equal(_plane(cut)[:height, :width], _plane(plane)[y:y + height, x:x + width])


def _plane(plane) -> np.ndarray:
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
