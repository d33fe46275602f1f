"""The VIVI model: one frame encoder and the heads of the enabled losses, as one ``nn.Module``.

Variants are composed from the config, not flagged inside the code paths: a head exists only
when its loss is enabled (``frame_head`` = exemplar or rotation head, ``shot_projection`` +
``predictor`` for InfoNCE or ``shot_order_head``, ``object_class_head``, ``image_class_head``);
the attribute of a disabled one is None, and ``uses_boxes`` / ``uses_labelled_images`` say which
inputs ``forward`` needs.

``forward`` takes the augmented frames of a step and returns the **unweighted** loss terms and
the diagnostics, so that one DDP-wrapped call covers every parameter. The training loop weights
the terms (:func:`weighted_terms`).

Order of operations in one step (VIVI §3, app. A; Object-centric §3; docs/reference.md, "The
hierarchy and batch geometry"):

1. frames (N, K, F, 3, S, S) -> flat (N·K·F, 3, S, S); rotation appends the 3 rotated copies;
2. encoder forward once -> pre-logits (and the feature grid for the object loss);
3. frame/shot level: exemplar head + semi-hard triplet with the shot as label (Ex-YT-F: the F
   augmented copies of one frame are the exemplar set), or the 4-way rotation head;
4. video level: shot embedding = mean of the frame pre-logits of the shot (unrotated copies)
   -> linear 512 -> InfoNCE with the MLP / bilinear / LSTM predictor, or shot order;
5. object level: grid column at each box centre -> triplet over detector classes (and/or the
   600-way BCE head), with the random-box ablations applied first;
6. co-training: the labelled images through the same encoder (a separate call, so BatchNorm
   statistics are not shared; co-trained presets use GroupNorm + WS anyway) -> linear -> CE.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from vivi.losses import (
    ExemplarLoss,
    ObjectLoss,
    RotationLoss,
    ShotOrderLoss,
    VideoInfoNCELoss,
    ablate_objects,
    extract_box_features,
    reverse_shots_randomly,
    rotate_batch,
)
from vivi.models import create_encoder, heads
from vivi.train.config import TrainConfig

__all__ = ["CompiledOrEager", "VIVIModel", "build_encoder", "encoder_spec", "weighted_terms"]


def encoder_spec(config: TrainConfig) -> dict:
    """Name and overrides that rebuild the encoder (stored with every checkpoint and export)."""
    overrides: dict = {"norm": config.model.norm}
    if config.model.width is not None:
        overrides["width"] = config.model.width
    return {"name": config.model.encoder, "overrides": overrides}


def build_encoder(spec: dict) -> nn.Module:
    return create_encoder(spec["name"], **spec["overrides"])


class CompiledOrEager:
    """``torch.compile(function)``, which falls back to ``function`` itself for good when compiling
    fails (a missing C++ compiler, an operation the compiler does not support). torch.compile
    compiles at a call, so that is where the error comes: the call is repeated eagerly and the run
    goes on with one line on stderr. Only compiler errors are caught; an error of the computation
    itself comes again from the eager call."""

    def __init__(self, function, name: str) -> None:
        self.function, self.name = function, name
        self.compiled = torch.compile(function)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as error:
                reason = " ".join(str(error).split())[:200]
                print(f"note: run.compile: torch.compile of {self.name} failed ({type(error).__name__}: {reason}); "
                      "the run goes on without compiling", file=sys.stderr)
                self.compiled = None
        return self.function(*args)


class VIVIModel(nn.Module):
    """Encoder + heads of the enabled losses (see the module docstring).

    Args:
        config: the training config; ``model`` and ``loss`` sections decide the heads.

    ``forward(frames, boxes=None, box_labels=None, images=None, image_labels=None,
    generator=None)``: frames float (N, K, F, 3, S, S) in [0, 1] (augmented); boxes (N, K, F, M, 4)
    normalised in the augmented frames, box_labels (N, K, F, M) long with -1 = invalid; images
    (B, 3, S', S') and image_labels (B,) for co-training; ``generator`` drives the shot reversal
    and the random-box ablations. Returns ``(terms, diagnostics)``: dicts of scalar tensors,
    terms unweighted and with gradients, diagnostics detached (with ``NAME/chance``: each term's
    chance level, :meth:`chance_levels`).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        loss, model = config.loss, config.model
        self.encoder = build_encoder(encoder_spec(config))
        dim = self.encoder.num_features
        # Every head and loss is an attribute, None where its loss is off; the parameter names
        # (and so the checkpoints' keys) are those of the heads that exist.
        self.frame_head = self.frame_loss = None
        if loss.frame == "exemplar":
            self.frame_head = heads.ExemplarHead(dim, model.exemplar_dim)
            self.frame_loss = ExemplarLoss(margin=loss.margin, group_shots=loss.exemplar_group_shots)
        elif loss.frame == "rotation":
            self.frame_head = heads.RotationHead(dim)
            self.frame_loss = RotationLoss()
        self.shot_projection = self.predictor = self.shot_order_head = self.video_loss = None
        if loss.video != "none":
            self.shot_projection = heads.ShotProjection(dim, model.shot_dim)
        if loss.video == "infonce":
            k = config.data.shots
            self.predictor = {"mlp": lambda: heads.MLPCritic(model.shot_dim, hidden=model.predictor_hidden),
                              "bilinear": lambda: heads.BilinearCritic(model.shot_dim),
                              "lstm": lambda: heads.LSTMPredictor(model.shot_dim, hidden=model.predictor_hidden,
                                                            max_offset=max(1, k - 1), output=model.lstm_output)
                              }[loss.predictor]()
            self.video_loss = VideoInfoNCELoss(scope=loss.infonce_scope, group_videos=loss.infonce_group_videos,
                                               pair_reduction=loss.infonce_pairs)
        elif loss.video == "shot_order":
            self.shot_order_head = heads.ShotOrderHead(model.shot_dim, num_shots=config.data.shots,
                                                       hidden=model.order_hidden)
            self.video_loss = ShotOrderLoss()
        self.object_class_head = self.object_loss = None
        if loss.object_weight > 0:
            terms = tuple(loss.object_terms.split("+"))
            if "classification" in terms:
                self.object_class_head = heads.ObjectClassHead(dim, model.object_classes)
            self.object_loss = ObjectLoss(terms=terms, margin=loss.margin)
        self.image_class_head = nn.Linear(dim, model.image_classes) if loss.cotrain_weight > 0 else None
        self.encoder_channels_last = False    # use_channels_last() (run.channels_last)
        self.compiled_features = None         # compile_encoder(): torch.compile'd encoder.forward_features
        self.compiled_forward = None          # and encoder.forward (co-training images)

    @property
    def uses_boxes(self) -> bool:
        """The object loss is on: ``forward`` needs the boxes and their labels."""
        return self.object_loss is not None

    @property
    def uses_labelled_images(self) -> bool:
        """Co-training is on: ``forward`` needs a batch of labelled images."""
        return self.image_class_head is not None

    def use_channels_last(self) -> None:
        """NHWC memory format for the encoder's weights and inputs (faster convolutions on GPU)."""
        self.encoder.to(memory_format=torch.channels_last)
        self.encoder_channels_last = True

    def compile_encoder(self) -> None:
        """torch.compile the encoder's ``forward_features`` (what the step calls) and ``forward`` (the
        co-training images), each falling back to eager if compiling fails (:class:`CompiledOrEager`).
        The encoder module itself stays as it is: its parameter names, so the checkpoints, do not
        depend on the flag, and calling it directly (a probe in eval mode) runs eagerly."""
        self.compiled_features = CompiledOrEager(self.encoder.forward_features, "the encoder")
        self.compiled_forward = CompiledOrEager(self.encoder.forward, "the encoder (co-training images)")

    def forward(self, frames: torch.Tensor, boxes: torch.Tensor | None = None,
                box_labels: torch.Tensor | None = None, images: torch.Tensor | None = None,
                image_labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
                frame_labels: torch.Tensor | None = None):
        cfg = self.config.loss
        n, k, f = frames.shape[:3]
        flat = frames.flatten(0, 2)                                           # (N·K·F, 3, S, S)
        b = flat.shape[0]
        rotation_labels = None
        if cfg.frame == "rotation":
            flat, rotation_labels = rotate_batch(flat)                        # (4B, ...), copies share crop/colour
        if self.encoder_channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        features = (self.compiled_features or self.encoder.forward_features)(flat)
        pre_logits = features["pre_logits"].float()
        image_pre_logits = None
        if self.uses_labelled_images and images is not None:
            if self.encoder_channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            # same encoder, its own call (own BN batch)
            image_pre_logits = (self.compiled_forward or self.encoder)(images).float()
        # heads and losses in float32 even under bf16 autocast (triplet distances, LSTM, softmax)
        with torch.autocast(flat.device.type, enabled=False):
            terms: dict[str, torch.Tensor] = {}
            diagnostics: dict[str, torch.Tensor] = {}

            def record(name, value_and_diag):
                value, diag = value_and_diag
                terms[name] = value
                diagnostics.update({f"{name}/{key}": v.detach() for key, v in diag.items()})

            if cfg.frame == "exemplar":
                embeddings = self.frame_head(pre_logits)
                record("exemplar", self.frame_loss(embeddings.reshape(n, k, f, -1)))
            elif cfg.frame == "rotation":
                record("rotation", self.frame_loss(self.frame_head(pre_logits), rotation_labels))

            if cfg.video != "none":
                shots = self.shot_projection(pre_logits[:b].reshape(n, k, f, -1))  # (N, K, 512), unrotated copies
                if cfg.video == "infonce":
                    pred = self.predictor(shots)
                    record("infonce", self.video_loss(pred.queries, pred.keys, pred.target_shot))
                    predictions = pred.queries.shape[1] if cfg.infonce_pairs == "sum" else 1
                    diagnostics["infonce/chance"] = predictions * diagnostics["infonce/num_candidates"].log()
                else:
                    shots, order = reverse_shots_randomly(shots, generator=generator)
                    record("shot_order", self.video_loss(self.shot_order_head(shots), order))

            if self.uses_boxes:
                if boxes is None or box_labels is None:
                    raise ValueError("the object loss needs boxes and box_labels (set data.detector)")
                m = boxes.shape[-2]
                obj_boxes, obj_labels = boxes.reshape(b, m, 4), box_labels.reshape(b, m)
                valid = obj_labels >= 0
                if cfg.object_mode != "detector":
                    obj_boxes, obj_labels = ablate_objects(obj_boxes, obj_labels, cfg.object_mode,
                                                           num_classes=self.config.model.object_classes,
                                                           generator=generator)
                grid = features["grid"][:b].float()
                size = tuple(flat.shape[-2:])
                box_features = extract_box_features(grid, obj_boxes, size, valid=valid)      # (B, M, C)
                logits = self.object_class_head(box_features) if self.object_class_head is not None else None
                value, diag = self.object_loss(box_features, obj_labels, valid, class_logits=logits)
                terms["object"] = value
                diagnostics.update({f"object/{key}": v.detach() for key, v in diag.items()})
                diagnostics["object/boxes"] = valid.sum().float().detach()

            if self.uses_labelled_images:
                if images is None and frame_labels is not None:
                    # the training images' own classes (loss.cotrain_source=data): their first,
                    # unrotated copies
                    image_pre_logits, image_labels = pre_logits[:b], frame_labels.reshape(b)
                if image_pre_logits is None or image_labels is None:
                    raise ValueError("co-training needs a batch of labelled images")
                logits = self.image_class_head(image_pre_logits)
                terms["supervised"] = F.cross_entropy(logits, image_labels)
                diagnostics["supervised/accuracy"] = (logits.argmax(1) == image_labels).float().mean().detach()
            diagnostics.update({f"{name}/chance": torch.tensor(float(level))
                                for name, level in self.chance_levels().items() if name in terms})
            return terms, diagnostics

    def chance_levels(self) -> dict[str, float]:
        """The value of each unweighted term for an encoder that has learned nothing: equal triplet
        distances (the margin), uniform softmaxes (ln of the number of classes). InfoNCE's, which
        depends on the batch, comes with its diagnostics (ln of ``num_candidates``, times the
        predictions per video with ``loss.infonce_pairs=sum``); the object loss has one only as a
        triplet alone (its 600-way BCE has none comparable)."""
        cfg, model = self.config.loss, self.config.model
        levels = {"exemplar": cfg.margin, "rotation": math.log(4), "shot_order": math.log(2),
                  "supervised": math.log(model.image_classes)}
        if cfg.object_terms == "triplet":
            levels["object"] = cfg.margin
        return levels


def weighted_terms(config: TrainConfig, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named terms times their weights: L = L_frame + λ L_video + ω L_object + γ L_supervised."""
    weights = {"exemplar": 1.0, "rotation": 1.0, "infonce": config.loss.video_weight,
               "shot_order": config.loss.video_weight, "object": config.loss.object_weight,
               "supervised": config.loss.cotrain_weight}
    return {name: weights[name] * value for name, value in terms.items()}
