"""Object-level nearest-neighbour metric (Object-centric §5.1, "Effect of the contrastive loss", and
Table 2; docs/reference.md, "Object metric").

The fraction of objects whose nearest neighbour in representation space -- over all objects of
a fixed sample of batches (Object-centric Table 2: 50 batches of 8 videos) -- has the same class. An object's
representation is the feature-grid column at its box centre (``forward_features(x)["grid"]`` +
:func:`vivi.losses.object.extract_box_features`, boxes normalised x0, y0, x1, y1), the same
feature the object loss trains. Nearest = largest cosine similarity, the object itself excluded.
Frames are read at the encoder's input size (the training frame size of its checkpoint, as
``vivi embed`` and :func:`vivi.api.embed` use; 224, the papers' size, for a ``random:NAME``
encoder), so boxes are seen at the scale the encoder learned them.

Neighbours come from the whole pool, the object's own video included (``exclude_same_video=False``,
the default of the library and of ``vivi objects``): Object-centric Table 2 counts "all objects in
50 batches of 8 videos" and names no exclusion. ``exclude_same_video=True`` (``--exclude-same-video``)
asks the harder question across videos (docs/reference.md, "Choices the papers leave open").

Every object counts once: a shot with fewer sampled frames than a clip takes repeats its frames
(``vivi.data.clips``), and a repeated frame's boxes are the same objects, so objects are kept
once per (video, frame, box). Counted, the copies would be each other's nearest neighbours and
inflate the number of trials of Fisher's test.

Two models are compared with Fisher's exact test on the 2x2 table of their hit / miss counts
(:func:`fisher_test`, scipy, two-sided).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["collect_object_features", "compare_object_metric", "fisher_test", "input_size", "nearest_neighbour_hits",
           "object_nn_metric"]


def nearest_neighbour_hits(features: np.ndarray, labels: np.ndarray,
                           groups: np.ndarray | None = None) -> tuple[int, int]:
    """(hits, objects): how many objects have a same-class nearest neighbour (cosine, self
    excluded; with ``groups``, objects of the same group are excluded too)."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    if len(features) < 2:
        raise ValueError("the nearest-neighbour metric needs at least two objects")
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    if groups is not None:
        groups = np.asarray(groups)
        similarity[groups[:, None] == groups[None, :]] = -np.inf
    has_candidate = np.isfinite(similarity).any(axis=1)
    nearest = similarity.argmax(axis=1)
    hits = (labels[nearest] == labels) & has_candidate
    return int(hits.sum()), int(has_candidate.sum())


def fisher_test(hits_a: int, total_a: int, hits_b: int, total_b: int) -> dict:
    """Two-sided Fisher's exact test of two hit rates: ``{"odds_ratio", "p_value"}``."""
    from scipy.stats import fisher_exact
    table = [[hits_a, total_a - hits_a], [hits_b, total_b - hits_b]]
    odds, p = fisher_exact(table, alternative="two-sided")
    return {"odds_ratio": float(odds), "p_value": float(p)}


@torch.no_grad()
def collect_object_features(encoder: nn.Module, data: str | Path, detector: str, *, batches: int = 50,
                            videos_per_batch: int = 8, shots: int = 4, frames: int = 8, size: int | None = None,
                            seed: int = 0, device: str = "cpu") -> dict[str, np.ndarray]:
    """Box features, labels and video ids of the objects in a fixed sample of clip batches, each
    object once (see the module docstring); ``batches`` and ``videos`` say how many were sampled
    (fewer than asked when the dataset has fewer videos with ``shots`` shots: one pass at most).
    ``size``: frames are resized and centre-cropped to it; None, the encoder's :func:`input_size`."""
    from vivi.data.clips import ClipConfig, make_loader
    from vivi.losses.object import extract_box_features
    size = size or input_size(encoder)
    config = ClipConfig(shots=shots, frames=frames, size=size, detector=detector)
    loader = make_loader(data, config, batch_size=videos_per_batch, seed=seed, workers=0, infinite=False,
                         shuffle=True, drop_last=False)
    encoder.eval()
    feats, labels, ids = [], [], []      # ids: (video, frame, box slot) of every object
    used = 0
    for b, batch in enumerate(loader):
        if b == batches:
            break
        used += 1
        x = batch["frames"].flatten(0, 2).float().div(255).to(device)
        grid = encoder.forward_features(x)["grid"]
        box_labels = batch["box_labels"].flatten(0, 2)
        valid = box_labels >= 0
        boxes = batch["boxes"].flatten(0, 2).to(device)
        r = extract_box_features(grid, boxes, tuple(x.shape[-2:]), valid=valid.to(device)).cpu()
        feats.append(r[valid].numpy())
        labels.append(box_labels[valid].numpy())
        video = batch["video"][:, None].expand(-1, shots * frames).reshape(-1, 1).expand_as(valid)
        frame = batch["frame_index"].reshape(-1, 1).expand_as(valid)
        slot = torch.arange(valid.shape[1]).expand_as(valid)
        ids.append(torch.stack([video[valid], frame[valid], slot[valid]], 1).numpy())
    if not feats:
        raise ValueError(f"{data}: no clip of {shots} shots could be sampled")
    ids_all = np.concatenate(ids)
    _, first = np.unique(ids_all, axis=0, return_index=True)
    keep = np.sort(first)
    if len(keep) < 2:
        raise ValueError(f"{data}: fewer than two objects with detections {detector!r} in the sampled batches")
    return {"features": np.concatenate(feats)[keep], "labels": np.concatenate(labels)[keep],
            "videos": ids_all[keep, 0], "batches": used, "sampled_videos": len(np.unique(ids_all[:, 0])),
            "size": size}


def input_size(encoder: nn.Module) -> int:
    """The side the encoder was trained at (``input_size``, set by :func:`vivi.api.load_encoder`
    from the checkpoint's ``augment.size``); 224, the papers' size, for an encoder without one."""
    return int(getattr(encoder, "input_size", 224))


def object_nn_metric(encoder: nn.Module, data: str | Path, detector: str = "groundtruth",
                     exclude_same_video: bool = False, **sample) -> dict:
    """Same-class nearest-neighbour rate of the objects of ``data`` (see the module docstring).
    ``sample``: keyword arguments of :func:`collect_object_features` (batches, videos_per_batch, ...)."""
    found = collect_object_features(encoder, data, detector, **sample)
    hits, total = nearest_neighbour_hits(found["features"], found["labels"],
                                         found["videos"] if exclude_same_video else None)
    if total == 0:
        raise ValueError(f"{data}: the {found['sampled_videos']} sampled video(s) leave no object a neighbour "
                         "from another video; ingest more videos, or allow same-video neighbours (leave out "
                         "--exclude-same-video)")
    return {"hits": hits, "objects": total, "rate": hits / total, "exclude_same_video": exclude_same_video,
            "batches": found["batches"], "videos": found["sampled_videos"], "size": found["size"]}


def compare_object_metric(checkpoints: list[str | Path], data: str | Path, detector: str = "groundtruth",
                          exclude_same_video: bool = False, seed: int = 0, **sample) -> dict:
    """The object metric of each checkpoint on the same sample of objects, and, for two, Fisher's
    exact test between their hit rates (Object-centric Table 2). ``random:NAME`` is a random-init encoder."""
    from vivi.eval.transfer import check_setting, load_eval_encoder
    flags = {"batches": "--batches", "size": "--size"}
    for name in ("batches", "videos_per_batch", "shots", "frames", "size"):
        if sample.get(name) is not None:
            check_setting(name, sample[name], flag=flags.get(name), integer=True, at_least=1)
    if len(set(map(str, checkpoints))) < len(checkpoints):
        raise ValueError(f"the same checkpoint is given twice ({', '.join(map(str, checkpoints))}): "
                         "pass different ones to compare")
    results = {str(c): object_nn_metric(load_eval_encoder(c, seed=seed), data, detector, exclude_same_video,
                                        seed=seed, **sample) for c in checkpoints}
    out = {"data": str(data), "detector": detector, "checkpoints": results}
    if len(results) == 2:
        a, b = results.values()
        out["fisher"] = fisher_test(a["hits"], a["objects"], b["hits"], b["objects"])
    return out
