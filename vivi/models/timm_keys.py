"""vivi's encoder under timm's names: the parameter layout of timm's ResNetV2 and the map onto it.

timm (huggingface/pytorch-image-models, ``timm/models/resnetv2.py`` and ``timm/layers``) builds its
pre-activation ResNets in the layout of BiT, as vivi does (docs/models.md). timm is not a
dependency of vivi, so its layout is written down here as construction rules, from which
:func:`timm_state_shapes` derives every name and shape of a model's state dict:

- ``stem.conv``: 7×7 convolution, stride 2, 64·w channels, symmetric padding 3, no bias; then
  ``stem.pool``, a 3×3 max-pool with stride 2. The plain models (``stem_type=''``) pool with
  padding 1 (padded with -inf, as ``nn.MaxPool2d``); BiT's (``*_bit``, ``stem_type='fixed'``) first
  zero-pad by 1 (``stem.pad``, no parameters) and pool without padding.
- ``stages.{s}.blocks.{b}``: ``PreActBottleneck``, created in this order: ``downsample.conv``
  (1×1 with the stage's stride, in block 0 of every stage only; it reads the pre-activated input,
  and its ``norm`` is an ``Identity`` in pre-activation models), ``norm1``, ``conv1`` (1×1, c/4),
  ``norm2``, ``conv2`` (3×3 with the stride, padding 1), ``norm3``, ``conv3`` (1×1, c). Stage s
  has c = 256·w·2^s outputs; block 0 of stages 1-3 has stride 2. Every norm is the norm followed by
  a ReLU (``BatchNormAct2d``, ``GroupNormAct``), with no other parameters than the norm's.
- ``norm``: the final norm + ReLU; ``head.fc``: a 1×1 convolution with bias (num_classes, C, 1, 1)
  after the global average pool, absent with ``num_classes=0``.
- Norms: ``resnetv2_50`` / ``_101`` / ``_152`` use ``BatchNormAct2d`` (eps 1e-5) and plain
  convolutions (``create_conv2d``, no bias); BiT's use ``GroupNormAct`` (32 groups, eps 1e-5) and
  ``StdConv2d`` with eps 1e-8 (biased variance per output filter, as vivi's, whose eps is 1e-10).

vivi's ``ResNetV2`` (``resnet_v2.py``) with a 7×7/2 root, a pool, 64·w root channels and stage
strides 1, 2, 2, 2 computes what timm's does, unit for unit; only the names differ
(:func:`timm_name`). :func:`timm_target` says which timm model a vivi encoder becomes, or why none
does: the BatchNorm encoders are ``timm.create_model("resnetv2_50", num_classes=0)`` exactly. For
the GroupNorm + WS encoders the names and shapes are those of ``resnetv2_50x1_bit`` /
``resnetv2_50x3_bit``, but those constructors differ from vivi in two places (their stem's zero
padding before the max-pool, and WS eps 1e-8), so the exact model is ``resnetv2_50`` built with
timm's ``StdConv2d(eps=1e-10)`` and ``GroupNormAct``, which ``create_model`` accepts as keyword
arguments.

Input: vivi's encoder takes [0, 1] images and maps them to [-1, 1] itself; timm's models take the
normalised tensor, so feed them ``(x - 0.5) / 0.5``. timm's default_cfg of these models (mean and
std 0.5, ``IMAGENET_INCEPTION_MEAN`` / ``_STD``) is that same normalisation.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

from vivi.models.resnet_v2 import ResNetV2Config

__all__ = ["TIMM_MODELS", "TimmResNetV2", "TimmTarget", "from_timm", "timm_load_hint", "timm_model", "timm_name",
           "timm_state_shapes", "timm_target", "timm_target_of", "to_timm", "vivi_name"]


@dataclass(frozen=True)
class TimmResNetV2:
    """The construction arguments of one of timm's registered pre-activation ResNetV2 models."""
    layers: tuple[int, ...]          # blocks per stage
    width: int = 1                   # width_factor
    norm: str = "bn"                 # "bn": BatchNormAct2d + plain convs; "gn": GroupNormAct(32) + StdConv2d
    stem: str = ""                   # "": max-pool padding 1; "fixed": zero pad 1, then pool without padding
    ws_eps: float | None = None      # StdConv2d eps (None: plain convolutions)


TIMM_MODELS: dict[str, TimmResNetV2] = {
    "resnetv2_50": TimmResNetV2((3, 4, 6, 3)),
    "resnetv2_101": TimmResNetV2((3, 4, 23, 3)),
    "resnetv2_152": TimmResNetV2((3, 8, 36, 3)),
    "resnetv2_50x1_bit": TimmResNetV2((3, 4, 6, 3), 1, "gn", "fixed", 1e-8),
    "resnetv2_50x3_bit": TimmResNetV2((3, 4, 6, 3), 3, "gn", "fixed", 1e-8),
    "resnetv2_101x1_bit": TimmResNetV2((3, 4, 23, 3), 1, "gn", "fixed", 1e-8),
    "resnetv2_101x3_bit": TimmResNetV2((3, 4, 23, 3), 3, "gn", "fixed", 1e-8),
    "resnetv2_152x2_bit": TimmResNetV2((3, 8, 36, 3), 2, "gn", "fixed", 1e-8),
    "resnetv2_152x4_bit": TimmResNetV2((3, 8, 36, 3), 4, "gn", "fixed", 1e-8),
}


def _norm_shapes(prefix: str, channels: int, norm: str) -> dict[str, tuple[int, ...]]:
    shapes = {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}
    if norm == "bn":
        shapes.update({f"{prefix}.running_mean": (channels,), f"{prefix}.running_var": (channels,),
                       f"{prefix}.num_batches_tracked": ()})
    return shapes


def timm_state_shapes(model: str | TimmResNetV2, num_classes: int = 0) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every entry of the state dict of timm's ``model`` (a name in
    :data:`TIMM_MODELS` or its arguments), in the order timm registers them."""
    spec = TIMM_MODELS[model] if isinstance(model, str) else model
    w = spec.width
    root = 64 * w
    shapes = {"stem.conv.weight": (root, 3, 7, 7)}
    in_channels = root
    for s, blocks in enumerate(spec.layers):
        out = 256 * w * 2 ** s
        mid = out // 4
        for b in range(blocks):
            p = f"stages.{s}.blocks.{b}"
            if b == 0:
                shapes[f"{p}.downsample.conv.weight"] = (out, in_channels, 1, 1)
            shapes.update(_norm_shapes(f"{p}.norm1", in_channels, spec.norm))
            shapes[f"{p}.conv1.weight"] = (mid, in_channels, 1, 1)
            shapes.update(_norm_shapes(f"{p}.norm2", mid, spec.norm))
            shapes[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            shapes.update(_norm_shapes(f"{p}.norm3", mid, spec.norm))
            shapes[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            in_channels = out
    shapes.update(_norm_shapes("norm", in_channels, spec.norm))
    if num_classes:
        shapes.update({"head.fc.weight": (num_classes, in_channels, 1, 1), "head.fc.bias": (num_classes,)})
    return shapes


# vivi name -> timm name; the rest of the name (norm1.weight, conv2.weight, ...) is the same in both
_TO_TIMM = [(re.compile(r"^root\.0\.weight$"), "stem.conv.weight"),
            (re.compile(r"^stages\.(\d+)\.(\d+)\.projection\.weight$"), r"stages.\1.blocks.\2.downsample.conv.weight"),
            (re.compile(r"^stages\.(\d+)\.(\d+)\.((?:norm|conv)[123]\.\w+)$"), r"stages.\1.blocks.\2.\3"),
            (re.compile(r"^norm\.(\w+)$"), r"norm.\1")]
_TO_VIVI = [(re.compile(r"^stem\.conv\.weight$"), "root.0.weight"),
            (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.downsample\.conv\.weight$"),
             r"stages.\1.\2.projection.weight"),
            (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.((?:norm|conv)[123]\.\w+)$"), r"stages.\1.\2.\3"),
            (re.compile(r"^norm\.(\w+)$"), r"norm.\1")]


def _rename(name: str, rules, what: str) -> str:
    for pattern, replacement in rules:
        if pattern.match(name):
            return pattern.sub(replacement, name)
    raise ValueError(f"{name!r} is not a parameter of a {what} ResNetV2 encoder")


def timm_name(name: str) -> str:
    """timm's name of the entry ``name`` of vivi's ResNetV2 state dict."""
    return _rename(name, _TO_TIMM, "vivi")


def vivi_name(name: str) -> str:
    """vivi's name of the entry ``name`` of timm's ResNetV2 state dict (the inverse of :func:`timm_name`)."""
    return _rename(name, _TO_VIVI, "timm")


def to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """vivi's encoder state dict under timm's names; the tensors are the same objects."""
    return {timm_name(k): v for k, v in state_dict.items()}


def from_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ResNetV2 backbone state dict (without ``head.fc``) under vivi's names."""
    return {vivi_name(k): v for k, v in state_dict.items()}


@dataclass(frozen=True)
class TimmTarget:
    """The timm model a vivi encoder becomes: ``timm.create_model(model, **kwargs)`` plus, for the
    GroupNorm + WS encoders, ``conv_layer=partial(StdConv2d, eps=ws_eps), norm_layer=GroupNormAct``."""
    model: str                                   # the name given to timm.create_model
    kwargs: dict = field(default_factory=dict)   # plain keyword arguments (num_classes, width_factor, layers)
    ws_eps: float | None = None                  # GroupNorm + WS: StdConv2d's eps (vivi's 1e-10)
    layout: str | None = None                    # registered timm model with the same names and shapes

    def code(self) -> str:
        """Python that builds the model (after ``import timm``)."""
        args = [repr(self.model)] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if self.ws_eps is not None:
            args += [f"conv_layer=functools.partial(timm.layers.StdConv2d, eps={self.ws_eps:g})",
                     "norm_layer=timm.layers.GroupNormAct"]
        return f"timm.create_model({', '.join(args)})"

    def to_json(self) -> str:
        return json.dumps({"model": self.model, "kwargs": self.kwargs, "ws_eps": self.ws_eps, "layout": self.layout})


_BN_NAMES = {spec.layers: name for name, spec in TIMM_MODELS.items() if spec.norm == "bn"}


def timm_target(config: ResNetV2Config, name: str = "this encoder") -> TimmTarget:
    """The timm model that computes what vivi's encoder of ``config`` computes, with the same
    parameters; ``ValueError`` in one line naming every difference where there is none."""
    differences = []
    if len(config.units) != 4:
        differences.append(f"{len(config.units)} stages (timm: 4)")
    if (config.root_kernel, config.root_stride, config.root_pool) != (7, 2, True):
        differences.append(f"a {config.root_kernel}x{config.root_kernel}/{config.root_stride} root "
                           f"{'with' if config.root_pool else 'without'} max-pool (timm: 7x7/2 and a 3x3/2 max-pool)")
    if config.base_width != 64:
        differences.append(f"{config.base_width}·w root channels (timm: 64·w)")
    if len(config.units) == 4 and tuple(config.stage_strides) != (1, 2, 2, 2):
        differences.append(f"stage strides {','.join(map(str, config.stage_strides))} (timm: 1,2,2,2)")
    if differences:
        raise ValueError(f"{name} has no timm counterpart: {'; '.join(differences)}; export it with --format vivi")
    model = _BN_NAMES.get(tuple(config.units), "resnetv2_50")
    kwargs: dict = {"num_classes": 0}
    if model == "resnetv2_50" and tuple(config.units) != (3, 4, 6, 3):
        kwargs["layers"] = list(config.units)
    if config.width != 1:
        kwargs["width_factor"] = config.width
    if config.norm == "bn":
        return TimmTarget(model, kwargs, layout=model if "layers" not in kwargs and config.width == 1 else None)
    bit = f"{model}x{config.width}_bit"
    layout = bit if bit in TIMM_MODELS and "layers" not in kwargs else None
    return TimmTarget(model, kwargs, ws_eps=1e-10, layout=layout)     # vivi's StdConv2d eps (norm.py)


def timm_target_of(state_dict: dict[str, torch.Tensor]) -> TimmTarget:
    """The :class:`TimmTarget` of a state dict in timm's names (an export of ``--format timm``):
    blocks per stage from the names, the width from the stem, BatchNorm where running means are."""
    layers = [0] * 4
    for key in state_dict:
        if m := re.match(r"^stages\.(\d)\.blocks\.(\d+)\.", key):
            layers[int(m.group(1))] = max(layers[int(m.group(1))], int(m.group(2)) + 1)
    norm = "bn" if "norm.running_mean" in state_dict else "gnws"
    width = state_dict["stem.conv.weight"].shape[0] // 64
    return timm_target(ResNetV2Config(units=tuple(layers), width=width, norm=norm))


def timm_model(target: TimmTarget) -> torch.nn.Module:
    """Build ``target`` with timm (imported here: it is not a dependency of vivi)."""
    import functools

    import timm
    from timm.layers import GroupNormAct, StdConv2d
    kwargs = dict(target.kwargs)
    if target.ws_eps is not None:
        kwargs.update(conv_layer=functools.partial(StdConv2d, eps=target.ws_eps), norm_layer=GroupNormAct)
    return timm.create_model(target.model, **kwargs)


def timm_load_hint(path) -> str:
    """One line saying how to load the ``--format timm`` export ``path`` into timm and what to feed it."""
    from pathlib import Path
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            code = (f.metadata() or {}).get("timm_code")
        loader = f"safetensors.torch.load_file({str(path)!r})"
    else:
        code = timm_target_of(torch.load(path, map_location="cpu", weights_only=True)).code()
        loader = f"torch.load({str(path)!r})"
    return f"load it with model = {code}; model.load_state_dict({loader}) and feed it (x - 0.5) / 0.5 of [0, 1] images"
