"""``vivi inspect``: statistics of an ingested dataset and a contact sheet to look at.

The contact sheet draws one row per shot (its sampled frames left to right) and a thick rule
between videos, so a person sees at a glance whether the cuts fall where the content changes.
The statistics include, for every detector under ``DATA/detections``, its boxes per class and a
histogram of their scores: what a detector found, before training relies on it.
"""
from __future__ import annotations

import posixpath
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..files import replacing
from ..ingest.decode import decode_jpeg
from ..ingest.index import Video, build_index
from ..ingest.pipeline import collect
from .boxes import available_detectors, load_detections
from .reader import VideoDataset, missing_shards


def dataset_stats(root: str | Path) -> dict:
    """Statistics of the dataset at ``root`` as a JSON-able dict.

    Keys: ``videos``, ``shots``, ``frames``, ``failed``, ``damaged`` (videos ingested with damaged
    packets skipped), ``complete``, ``duration_s`` (total),
    ``videos_with_at_least_k_shots`` ({k: count} for k in 1, 2, 4, 8), ``frames_per_shot`` and
    ``shots_per_video`` (min/median/mean/max), ``per_video``: a list of ``{key, source,
    duration_s, fps, frames, shots, shot_starts_s}``, and ``detections``: {name:
    :func:`detection_stats`} for every detector found.
    """
    manifest = collect(root)
    per_video = manifest["per_video"]
    shots_per_video = [v["shots"] for v in per_video]
    frames_per_shot = [n for v in per_video for n in v["frames_per_shot"]]
    return {
        "root": str(root), "complete": manifest["complete"],
        "shards": f'{manifest["shards_done"]}/{manifest["shards_planned"]}',
        "videos": manifest["videos"], "failed": manifest["failed"],
        "damaged": sum(v.get("damaged_packets", 0) > 0 for v in per_video),
        "shots": manifest["shots"], "frames": manifest["frames"],
        "duration_s": round(sum(v["duration_s"] for v in per_video), 3),
        "videos_with_at_least_k_shots": {k: sum(n >= k for n in shots_per_video) for k in (1, 2, 4, 8)},
        "shots_per_video": _summary(shots_per_video),
        "frames_per_shot": _summary(frames_per_shot),
        "per_video": [{k: v[k] for k in ("key", "source", "duration_s", "fps", "frames", "shots", "shot_starts_s")}
                      for v in per_video],
        "failures": manifest["failures"],
        "detections": {name: detection_stats(root, name) for name in available_detectors(root)},
    }


def verify_dataset(root: str | Path, *, only: Collection[str] | None = None, threads: int = 4,
                   progress: bool = True) -> dict:
    """Check the dataset at ``root`` for damage that ingest's own checks cannot see afterwards.

    Every planned shard must be complete (its tar as long as its index says) and every stored
    frame must decode as a JPEG image; each frame is decoded (``threads`` at a time: OpenCV
    releases the GIL). Returns ``shards_planned``, ``frames`` (checked), ``incomplete`` (shard
    tars missing or damaged), ``damaged_frames`` (``{"shard", "video", "frame"}``) and
    ``shards_to_repair``: the shards ``vivi ingest ... --repair`` writes again. ``only``: check the
    frames of these shards (tar names) alone.
    """
    dataset = VideoDataset(root, build_index(root))     # from the shards as they are now, not index.bin
    planned, incomplete = missing_shards(root, dataset.index.shards)

    def broken(item: tuple[Video, int]) -> bool:
        try:
            decode_jpeg(dataset.read_jpeg(*item))
        except ValueError:
            return True
        return False

    by_shard: dict[str, list[Video]] = {}
    for video in dataset.videos:
        if only is None or posixpath.basename(video.shard) in only:
            by_shard.setdefault(video.shard, []).append(video)
    damaged, frames = [], 0
    total = sum(v.num_frames for videos in by_shard.values() for v in videos)
    bar = tqdm(total=total, unit="frame", desc=f"verify {root}", disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(threads) as pool:
        for shard, videos in by_shard.items():
            with dataset.shard_at_hand(shard):
                items = [(video, frame) for video in videos for frame in range(video.num_frames)]
                for (video, frame), bad in zip(items, pool.map(broken, items)):
                    if bad:
                        damaged.append({"shard": shard, "video": video.key, "frame": frame})
            frames += len(items)
            bar.update(len(items))
    bar.close()
    repair = sorted({posixpath.basename(d["shard"]) for d in damaged})
    return {"root": str(root), "shards_planned": planned, "frames": frames, "incomplete": incomplete,
            "damaged_frames": damaged, "shards_to_repair": repair}


def format_verification(result: dict) -> str:
    """``verify_dataset``'s result for a person, with what to do about what it found."""
    lines = [f"{result['root']}: {result['shards_planned'] - len(result['incomplete'])} of "
             f"{result['shards_planned']} shards complete, {result['frames']} frames checked, "
             f"{len(result['damaged_frames'])} not decodable"]
    for shard in result["incomplete"]:
        lines.append(f"  missing or damaged shard: {shard}")
    for d in result["damaged_frames"][:20]:
        lines.append(f"  damaged frame {d['frame']} of video {d['video']} in {d['shard']}")
    if len(result["damaged_frames"]) > 20:
        lines.append(f"  ... and {len(result['damaged_frames']) - 20} more")
    if result["incomplete"] or result["damaged_frames"]:
        lines.append("repair: run the same `vivi ingest` command with --repair (it writes these shards again from "
                     "the source videos; their detections are then redone by `vivi detect`)")
    return "\n".join(lines)


def detection_stats(root: str | Path, detector: str, bins: int = 10) -> dict:
    """Boxes of one detector: ``frames`` (annotated so far), ``frames_with_boxes``, ``boxes``,
    ``boxes_per_frame``, ``per_class`` ({class name: boxes}, most frequent first) and
    ``score_histogram`` (``bins`` equal bins over [0, 1]: ``edges``, ``counts``)."""
    dataset = VideoDataset(root)
    detections = load_detections(root, detector, dataset.index)
    boxes = np.asarray(detections.all_boxes)
    covered = np.flatnonzero(detections.covered)
    frame_rows = dataset.index.video_frames
    # the frames of the covered videos, and how many boxes each holds
    per_frame = np.concatenate([np.diff(detections.frame_box[frame_rows[r]:frame_rows[r + 1] + 1]) for r in covered]
                               ) if len(covered) else np.zeros(0, np.int64)
    per_class = np.bincount(boxes[:, 4].astype(np.int64), minlength=len(detections.class_names))
    counts, edges = np.histogram(boxes[:, 5], bins=bins, range=(0.0, 1.0))
    return {
        "frames": len(per_frame), "frames_with_boxes": int((per_frame > 0).sum()), "boxes": len(boxes),
        "boxes_per_frame": round(len(boxes) / max(len(per_frame), 1), 3),
        "per_class": {detections.class_names[i]: int(per_class[i]) for i in np.argsort(-per_class, kind="stable")
                      if per_class[i]},
        "score_histogram": {"edges": [round(float(e), 3) for e in edges], "counts": counts.tolist()},
        "videos_covered": len(covered), "videos": len(dataset),
    }


def _summary(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    a = np.asarray(values)
    return {"min": int(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 3),
            "max": int(a.max())}


PER_VIDEO_ROWS = 20        # videos listed one per line by format_stats; --json lists all


def format_stats(stats: dict) -> str:
    """A human-readable summary of :func:`dataset_stats`."""
    at_least = ", ".join(f"≥{k}: {n}" for k, n in stats["videos_with_at_least_k_shots"].items())
    spv, fps_ = stats["shots_per_video"], stats["frames_per_shot"]
    lines = [
        f"dataset {stats['root']} ({'complete' if stats['complete'] else 'INCOMPLETE'}, shards {stats['shards']})",
        f"  videos  {stats['videos']:>8}   ({stats['duration_s'] / 3600:.2f} h)   failed {stats['failed']}"
        + (f"   with damaged packets {stats['damaged']}" if stats.get("damaged") else ""),
        f"  shots   {stats['shots']:>8}   per video min {spv['min']} median {spv['median']:g} max {spv['max']}",
        f"  frames  {stats['frames']:>8}   per shot  min {fps_['min']} median {fps_['median']:g} max {fps_['max']}",
        f"  videos with k shots: {at_least}",
    ]
    for name, d in stats.get("detections", {}).items():
        top = ", ".join(f"{c} {n}" for c, n in list(d["per_class"].items())[:6])
        more = f", {len(d['per_class']) - 6} more classes" if len(d["per_class"]) > 6 else ""
        counts = d["score_histogram"]["counts"]
        bars = "".join(" ▁▂▃▄▅▆▇█"[round(8 * n / max(max(counts), 1))] for n in counts)
        lines.append(f"  detections '{name}': {d['boxes']} boxes on {d['frames_with_boxes']}/{d['frames']} frames "
                     f"({d['boxes_per_frame']:g} per frame); scores 0 |{bars}| 1")
        lines.append(f"    {top or 'no boxes'}{more}")
        if d["videos_covered"] < d["videos"]:
            lines.append(f"    incomplete: these detections cover {d['videos_covered']} of the {d['videos']} videos; "
                         f"run `vivi detect` with the same detector again to finish them")
    shown = stats["per_video"][:PER_VIDEO_ROWS]
    if shown:
        width = min(40, max(len(posixpath.basename(v["source"].rstrip("/"))) for v in shown))
        lines.append(f"  {'video':<12} {'source':<{width}} {'duration':>9} {'fps':>6} {'shots':>6} {'frames':>7}")
        for v in shown:
            name = _shorten(posixpath.basename(v["source"].rstrip("/")), width)
            lines.append(f"  {v['key']:<12} {name:<{width}} {v['duration_s']:>8.1f}s {v['fps']:>6.2f} "
                         f"{v['shots']:>6} {v['frames']:>7}")
        if len(stats["per_video"]) > PER_VIDEO_ROWS:
            lines.append(f"  ... {len(stats['per_video']) - PER_VIDEO_ROWS} more videos (`vivi inspect DATA --json` "
                         "lists every one)")
    for failure in stats["failures"][:10]:
        lines.append(f"  failed: {failure['source']}: {failure['reason']}")
    if len(stats["failures"]) > 10:
        lines.append(f"  ... {len(stats['failures']) - 10} more failures in failures.jsonl")
    return "\n".join(lines)


def render_contact_sheet(root: str | Path, out: str | Path, *, videos: int = 6, max_frames: int = 12,
                         tile: int = 96, detector: str | None = None, select: list[str] | None = None) -> Path:
    """Draw videos, one row per shot (its sampled frames left to right, ``tile`` pixels on their
    longer side), to the image ``out``; each row is labelled with the source's file name, the shot
    and its start time.

    ``select``: the videos to draw, each a video key or (a part of) its source's file name, in
    that order; else the first ``videos``. With ``detector``, the boxes of those detections are
    drawn with their class names.
    """
    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise ValueError(f"contact sheet {out}: give it an image extension (.png, .jpg, .webp or .bmp)")
    if videos < 1 or tile < 16:
        raise ValueError(f"the contact sheet draws at least one video, on tiles of at least 16 px (got {videos} "
                         f"videos, --tile {tile})")
    dataset = VideoDataset(root)
    if not len(dataset):
        raise ValueError(f"{root} holds no ingested video to draw")
    chosen = _select_videos(dataset.videos, select) if select else dataset.videos[:videos]
    detections = load_detections(root, detector) if detector else None
    if detections is not None:
        tile = max(tile, 128)   # room for the boxes' labels
    font = max(0.4, tile / 200)                      # label text grows with the tiles
    label_w, gap, rule = round(330 * font), 2, 6
    rows: list[np.ndarray] = []
    columns = min(max_frames, max(len(f) for v in chosen for f in v.shot_frames()))
    width = label_w + columns * (tile + gap)
    for video in chosen:
        name = posixpath.basename(video.source.rstrip("/")) or video.key
        for shot, frames in enumerate(video.shot_frames()):
            row = np.full((tile + gap, width, 3), 255, np.uint8)
            lines = [_shorten(name, 28), f"shot {shot} at {video.shot_starts_s[shot]:.1f} s"]
            for i, text in enumerate(lines):
                cv2.putText(row, text, (4, round(tile / 2 + (i - 0.3) * 24 * font)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.5 * font, (0, 0, 0), 1, cv2.LINE_AA)
            for col, frame in enumerate(frames[:max_frames]):
                image = _fit(dataset.read_frame(video, frame), tile)
                if detections is not None:
                    _draw_boxes(image, detections.frame_boxes(video.key, frame), detections.class_names)
                x = label_w + col * (tile + gap)
                row[:image.shape[0], x:x + image.shape[1]] = image
            rows.append(row)
        rows.append(np.full((rule, width, 3), (40, 40, 200), np.uint8))   # rule between videos
    sheet = np.concatenate(rows[:-1])
    with replacing(out) as tmp:
        ok, data = cv2.imencode(out.suffix, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not ok:
            raise ValueError(f"OpenCV could not encode the contact sheet as {out.suffix}")
        tmp.write_bytes(data.tobytes())
    return out


def _select_videos(videos: list[Video], select: list[str]) -> list[Video]:
    """The videos named in ``select`` (a key, or a part of the source's file name), in that order."""
    chosen = []
    for wanted in select:
        found = [v for v in videos if v.key == wanted] or \
                [v for v in videos if wanted in posixpath.basename(v.source.rstrip("/"))]
        if not found:
            raise ValueError(f"no video of the dataset is {wanted!r} (a video key, or a part of a source's file "
                             "name): `vivi inspect DATA` lists them")
        chosen += [v for v in found if v not in chosen]
    return chosen


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length // 2 - 1] + "…" + text[-(length - length // 2):]


def _draw_boxes(image: np.ndarray, boxes: np.ndarray, class_names: list[str]) -> None:
    h, w = image.shape[:2]
    for x0, y0, x1, y1, label, score in boxes:
        colour = tuple(int(c) for c in _COLOURS[int(label) % len(_COLOURS)])
        p0, p1 = (int(x0 * w), int(y0 * h)), (max(int(x0 * w), int(x1 * w) - 1), max(int(y0 * h), int(y1 * h) - 1))
        cv2.rectangle(image, p0, p1, colour, 1)
        cv2.putText(image, class_names[int(label)][:6], (p0[0], max(7, p0[1] - 1)), cv2.FONT_HERSHEY_PLAIN,
                    0.55, colour, 1, cv2.LINE_AA)


_COLOURS = np.array([(255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 255, 64), (255, 64, 255),
                     (64, 255, 255), (255, 160, 64), (160, 64, 255), (255, 255, 255), (0, 0, 0)], np.uint8)


def _fit(image: np.ndarray, tile: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = tile / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
