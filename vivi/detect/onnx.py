"""``onnx:PATH``: an ONNX detector run by onnxruntime on the CPU, with a declared output convention.

The spec names the model file and, after ``?``, options as ``key=value`` pairs joined by ``&``::

    onnx:yolo.onnx?convention=boxes_scores_labels&classes=coco&size=640
    onnx:nanodet.onnx?convention=gfl&classes=names.txt&channels=bgr&mean=103.53,116.28,123.675&std=57.375,57.12,58.395

(quote the spec in a shell: ``&`` and ``?`` are special there). :data:`OPTIONS` lists every key.
Each frame is resized to the network input (letterboxed by default: scaled to fit, anchored at
the top-left, padded with grey 114), converted to the declared channel order and normalisation,
run, decoded by its convention (``vivi.detect.onnx_outputs``), and the boxes are mapped back to [0, 1]
coordinates of the stored frame.

The model is checked when the detector is built, by one forward pass on a blank image: outputs
that do not fit the declared convention stop with an error that lists what the model gave and
what was expected, before ``detect_dataset`` writes anything.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import cv2
import numpy as np

from .base import ImageDetector
from .coco import COCO_CLASSES
from .onnx_outputs import boxes_scores_labels_decode, gfl_decode

CONVENTIONS = ("gfl", "boxes_scores_labels")


@dataclass(frozen=True)
class OnnxConfig:
    """The options of an ``onnx:`` spec (what each means: :data:`OPTIONS`)."""
    convention: str                              # required: an ONNX file does not say what its outputs mean
    classes: str                                 # required
    size: tuple[int, int] | None = None          # (width, height)
    resize: str = "letterbox"
    channels: str = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)    # with mean 0: inputs in [0, 1]
    layout: str | None = None
    name: str | None = None
    strides: tuple[int, ...] = (8, 16, 32)       # gfl
    sigmoid: bool = False                        # gfl
    iou: float = 0.6                             # gfl: NanoDet's NMS threshold
    conf: float = 0.05                           # gfl: Object-centric §4.1's score filter, so NMS sees what may be kept
    coords: str = "pixels"                       # boxes_scores_labels
    outputs: tuple[str, ...] | None = None       # boxes_scores_labels

OPTIONS = {
    "convention": "gfl (NanoDet-style GFL heads) or boxes_scores_labels (decoded in the graph); required",
    "classes": "class names file, one per line, or coco; required",
    "size": "network input N or WxH (default: the model's static input shape)",
    "resize": "letterbox (default) or stretch",
    "channels": "rgb (default) or bgr",
    "mean": "three values subtracted from 0..255 pixels (default 0,0,0)",
    "std": "three values the pixels are then divided by (default 255,255,255)",
    "layout": "nchw or nhwc (default: from the model's input)",
    "name": "name the detections are stored under (default: the model file's stem)",
    "strides": "gfl: strides of the levels (default 8,16,32)",
    "sigmoid": "gfl: 1 if the class outputs are logits (default 0)",
    "iou": "gfl: NMS IoU threshold (default 0.6)",
    "conf": "gfl: score threshold before NMS (default 0.05)",
    "coords": "boxes_scores_labels: pixels (of the network input, default) or normalized",
    "outputs": "boxes_scores_labels: names of the boxes, scores and labels outputs (default: by name, else in order)",
}


def parse_onnx_spec(argument: str) -> tuple[Path, OnnxConfig]:
    """``PATH?key=value&...`` -> (model path, config); unknown keys or bad values raise ValueError."""
    path, _, query = argument.partition("?")
    values = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise ValueError(f"unknown onnx option {key!r}; options: "
                             + "; ".join(f"{k}: {v}" for k, v in OPTIONS.items()))
        values[key] = value
    for key in ("convention", "classes"):
        if not values.get(key):
            raise ValueError(f"onnx:{path} needs {key}=... ({OPTIONS[key]}), e.g. "
                             "onnx:model.onnx?convention=boxes_scores_labels&classes=coco")
    try:
        config = OnnxConfig(**{k: _parse_value(k, v) for k, v in values.items()})
    except ValueError as error:
        raise ValueError(f"onnx:{argument}: {error}") from None
    choices = {"convention": CONVENTIONS, "resize": ("letterbox", "stretch"), "channels": ("rgb", "bgr"),
               "layout": ("nchw", "nhwc", None), "coords": ("pixels", "normalized")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ValueError(f"onnx option {key}={getattr(config, key)}: must be one of "
                             f"{', '.join(a for a in allowed if a)}")
    return Path(path), config


def _parse_value(key: str, value: str):
    if key == "size":
        width, _, height = value.lower().partition("x")
        return int(width), int(height or width)
    if key in ("mean", "std"):
        numbers = tuple(float(v) for v in value.split(","))
        if len(numbers) != 3:
            raise ValueError(f"{key} needs three comma-separated values, not {value!r}")
        return numbers
    if key == "strides":
        return tuple(int(v) for v in value.split(","))
    if key == "outputs":
        return tuple(value.split(","))
    if key == "sigmoid":
        return value.lower() in ("1", "true", "yes")
    if key in ("iou", "conf"):
        return float(value)
    return value


def read_class_names(classes: str) -> list[str]:
    """Class names from a file (one per line, blank lines skipped), or the COCO-80 list for ``coco``."""
    if classes == "coco":
        return list(COCO_CLASSES)
    path = Path(classes)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {path} does not exist (one name per line, or classes=coco)")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"class names file {path} is empty")
    return names


class OnnxDetector(ImageDetector):
    """Runs one frame at a time (exports usually fix the batch at 1); ``threads`` intra-op threads."""

    def __init__(self, model: str | Path, config: OnnxConfig, *, threads: int | None = None):
        self.path, self.config = Path(model), config
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} does not exist")
        self.class_names = read_class_names(config.classes)
        self.name = config.name or re.sub(r"[^A-Za-z0-9_.-]", "_", self.path.stem)
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ValueError("onnx detectors need onnxruntime: pip install onnxruntime") from error
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as error:     # onnxruntime raises its own exception types for unreadable graphs
            raise ValueError(f"{self.path} is not a model onnxruntime can load: {error}") from None
        self._read_input()
        self._plan_outputs()

    def settings(self) -> dict:
        settings = {k: v for k, v in asdict(self.config).items() if k != "name"}
        return {"model": str(self.path.resolve()), **settings, "size": list(self.size)}

    def detect_images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return [self._detect(image) for image in images]

    # -- input -------------------------------------------------------------------------------------------
    def _read_input(self) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.path}: expected one image input of rank 4 (1, 3, H, W) or (1, H, W, 3), got "
                             + ", ".join(f"{i.name} {i.shape}" for i in inputs))
        self._input, shape = inputs[0].name, inputs[0].shape
        layout = self.config.layout or ("nchw" if shape[1] == 3 else "nhwc" if shape[3] == 3 else None)
        if layout is None:
            raise ValueError(f"{self.path}: cannot tell the layout of input {shape}; give layout=nchw or nhwc")
        self.layout = layout
        height, width = shape[2:4] if layout == "nchw" else shape[1:3]
        static = (width, height) if isinstance(width, int) and isinstance(height, int) else None
        if self.config.size and static and tuple(self.config.size) != static:
            raise ValueError(f"{self.path}: size={self.config.size[0]}x{self.config.size[1]} but the model's "
                             f"input is fixed at {static[0]}x{static[1]}")
        if not (self.config.size or static):
            raise ValueError(f"{self.path}: the input size is not fixed in the model ({shape}); give size=WxH")
        self.size: tuple[int, int] = tuple(self.config.size or static)
        if inputs[0].type not in ("tensor(float)", "tensor(uint8)"):
            raise ValueError(f"{self.path}: input type {inputs[0].type} (expected float or uint8)")
        self._uint8 = inputs[0].type == "tensor(uint8)"

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Network input (1, ...) for an RGB frame, and the x, y scales from frame to network pixels."""
        h, w = image.shape[:2]
        width, height = self.size
        if self.config.resize == "letterbox":
            scale = min(width / w, height / h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            canvas = np.full((height, width, 3), 114, np.uint8)
            canvas[:nh, :nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            scales = (nw / w, nh / h)
        else:
            canvas = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            scales = (width / w, height / h)
        if self.config.channels == "bgr":
            canvas = canvas[..., ::-1]
        mean, std = np.float32(self.config.mean), np.float32(self.config.std)
        x = canvas if self._uint8 else (canvas.astype(np.float32) - mean) / std
        if self.layout == "nchw":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None]), scales

    # -- outputs -----------------------------------------------------------------------------------------
    def _plan_outputs(self) -> None:
        """Match the outputs of a forward pass on a blank image to the declared convention."""
        outputs = self.session.get_outputs()
        self._outputs = [o.name for o in outputs]
        blank, _ = self._prepare(np.full((self.size[1], self.size[0], 3), 114, np.uint8))
        arrays = self.session.run(self._outputs, {self._input: blank})
        found = ", ".join(f"{o.name} {tuple(a.shape)}" for o, a in zip(outputs, arrays))
        if self.config.convention == "gfl":
            self._plan_gfl([_unbatch(a, 3) for a in arrays], found)
        else:
            self._plan_boxes_scores_labels(arrays, found)

    def _plan_gfl(self, arrays: list[np.ndarray], found: str) -> None:
        width, height = self.size
        classes, strides = len(self.class_names), self.config.strides
        self._grids = [(math.ceil(height / s), math.ceil(width / s)) for s in strides]
        counts = [rows * cols for rows, cols in self._grids]
        self._levels = None
        if len(arrays) == 2 * len(strides):            # one class and one box output per level (NanoDet, NanoDet-m)
            scores, boxes = {}, {}
            for i, a in enumerate(arrays):
                if a.ndim == 2 and a.shape[0] in counts:
                    level = counts.index(a.shape[0])
                    if a.shape[1] == classes:
                        scores[level] = i
                    elif a.shape[1] % 4 == 0 and a.shape[1] >= 8:
                        boxes[level] = i
            if len(scores) == len(boxes) == len(strides):
                self._levels = ("split", [(scores[level], boxes[level]) for level in range(len(strides))])
        elif len(arrays) == 1:                            # all levels concatenated, classes then boxes (NanoDet-Plus)
            a = arrays[0]
            if a.ndim == 2 and a.shape[0] == sum(counts) and a.shape[1] > classes and (a.shape[1] - classes) % 4 == 0:
                self._levels = ("joined", np.cumsum([0] + counts))
        if self._levels is None:
            raise ValueError(
                f"{self.path}: outputs [{found}] do not match the gfl convention for a {width}x{height} input, "
                f"{classes} classes and strides {','.join(map(str, strides))}: expected {len(strides)} class-score "
                f"outputs (1, N, {classes}) and {len(strides)} box outputs (1, N, 4 x bins) with N = "
                f"{', '.join(map(str, counts))}, or one output (1, {sum(counts)}, {classes} + 4 x bins)")

    def _plan_boxes_scores_labels(self, arrays: list[np.ndarray], found: str) -> None:
        names = self._outputs
        if self.config.outputs:
            missing = [n for n in self.config.outputs if n not in names]
            if len(self.config.outputs) != 3 or missing:
                raise ValueError(f"{self.path}: outputs={','.join(self.config.outputs)} must name three of the "
                                 f"model's outputs [{found}]")
            order = [names.index(n) for n in self.config.outputs]
        else:
            by_name = [[i for i, n in enumerate(names) if any(w in n.lower() for w in words)]
                       for words in (("box",), ("score", "conf"), ("label", "class"))]
            if all(len(m) == 1 for m in by_name) and len({m[0] for m in by_name}) == 3:
                order = [m[0] for m in by_name]
            elif len(names) == 3:
                order = [0, 1, 2]
            else:
                raise ValueError(f"{self.path}: outputs [{found}] do not match the boxes_scores_labels convention: "
                                 "expected three outputs boxes (1, n, 4), scores (1, n), labels (1, n); "
                                 "name them with outputs=BOXES,SCORES,LABELS")
        boxes, scores, labels = (arrays[i] for i in order)
        boxes, scores, labels = _unbatch(boxes, 3), _unbatch(scores, 2), _unbatch(labels, 2)
        if not (boxes.ndim == 2 and boxes.shape[1] == 4 and scores.ndim == labels.ndim == 1
                and len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"{self.path}: outputs [{found}] do not match the boxes_scores_labels convention: "
                             "expected boxes (1, n, 4) or (n, 4), scores (1, n) or (n,), labels (1, n) or (n,), "
                             f"used in the order {', '.join(names[i] for i in order)}")
        self._order = order

    def _detect(self, image: np.ndarray) -> np.ndarray:
        x, (sx, sy) = self._prepare(image)
        arrays = self.session.run(self._outputs, {self._input: x})
        c = self.config
        if c.convention == "gfl":
            arrays = [_unbatch(a, 3) for a in arrays]
            kind, plan = self._levels
            if kind == "split":
                scores, dists = [arrays[i] for i, _ in plan], [arrays[j] for _, j in plan]
            else:
                n = len(self.class_names)
                scores = [arrays[0][a:b, :n] for a, b in zip(plan[:-1], plan[1:])]
                dists = [arrays[0][a:b, n:] for a, b in zip(plan[:-1], plan[1:])]
            boxes = gfl_decode(scores, dists, list(c.strides), self._grids, conf=c.conf, iou=c.iou, sigmoid=c.sigmoid)
        else:
            raw_boxes, raw_scores, raw_labels = (arrays[i] for i in self._order)
            boxes = boxes_scores_labels_decode(_unbatch(raw_boxes, 3), _unbatch(raw_scores, 2),
                                               _unbatch(raw_labels, 2), input_size=self.size,
                                               normalized=c.coords == "normalized")
            bad = (boxes[:, 4] < 0) | (boxes[:, 4] >= len(self.class_names))
            if bad.any():
                raise ValueError(f"{self.path}: label {int(boxes[bad][0, 4])} is outside the "
                                 f"{len(self.class_names)} class names of {c.classes}")
        h, w = image.shape[:2]
        boxes[:, :4] = np.clip(boxes[:, :4] / np.array([sx * w, sy * h, sx * w, sy * h], np.float32), 0, 1)
        return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def _unbatch(a: np.ndarray, rank: int) -> np.ndarray:
    """Drop a leading batch dimension of 1 from an array of the given batched rank."""
    return a[0] if a.ndim == rank and a.shape[0] == 1 else a

