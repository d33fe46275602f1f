"""Output conventions of ONNX detectors: raw network outputs -> boxes in the network's input frame.

Two conventions, each a function from the outputs of one image to an (n, 6) array of x0, y0, x1,
y1 (pixels of the network input), class id, score:

* ``gfl`` — NanoDet-style Generalized Focal Loss heads (Li et al., *Generalized Focal Loss*,
  NeurIPS 2020; NanoDet, RangiLyu 2020). Every anchor point of a stride-``s`` grid predicts class
  scores and, for each side of its box (left, top, right, bottom), a distribution over ``bins``
  distances 0, 1, ..., bins - 1 (in units of ``s``); the distance is the distribution's expectation
  (softmax over the bins, the paper's "integral" decode) times ``s``, measured from the anchor's
  centre ((col + 0.5) s, (row + 0.5) s). Candidates above ``conf`` go through per-class NMS.
* ``boxes_scores_labels`` — exports that decode and suppress inside the graph (torchvision-style,
  many YOLO "end-to-end" exports): boxes (n, 4) xyxy, scores (n,), labels (n,).
"""
from __future__ import annotations

import numpy as np

MAX_CANDIDATES = 1000     # highest-scoring (anchor, class) pairs that enter NMS, as NanoDet's post-processing
MAX_DETECTIONS = 100      # boxes kept per image after NMS (detect_dataset keeps --max-per-frame of them)


def gfl_decode(scores: list[np.ndarray], distributions: list[np.ndarray], strides: list[int],
               grids: list[tuple[int, int]], *, conf: float, iou: float, sigmoid: bool = False) -> np.ndarray:
    """Boxes from per-level class scores (N_l, C) and side distributions (N_l, 4 * bins).

    ``grids`` holds each level's (rows, cols); anchors are numbered row by row.
    """
    boxes, labels, values = [], [], []
    for score, dist, stride, (rows, cols) in zip(scores, distributions, strides, grids):
        if sigmoid:
            score = 1 / (1 + np.exp(-score))
        anchor, label = np.nonzero(score > conf)
        if not len(anchor):
            continue
        bins = dist.shape[1] // 4
        logits = dist[anchor].reshape(-1, 4, bins)
        prob = np.exp(logits - logits.max(axis=2, keepdims=True))
        prob /= prob.sum(axis=2, keepdims=True)
        side = (prob @ np.arange(bins, dtype=np.float32)) * stride                  # (n, 4): l, t, r, b
        cx, cy = (anchor % cols + 0.5) * stride, (anchor // cols + 0.5) * stride
        boxes.append(np.stack([cx - side[:, 0], cy - side[:, 1], cx + side[:, 2], cy + side[:, 3]], axis=1))
        labels.append(label)
        values.append(score[anchor, label])
    if not boxes:
        return np.zeros((0, 6), np.float32)
    boxes, labels, values = np.concatenate(boxes), np.concatenate(labels), np.concatenate(values)
    top = np.argsort(-values, kind="stable")[:MAX_CANDIDATES]
    boxes, labels, values = boxes[top], labels[top], values[top]
    keep = batched_nms(boxes, values, labels, iou)[:MAX_DETECTIONS]
    return _stack(boxes[keep], labels[keep], values[keep])


def boxes_scores_labels_decode(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
                               input_size: tuple[int, int], normalized: bool) -> np.ndarray:
    """Boxes (n, 4) xyxy, in pixels of the network input or normalised to it, with scores and labels."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if normalized:
        width, height = input_size
        boxes = boxes * np.array([width, height, width, height], np.float32)
    return _stack(boxes, np.asarray(labels).reshape(-1), np.asarray(scores, np.float32).reshape(-1))


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy NMS run separately per class, highest score first.

    Shifting each class's boxes by a class-dependent offset keeps classes from suppressing each other.
    """
    if not len(boxes):
        return np.zeros(0, np.int64)
    offset = labels.astype(np.float32)[:, None] * (np.abs(boxes).max() + 1) * 2
    return nms(boxes + offset, scores, iou)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter <= iou * (area[i] + area[rest] - inter)]
    return np.asarray(keep, np.int64)


def _stack(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = np.zeros((len(boxes), 6), np.float32)
    out[:, :4], out[:, 4], out[:, 5] = boxes, labels, scores
    return out
