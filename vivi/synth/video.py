"""One synthetic video: its shots, its H.264 file and its ground-truth JSON.

A video draws a theme and a list of shot lengths, then one camera set-up per shot. A set-up is
redrawn (from the same generator, so the result stays deterministic) until the colour-histogram
distance across its cut exceeds ``min_cut_distance`` and no two consecutive frames inside it
exceed ``max_shot_distance`` (``cut_margins.py``), so a histogram cut detector at a threshold of 0.4
(``vivi/ingest/cut_detector.py``) finds every ground-truth cut frame-exactly and no others, with margin
left for coding noise.

Ground truth, ``video_NNNNN.json`` next to ``video_NNNNN.mp4``::

    {"video": "video_00000", "file": "video_00000.mp4", "index": 0, "seed": [seed, 1, index],
     "fps": 10, "num_frames": 200, "width": 64, "height": 64,
     "theme": 3, "shot_starts": [0, 37, 80],
     "frames": [{"boxes": [[x0, y0, x1, y1], ...], "class_ids": [...], "class_names": [...],
                 "object_ids": [...]}, ...]}

and, in a world with a ``cast``, ``"cast": [{"class_id", "class_name", "radius"}, ...]`` (the
objects every shot shows; ``radius`` their usual size on screen, screen units).

Boxes are integer pixels, x1 and y1 exclusive (see ``render.py``); ``object_ids`` follow one
object through its shot (unique within the video).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .cut_margins import cut_distance, frame_signatures, max_step_distance
from .render import RenderedFrames, render
from .shapes import CLASS_NAMES
from .world import VIDEO_DOMAIN, CastMember, Shot, Theme, WorldConfig, plan_shots, rng_for, sample_cast, sample_shot

MAX_SETUP_DRAWS = 30        # redraws of a shot set-up before keeping the best one seen


def frames_per_chunk(size: int) -> int:
    """Frames rendered per call: ~64k pixels keeps the working arrays in cache (about twice as
    fast as whole shots at 64 px)."""
    return max(1, 65536 // (size * size))


def render_shot(shot: Shot, config: WorldConfig) -> RenderedFrames:
    parts = [render(shot, config.size, slice(a, a + frames_per_chunk(config.size)),
                    min_visible_area=config.min_visible_area)
             for a in range(0, shot.num_frames, frames_per_chunk(config.size))]
    return RenderedFrames(rgb=np.concatenate([p.rgb for p in parts]),
                          boxes=np.concatenate([p.boxes for p in parts], axis=1),
                          visible=np.concatenate([p.visible for p in parts], axis=1))


@dataclass
class VideoShot:
    """A shot as it went into the video: set-up, frames, and the histogram margins it met."""
    shot: Shot
    frames: RenderedFrames
    cut_distance: float             # to the last frame of the previous shot (1.0 for the first)
    max_step_distance: float        # largest distance between consecutive frames inside the shot
    draws: int                      # set-ups drawn to get it


def draw_shot(rng, theme: Theme, config: WorldConfig, num_frames: int, first_object_id: int,
              previous: tuple | None, cast: list[CastMember] | None = None) -> tuple[VideoShot, tuple]:
    """A set-up meeting both histogram margins (or, after MAX_SETUP_DRAWS, the best one seen)
    and the histogram signatures of its last frame. ``previous``: those of the previous shot;
    ``cast``: the video's objects, if it has one."""
    best, best_score, best_last = None, -np.inf, None
    for draw in range(1, MAX_SETUP_DRAWS + 1):
        shot = sample_shot(rng, theme, config, num_frames, first_object_id, cast)
        cut = 1.0
        if previous is not None:     # cheap test on the first frame before rendering the rest
            cut = cut_distance(previous, frame_signatures(render(shot, config.size, slice(0, 1)).rgb))
            if cut < config.min_cut_distance and best is not None:
                continue
        frames = render_shot(shot, config)
        signatures = frame_signatures(frames.rgb)
        step = max_step_distance(signatures)
        score = min(cut - config.min_cut_distance, config.max_shot_distance - step)
        if score > best_score:
            best, best_score = VideoShot(shot, frames, cut, step, draw), score
            best_last = tuple(h[-1:] for h in signatures)
        if score >= 0:
            break
    best.draws = draw
    return best, best_last


def frame_ground_truth(shots: list[VideoShot]) -> list[dict]:
    """Per-frame boxes, class ids and names, object ids, in the order of the shot's objects."""
    frames = []
    for video_shot in shots:
        tracks, rendered = video_shot.shot.objects, video_shot.frames
        for t in range(video_shot.shot.num_frames):
            seen = [k for k in range(len(tracks)) if rendered.visible[k, t]]
            frames.append({
                "boxes": [rendered.boxes[k, t].tolist() for k in seen],
                "class_ids": [tracks[k].class_id for k in seen],
                "class_names": [CLASS_NAMES[tracks[k].class_id] for k in seen],
                "object_ids": [tracks[k].object_id for k in seen],
            })
    return frames


def write_mp4(path: Path, frames: list[np.ndarray], config: WorldConfig) -> None:
    """H.264 in MP4, yuv420p, one thread so the bytes do not depend on scheduling."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=config.fps, options={
            "crf": str(config.crf), "preset": config.preset, "threads": "1"})
        stream.width = stream.height = config.size
        stream.pix_fmt = "yuv420p"
        index = 0
        for chunk in frames:
            for rgb in chunk:
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = index
                index += 1
                container.mux(stream.encode(frame))
        container.mux(stream.encode())


def make_video(out_dir: Path, index: int, config: WorldConfig, themes: list[Theme]) -> dict:
    """Render video ``index`` of the world and write its .mp4 and .json; return its statistics."""
    rng = rng_for(config.seed, VIDEO_DOMAIN, index)
    theme_id = int(rng.integers(len(themes)))
    lengths = plan_shots(rng, config)
    cast = sample_cast(rng, themes[theme_id], config) if config.cast else None   # drawn only then: same stream
    shots, previous, next_object_id = [], None, 0
    for length in lengths:
        video_shot, previous = draw_shot(rng, themes[theme_id], config, length, next_object_id, previous, cast)
        shots.append(video_shot)
        next_object_id += len(video_shot.shot.objects)

    name = f"video_{index:05d}"
    write_mp4(out_dir / f"{name}.mp4", [s.frames.rgb for s in shots], config)
    starts = np.cumsum([0] + [s.shot.num_frames for s in shots[:-1]]).tolist()
    frames = frame_ground_truth(shots)
    truth = {"video": name, "file": f"{name}.mp4", "index": index,
             "seed": [config.seed, VIDEO_DOMAIN, index], "fps": config.fps,
             "num_frames": len(frames), "width": config.size, "height": config.size,
             "theme": theme_id, "shot_starts": starts, "frames": frames}
    if cast is not None:
        truth["cast"] = [{"class_id": m.class_id, "class_name": CLASS_NAMES[m.class_id], "radius": round(m.radius, 4)}
                         for m in cast]
    (out_dir / f"{name}.json").write_text(json.dumps(truth, separators=(",", ":")))
    return {"frames": len(frames), "shots": len(shots),
            "boxes": sum(len(f["boxes"]) for f in frames),
            "setup_draws": sum(s.draws for s in shots),
            "unmet_setups": sum(s.cut_distance < config.min_cut_distance
                                or s.max_step_distance > config.max_shot_distance for s in shots),
            "min_cut_distance": min([s.cut_distance for s in shots[1:]], default=1.0),
            "max_step_distance": max(s.max_step_distance for s in shots)}
