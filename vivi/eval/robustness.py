"""Robustness of per-frame predictions on video (VIVI §5.2, Table 3; Object-centric §4.2, §5.2 and
Table 5; Shankar et al. 2019, ImageNet-Vid-Robust; docs/reference.md, "Robustness").

For every anchor frame: *anchor accuracy* is the fraction of anchors classified correctly;
*pm-k accuracy* the fraction of anchors for which the anchor **and every** frame within +-k frames
of it is classified correctly; ``delta = anchor - pm-k`` (lower is more robust). The benchmark
counts the neighbours in frames of the video at its **native** frame rate: "if any frame from the
set of 10 preceding and 10 following frames is misclassified" (Object-centric §4.2; VIVI Table 3:
"the worst case accuracy defined over neighbouring 20 frames"). :func:`pm_k_accuracy` works on
plain arrays.

:func:`video_robustness` is a deliberately simple adapter for an ingested dataset with
detections (e.g. the synthetic world's ``groundtruth``): the label of a sampled frame is the
class of its **largest box** (frames without boxes are unlabelled, -1); every labelled sampled
frame is an anchor; a neighbourhood stays inside the anchor's **shot** (a cut changes the scene,
which is not a perturbation). Its neighbours are, by ``neighbours``:

* ``"native"``: the +-k frames around the anchor at the video's native rate, decoded from the
  source video (the record's ``source``, ``fps``, native shot starts and each sampled frame's
  ``frame_native_index``), the anchor itself decoded with them; they take the anchor's label, as
  the benchmark's neighbours share their anchor's (its reviewers kept only those that do). The
  frames are resized to the stored frame size and turned as the video is shown, as ingest stores
  them (without the JPEG step). Decoding goes forward from the start of the video and seeks over
  gaps longer than :data:`SEEK_GAP_S` between neighbourhoods (after a seek a frame's native index
  comes from its time stamp, exact for constant-rate video);
* ``"sampled"``: the labelled *sampled* frames (1 Hz by default) within +-k positions in the
  shot with the anchor's label, read from the dataset: what can be done without the sources;
* ``None`` (the default): native where every source video is a readable local file, else
  sampled, and the result says why (``neighbours_reason``).

The classifier is any module mapping [0, 1] images to logits over the detector's classes, e.g.
an encoder fine-tuned on the world's ``object_class`` task (its classes are the world's classes,
in the same order). The benchmark's frames carry human labels; these choices (largest box,
shot-bounded neighbourhoods, the anchor's label for its native neighbours) are how vivi labels
frames without them (docs/reference.md, "Choices the papers leave open").
"""
from __future__ import annotations

import json
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["NEIGHBOURS", "choose_neighbours", "frame_labels_from_boxes", "native_frames", "pm_k_accuracy",
           "robustness_from_task", "video_robustness"]


def pm_k_accuracy(predictions, labels, videos, anchors, k: int = 10, same_label: bool = True) -> dict:
    """Anchor accuracy, pm-k accuracy and their difference.

    Args:
        predictions, labels: (n,) per frame; a label < 0 marks an unlabelled frame (never checked).
        videos: (n,) an id per frame; frames of one id are consecutive in time, in array order
            (pass a shot id to keep neighbourhoods inside shots).
        anchors: indices of the anchor frames (labelled).
        k: neighbourhood half-width in frames (positions within the video).
        same_label: only neighbours with the anchor's label count.

    Returns:
        ``{"anchors", "anchor_accuracy", "pm_k_accuracy", "delta", "k"}`` (accuracies as fractions).
    """
    predictions, labels, videos = map(np.asarray, (predictions, labels, videos))
    anchors = np.asarray(anchors, np.int64)
    if not (len(predictions) == len(labels) == len(videos)):
        raise ValueError("predictions, labels and videos must have one entry per frame")
    if len(anchors) == 0:
        raise ValueError("no anchor frame")
    if np.any(labels[anchors] < 0):
        raise ValueError("every anchor needs a label (>= 0)")
    correct = predictions == labels
    # position of each frame inside its video (frames of a video are consecutive in the arrays)
    start = np.r_[0, np.flatnonzero(videos[1:] != videos[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, len(videos)]))
    anchor_ok, pm_ok = [], []
    for a in anchors:
        lo, hi = max(first[a], a - k), a + k + 1
        window = np.arange(lo, min(hi, len(videos)))
        window = window[(videos[window] == videos[a]) & (labels[window] >= 0)]
        if same_label:
            window = window[labels[window] == labels[a]]
        anchor_ok.append(correct[a])
        pm_ok.append(bool(correct[window].all()) and correct[a])
    anchor_acc, pm_acc = float(np.mean(anchor_ok)), float(np.mean(pm_ok))
    return {"anchors": int(len(anchors)), "anchor_accuracy": anchor_acc, "pm_k_accuracy": pm_acc,
            "delta": anchor_acc - pm_acc, "k": int(k)}


def frame_labels_from_boxes(boxes: np.ndarray) -> int:
    """Class of the largest box of a frame ((n, 6): x0, y0, x1, y1, class, score), -1 if none."""
    if len(boxes) == 0:
        return -1
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(boxes[int(np.argmax(area)), 4])


# Decoding a gap is skipped by a seek when it is longer than this (a seek restarts decoding at the
# key frame before the target, up to a few seconds of frames, so shorter gaps decode faster).
SEEK_GAP_S = 10.0

NEIGHBOURS = ("native", "sampled")


def source_problem(source: str) -> str | None:
    """Why the source video ``source`` of a dataset record cannot be decoded here; None when it can."""
    from vivi.storage import is_url
    if is_url(source):
        return f"{source} is a URL (native neighbours are decoded from local files)"
    if not Path(source).is_file():
        return f"the source video {source} is not a readable file here"
    return None


def choose_neighbours(videos, neighbours: str | None) -> tuple[str, str]:
    """(``"native"`` or ``"sampled"``, the reason) for the videos' sources and the choice asked
    (None: native where every source is readable). Native asked of a missing source raises ValueError."""
    if neighbours is not None and neighbours not in NEIGHBOURS:
        raise ValueError(f"neighbours must be one of {', '.join(NEIGHBOURS)}, got {neighbours!r}")
    if neighbours == "sampled":
        return "sampled", "asked for (--neighbours sampled)"
    problem = next(filter(None, (source_problem(v.source) for v in videos)), None)
    if problem is None:
        return "native", "the source videos are readable"
    if neighbours == "native":
        raise ValueError(f"--neighbours native decodes the source videos, but {problem}: put the videos back where "
                         "they were ingested from, or use --neighbours sampled")
    return "sampled", f"{problem}, so neighbours are the sampled frames"


def native_frames(source: str | Path, wanted: list[int], fps: float, frame_size: tuple[int, int], display):
    """``(native index, RGB frame)`` for each native frame index in ``wanted`` (sorted, unique) of a
    video, at the stored ``frame_size`` (height, width) and turned as ``display`` says (module docstring)."""
    import av

    from vivi.ingest.decode import VideoError, frame_times, open_video, stream_time_base
    try:
        container, stream, _, _, _ = open_video(source)
    except VideoError as error:
        raise ValueError(f"{source}: {error}") from None
    height, width = frame_size
    out_w, out_h = (height, width) if display.transposes else (width, height)
    time_base = stream_time_base(stream)
    with container:
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        position, at, t0, seeked = 0, 0, None, False    # next wanted; native index of the next frame
        may_seek = True     # not again before a wanted frame: a seek lands on the key frame before its target
        while position < len(wanted):
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.error.FFmpegError as error:
                raise ValueError(f"{source}: decoding failed near native frame {at} ({error})") from None
            t = frame_times([frame], at, time_base, fps)[0]
            if t0 is None:
                t0 = t
            # from the start the native index is the decode order, as ingest counts; after a seek, the time's
            index = round((t - t0) * fps) if seeked else at
            at = index + 1
            if index == wanted[position]:
                rgb = frame.reformat(out_w, out_h, "rgb24", interpolation="AREA").to_ndarray()
                yield index, display.apply(rgb)
                position, may_seek = position + 1, True
            while position < len(wanted) and wanted[position] < at:    # a frame the video does not have
                position += 1
            if (may_seek and position < len(wanted) and time_base and frame.pts is not None
                    and (wanted[position] - at) / fps > SEEK_GAP_S):
                container.seek(int((t0 + (wanted[position] - 0.5) / fps) / time_base), stream=stream, backward=True)
                frames, seeked, may_seek = container.decode(stream), True, False


def _predict(classifier: nn.Module, frames: list[np.ndarray], resolution: int, device: str) -> np.ndarray:
    import torch.nn.functional as F
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return classifier(x.to(device)).argmax(1).cpu().numpy()


@torch.no_grad()
def video_robustness(classifier: nn.Module, data: str | Path, detector: str = "groundtruth", k: int = 10,
                     resolution: int = 64, batch_size: int = 64, device: str = "cpu",
                     neighbours: str | None = None) -> dict:
    """pm-k robustness of ``classifier`` on the videos of an ingested dataset, neighbours at the
    native frame rate or among the sampled frames (module docstring). The result says which
    (``neighbours``, ``neighbours_reason``) and in which frames ``k`` counts (``k_frames``)."""
    from vivi.data.boxes import load_detections
    from vivi.data.reader import VideoDataset
    from vivi.ingest.display import Display
    dataset = VideoDataset(data)
    detections = load_detections(data, detector)
    mode, reason = choose_neighbours(dataset.videos, neighbours)
    classifier.eval()
    predictions, labels, groups, anchors = [], [], [], []
    classified = 0           # native frames decoded and classified
    for v, video in enumerate(dataset.videos):
        frame_labels = [frame_labels_from_boxes(detections.frame_boxes(video.key, f)) for f in range(video.num_frames)]
        if mode == "sampled":
            frames = [dataset.read_frame(video, f) for f in range(video.num_frames)]
            for start in range(0, len(frames), batch_size):
                predictions.append(_predict(classifier, frames[start:start + batch_size], resolution, device))
            anchors += [len(labels) + f for f, label in enumerate(frame_labels) if label >= 0]
            labels += frame_labels
            groups += [v * 100_000 + s for s in video.frame_shot]
            continue
        record = dataset.read_record(video)
        ends = [*record["shot_starts"][1:], record["num_native_frames"]]
        windows = []         # (anchor's native index, first, last native index of its neighbourhood, label)
        for f, label in enumerate(frame_labels):
            if label >= 0:
                shot, native = video.frame_shot[f], video.frame_native_index[f]
                windows.append((native, max(record["shot_starts"][shot], native - k),
                                min(ends[shot] - 1, native + k), label))
        wanted = sorted({i for _, lo, hi, _ in windows for i in range(lo, hi + 1)})
        shown = record.get("display") or {}
        display = Display(shown.get("rotation_cw", 0), shown.get("hflip", False), shown.get("sample_aspect", 1.0))
        predicted: dict[int, int] = {}
        batch: list[tuple[int, np.ndarray]] = []
        for item in chain(native_frames(video.source, wanted, video.fps, video.frame_size, display), [None]):
            if item is not None:
                batch.append(item)
            if batch and (item is None or len(batch) == batch_size):
                predicted.update(zip([i for i, _ in batch],
                                     _predict(classifier, [f for _, f in batch], resolution, device).tolist()))
                batch = []
        classified += len(predicted)
        for native, lo, hi, label in windows:
            # a window whose frames the video lacks (a damaged stretch) counts the frames it has
            present = [i for i in range(lo, hi + 1) if i in predicted]
            if native not in predicted:
                raise ValueError(f"{video.source}: native frame {native} (an anchor) could not be decoded")
            anchors.append(len(labels) + present.index(native))
            predictions.append(np.asarray([predicted[i] for i in present]))
            labels += [label] * len(present)
            groups += [len(anchors)] * len(present)
    if not anchors:
        raise ValueError(f"no sampled frame of {data} has a box of {detector!r}: no anchor")
    predictions = np.concatenate(predictions)
    result = pm_k_accuracy(predictions, np.asarray(labels), np.asarray(groups), np.asarray(anchors), k=k)
    result.update({"frames": int(len(labels)) if mode == "sampled" else classified,
                   "neighbours": mode, "neighbours_reason": reason,
                   "k_frames": "native" if mode == "native" else "sampled"})
    return result


def robustness_from_task(checkpoint, task_dir: str | Path, data: str | Path, detector: str = "groundtruth",
                         k: int = 10, lr: float = 0.01, steps: int = 500, resolution: int = 64,
                         batch_size: int = 64, seed: int = 0, device: str = "cpu",
                         neighbours: str | None = None) -> dict:
    """Fine-tune ``checkpoint`` on a labeled image task (train800val200) whose classes are named like
    the detector's, then measure its pm-k robustness on the videos of ``data`` (anchors labelled by
    their largest box; ``neighbours`` as :func:`video_robustness`). The synthetic world's
    ``object_class`` task and its ``groundtruth`` detections share class names: ``vivi robustness``
    does exactly this.
    """
    from vivi.data.boxes import load_detections
    from vivi.data.reader import VideoDataset
    from vivi.eval import vtab
    from vivi.eval.suite import Task, load_split
    from vivi.eval.transfer import check_setting, load_eval_encoder

    for name, value, rule in (("k", k, dict(integer=True, at_least=1)), ("lr", lr, dict(above=0)),
                              ("steps", steps, dict(integer=True, at_least=1)),
                              ("resolution", resolution, dict(integer=True, at_least=8)),
                              ("batch_size", batch_size, dict(integer=True, at_least=1)),
                              ("seed", seed, dict(integer=True, at_least=0))):
        check_setting(name, value, flag=f"--{name.replace('_', '-')}" if name != "seed" else None, **rule)
    folder = Path(task_dir)
    meta = folder / "task.json"
    if not meta.exists():
        raise FileNotFoundError(f"{meta} does not exist: --task is a task folder with a task.json naming its "
                                "classes (class_names), like those `vivi synth` writes")
    info = json.loads(meta.read_text())
    names = info.get("class_names", [])
    task = Task(folder.name, info.get("group", "natural"), "folder", folder, info.get("num_classes") or len(names))
    detections = load_detections(data, detector)
    detector_names = detections.class_names
    if list(names) != list(detector_names)[:len(names)] or not names:
        raise ValueError(f"the classes of {task_dir} ({list(names)[:4]}...) are not the detector {detector!r}'s "
                         f"classes ({detector_names[:4]}...): robustness needs one label space")
    videos = VideoDataset(data).videos
    choose_neighbours(videos, neighbours)          # native asked of sources not at hand: refused before fine-tuning
    if not any(len(detections.frame_boxes(v.key, f)) for v in videos for f in range(v.num_frames)):
        raise ValueError(f"the detections {detector!r} of {data} hold no box, so no frame has a label: re-run "
                         "`vivi detect` (a lower --min-score, or another detector)")
    config = vtab.FinetuneConfig(resolution=resolution, batch_size=batch_size, device=device)
    split = load_split(task, "train800val200")
    classifier = vtab.finetune(load_eval_encoder(checkpoint, seed=seed), split, len(names),
                              vtab.Setting(lr, steps), config, seed)
    result = video_robustness(classifier, data, detector, k=k, resolution=resolution,
                              batch_size=batch_size, device=device, neighbours=neighbours)
    result.update({"checkpoint": str(checkpoint), "task": str(task_dir), "k": k})
    return result
