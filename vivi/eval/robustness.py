"""Robustness of per-frame predictions on video (VIVI §5.2, Table 3; Object-centric §4.2 and Table 5;
Shankar et al. 2019, ImageNet-Vid-Robust; docs/reference.md, "Robustness").

For every anchor frame: *anchor accuracy* is the fraction of anchors classified correctly;
*pm-k accuracy* the fraction of anchors for which the anchor **and every** labelled frame within
+-k frames of it (same video) is classified correctly; ``delta = anchor - pm-k`` (lower is more
robust). :func:`pm_k_accuracy` works on plain arrays.

:func:`video_robustness` is a deliberately simple adapter for an ingested dataset with
detections (e.g. the synthetic world's ``groundtruth``): the label of a sampled frame is the
class of its **largest box** (frames without boxes are unlabelled, -1); every labelled frame is an
anchor; a neighbourhood counts only frames of the same **shot** (a cut changes the scene, which is
not a perturbation) whose label equals the anchor's (the benchmark's neighbourhoods share the
anchor's label). ``k`` counts *sampled* frames: ingest at a higher ``--fps`` for denser
neighbourhoods (ImageNet-Vid-Robust's k = 10 is in native 30 fps frames). The classifier is any
module mapping [0, 1] images to logits over the detector's classes, e.g. an encoder fine-tuned
on the world's ``object_class`` task (its classes are the world's classes, in the same order).
The benchmark's frames carry human labels; these choices (largest box, shot-bounded
neighbourhoods, k in sampled frames) are how vivi labels frames without them
(docs/reference.md, "Choices the papers leave open").
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["frame_labels_from_boxes", "pm_k_accuracy", "video_robustness"]


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


@torch.no_grad()
def video_robustness(classifier: nn.Module, data: str | Path, detector: str = "groundtruth", k: int = 10,
                     resolution: int = 64, batch_size: int = 64, device: str = "cpu") -> dict:
    """pm-k robustness of ``classifier`` on the sampled frames of an ingested dataset (module docstring)."""
    import torch.nn.functional as F

    from vivi.data.boxes import load_detections
    from vivi.data.reader import VideoDataset
    dataset = VideoDataset(data)
    detections = load_detections(data, detector)
    classifier.eval()
    predictions, labels, shots = [], [], []
    for v, video in enumerate(dataset.videos):
        frames = [dataset.read_frame(video, f) for f in range(video.num_frames)]
        for start in range(0, len(frames), batch_size):
            chunk = np.stack(frames[start:start + batch_size])
            x = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div(255)
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
            predictions.append(classifier(x.to(device)).argmax(1).cpu().numpy())
        labels += [frame_labels_from_boxes(detections.frame_boxes(video.key, f)) for f in range(video.num_frames)]
        shots += [v * 100_000 + s for s in video.frame_shot]
    predictions, labels = np.concatenate(predictions), np.asarray(labels)
    anchors = np.flatnonzero(labels >= 0)
    result = pm_k_accuracy(predictions, labels, np.asarray(shots), anchors, k=k)
    result["frames"] = int(len(labels))
    return result


def robustness_from_task(checkpoint, task_dir: str | Path, data: str | Path, detector: str = "groundtruth",
                         k: int = 10, lr: float = 0.01, steps: int = 500, resolution: int = 64,
                         batch_size: int = 64, seed: int = 0, device: str = "cpu") -> dict:
    """Fine-tune ``checkpoint`` on a labeled image task (train800val200) whose classes are named like
    the detector's, then measure its pm-k robustness on the video frames of ``data`` (frames
    labelled by their largest box). The synthetic world's ``object_class`` task and its
    ``groundtruth`` detections share class names: ``vivi robustness`` does exactly this.
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
    if not any(len(detections.frame_boxes(v.key, f)) for v in VideoDataset(data).videos for f in range(v.num_frames)):
        raise ValueError(f"the detections {detector!r} of {data} hold no box, so no frame has a label: re-run "
                         "`vivi detect` (a lower --min-score, or another detector)")
    config = vtab.FinetuneConfig(resolution=resolution, batch_size=batch_size, device=device)
    split = load_split(task, "train800val200")
    classifier = vtab.finetune(load_eval_encoder(checkpoint, seed=seed), split, len(names),
                              vtab.Setting(lr, steps), config, seed)
    result = video_robustness(classifier, data, detector, k=k, resolution=resolution,
                              batch_size=batch_size, device=device)
    result.update({"checkpoint": str(checkpoint), "task": str(task_dir), "k": k})
    return result
