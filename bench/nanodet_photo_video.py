"""NanoDet on a multi-shot video made of photographs: each filmed with a pan or a zoom, cut together.

    vivi detector fetch nanodet                       # once
    python bench/nanodet_photo_video.py --out /tmp/photo-video [--images DIR_OR_FILES ...] [--threads 1]

So that it needs no downloaded footage, the video is made from the photographs that installed
Python packages ship (matplotlib's ``grace_hopper.jpg``, scikit-learn's ``china.jpg`` and
``flower.jpg``, scikit-image's ``astronaut``, ``chelsea``, ``coffee``, ``motorcycle_left`` ... when
given with ``--images``): every photo becomes one shot of ``--shot-seconds`` in which a 4:3 window
pans across it or zooms into it (the camera motion that ingest and the detector see in real
footage), ``--shots`` consecutive shots make a 320x240 H.264 video. The script then runs the real
pipeline: ``ingest`` (cuts, 1 Hz frames), ``detect_dataset`` with ``nanodet``, the detection
statistics of ``vivi inspect``, and a contact sheet with the boxes (``--sheet``, a PNG reduced to
a 256-colour palette so it stays small).
"""
from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np

from vivi.data import VideoDataset, load_detections
from vivi.data.inspect import detection_stats, render_contact_sheet
from vivi.detect import build_detector, detect_dataset
from vivi.ingest import IngestConfig, SamplingConfig, ingest

WIDTH, HEIGHT, FPS = 320, 240, 10
CONFIDENT = 0.4           # a score above which NanoDet-m's boxes are mostly right (see docs/detect.md)


def default_photos() -> list[Path]:
    """Photographs shipped by installed packages (those present)."""
    import matplotlib
    import sklearn
    found = [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
             Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
             Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"]
    return [p for p in found if p.is_file()]


def photo_paths(items: list[str]) -> list[Path]:
    paths = []
    for item in items:
        p = Path(item)
        paths.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in (".jpg", ".png")) if p.is_dir() else [p])
    return paths


def shot_frames(photo: np.ndarray, frames: int, motion: str) -> list[np.ndarray]:
    """A 4:3 window over the photo: ``pan`` slides a window of 80 % of the largest 4:3 one from left
    to right; ``zoom`` shrinks the largest 4:3 window to 60 % of its size around the centre."""
    h, w = photo.shape[:2]
    full_w, full_h = (w, w * 3 / 4) if w * 3 / 4 <= h else (h * 4 / 3, h)
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        if motion == "pan":
            cw, ch = 0.8 * full_w, 0.8 * full_h
            x0, y0 = t * (w - cw), (h - ch) / 2
        else:
            s = 1 - 0.4 * t
            cw, ch = s * full_w, s * full_h
            x0, y0 = (w - cw) / 2, (h - ch) / 2
        crop = photo[int(y0):int(y0 + ch), int(x0):int(x0 + cw)]
        out.append(cv2.resize(crop, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA))
    return out


def write_video(path: Path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work folder (videos/, data/); replaced")
    parser.add_argument("--images", nargs="*", default=None, help="photos or folders of photos (default: packages')")
    parser.add_argument("--shots", type=int, default=3, help="shots (photos) per video (default 3)")
    parser.add_argument("--shot-seconds", type=float, default=4.0, help="length of a shot (default 4 s)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG with the boxes")
    args = parser.parse_args()

    photos = photo_paths(args.images) if args.images else default_photos()
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "videos").mkdir(parents=True)
    per_shot = round(args.shot_seconds * FPS)
    for v, start in enumerate(range(0, len(photos), args.shots)):
        frames = []
        for s, path in enumerate(photos[start:start + args.shots]):
            photo = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            frames += shot_frames(photo, per_shot, "pan" if (v + s) % 2 == 0 else "zoom")
        write_video(args.out / "videos" / f"photos_{v:02d}.mp4", frames)
    print(f"{len(photos)} photos -> {v + 1} videos of up to {args.shots} shots: {', '.join(p.name for p in photos)}")

    data = args.out / "data"
    print(ingest([args.out / "videos"], data, IngestConfig(sampling=SamplingConfig(short_side=HEIGHT)), workers=1,
                 progress=False))
    summary = detect_dataset(data, build_detector("nanodet", threads=args.threads), progress=False)
    print(summary)
    stats = detection_stats(data, "nanodet")
    print(json.dumps({"frames_per_s": round(summary.frames / summary.seconds, 1), **stats}))
    detections, confident = load_detections(data, "nanodet"), Counter()
    print(f"per shot: its photo, then the best box of each sampled frame (and classes scoring >= {CONFIDENT})")
    shots = [(video, frames) for video in VideoDataset(data).videos for frames in video.shot_frames()]
    for (video, frames), photo in zip(shots, photos):
        best = []
        for frame in frames:
            boxes = detections.frame_boxes(video.key, frame)
            confident.update(detections.class_names[int(b[4])] for b in boxes if b[5] >= CONFIDENT)
            best.append(f"{detections.class_names[int(boxes[0, 4])]} {boxes[0, 5]:.2f}" if len(boxes) else "-")
        print(f"  {video.key} {photo.name:<20} {' | '.join(best)}")
    print(f"boxes scoring >= {CONFIDENT}: {dict(confident.most_common())}")
    if args.sheet:
        from PIL import Image
        path = render_contact_sheet(data, args.sheet, videos=len(photos), max_frames=4, tile=128, detector="nanodet")
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
        print(f"contact sheet {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
