"""pm-k robustness with neighbours at the video's native frame rate (vivi.eval.robustness).

One 10 fps video of 60 frames rendered with PyAV: a dark grey shot (native frames 0-34), a cut,
a blue shot (35-59); the top-left 8x8 pixels are white in native frames 12, 37 and 45 only. Every
frame has one ground-truth box of class 0, and the classifier says class 1 exactly when that corner
is white, so every pm-k value follows by hand from the white frames. Ingest at 1 Hz samples native
frames 0, 10, 20, 30 (shot 0) and 35, 45, 55 (shot 1): seven anchors, anchor 45 wrong.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from vivi.eval import robustness
from vivi.eval.robustness import native_frames, video_robustness

pytestmark = pytest.mark.usefixtures("one_thread")

WHITE = (12, 37, 45)
CUT = 35


class Corner(nn.Module):
    """Class 1 where the top-left corner is bright, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bright = x[:, :, :2, :2].mean((1, 2, 3))
        return torch.stack([0.75 - bright, bright - 0.75], 1)


def render(path: Path) -> None:
    """The video of the module docstring (H.264) and its ground truth beside it (the groundtruth detector's)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10, options={"crf": "18", "threads": "1"})
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(60):
            rgb = np.empty((64, 64, 3), np.uint8)
            rgb[:] = (60, 60, 60) if i < CUT else (40, 40, 160)
            if i in WHITE:
                rgb[:8, :8] = 255
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = [{"boxes": [[16, 16, 48, 48]], "class_ids": [0]} for _ in range(60)]
    path.with_suffix(".json").write_text(json.dumps({"width": 64, "height": 64, "frames": frames}))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from vivi.detect import build_detector, detect_dataset
    from vivi.ingest import IngestConfig, SamplingConfig, ingest
    root = tmp_path_factory.mktemp("native")
    (root / "videos").mkdir()
    render(root / "videos" / "clip.mp4")
    ingest([root / "videos"], root / "ds", IngestConfig(sampling=SamplingConfig(short_side=64)), progress=False)
    detect_dataset(root / "ds", build_detector("groundtruth"), progress=False)
    return root / "ds"


def test_the_fixture_video_is_ingested_as_the_hand_computation_assumes(data):
    from vivi.data import VideoDataset
    (video,) = VideoDataset(data).videos
    assert video.frame_native_index == (0, 10, 20, 30, 35, 45, 55)
    assert video.frame_shot == (0, 0, 0, 0, 1, 1, 1)


@pytest.mark.parametrize("k, pm_k, frames", [(1, 6 / 7, 19), (2, 4 / 7, 31), (10, 2 / 7, 60)])
def test_pm_k_at_the_native_rate_counts_the_frames_between_samples(data, k, pm_k, frames):
    """k = 1: only anchor 45 fails; k = 2: 12 and 37 join the windows of anchors 10 and 35; k = 10: anchor
    20 sees 12 and anchor 55 sees 45, while anchor 30's window ends at the cut (35), so 37 does not
    count. Catches neighbours taken among the sampled frames, windows that cross the cut, and anchors
    or neighbours that are not the frames decoded at their native index."""
    result = video_robustness(Corner(), data, k=k, resolution=32, neighbours="native")
    assert result["neighbours"] == "native" and result["k_frames"] == "native"
    assert result["anchors"] == 7 and result["frames"] == frames
    assert result["anchor_accuracy"] == pytest.approx(6 / 7)
    assert result["pm_k_accuracy"] == pytest.approx(pm_k)
    assert result["delta"] == pytest.approx(6 / 7 - pm_k)


def test_sampled_neighbours_give_the_1hz_answer(data):
    """Among the sampled frames (+-10 positions in the shot) only anchor 45's shot fails: 4/7, where the
    native rate gives 2/7. Catches --neighbours sampled decoding the source anyway."""
    result = video_robustness(Corner(), data, k=10, resolution=32, neighbours="sampled")
    assert (result["neighbours"], result["k_frames"], result["frames"]) == ("sampled", "sampled", 7)
    assert result["pm_k_accuracy"] == pytest.approx(4 / 7) and result["anchor_accuracy"] == pytest.approx(6 / 7)


def test_seeking_over_gaps_decodes_the_same_frames(data, monkeypatch):
    """With seeks between every neighbourhood (a gap limit of 0.3 s), each wanted native frame is the
    same picture as when decoding straight through (catches an index off by one after a seek)."""
    from vivi.data import VideoDataset
    from vivi.ingest.display import Display
    (video,) = VideoDataset(data).videos
    wanted = [0, 1, 9, 10, 11, 29, 30, 31, 44, 45, 46, 54, 55, 56]
    straight = list(native_frames(video.source, wanted, video.fps, video.frame_size, Display()))
    monkeypatch.setattr(robustness, "SEEK_GAP_S", 0.3)
    seeking = list(native_frames(video.source, wanted, video.fps, video.frame_size, Display()))
    assert [i for i, _ in straight] == [i for i, _ in seeking] == wanted
    for (_, a), (_, b) in zip(straight, seeking):
        assert np.array_equal(a, b)
    bright = [i for i, frame in seeking if frame[:4, :4].mean() > 200]
    assert bright == [45]
    assert video_robustness(Corner(), data, k=2, resolution=32)["pm_k_accuracy"] == pytest.approx(4 / 7)


def test_a_missing_source_falls_back_to_sampled_frames_or_is_refused(data, tmp_path):
    """Without the source video the default falls back to the sampled frames and says why; asking for
    native neighbours then is a one-line error naming the file and the way out."""
    copy = tmp_path / "ds"
    shutil.copytree(data, copy)
    from vivi.data import VideoDataset
    (video,) = VideoDataset(copy).videos
    source = Path(video.source)
    hidden = tmp_path / "hidden.mp4"
    shutil.move(source, hidden)
    try:
        result = video_robustness(Corner(), copy, k=10, resolution=32)
        assert result["neighbours"] == "sampled" and str(source) in result["neighbours_reason"]
        assert result["pm_k_accuracy"] == pytest.approx(4 / 7)
        with pytest.raises(ValueError, match=r"^--neighbours native decodes the source videos, but the source video "
                                             r".*clip\.mp4 is not a readable file here: .*--neighbours sampled$"):
            video_robustness(Corner(), copy, k=10, resolution=32, neighbours="native")
    finally:
        shutil.move(hidden, source)
    assert video_robustness(Corner(), copy, k=10, resolution=32)["neighbours"] == "native"
