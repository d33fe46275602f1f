"""ResNet v2 (pre-activation) frame encoder in the layout of BiT.

Both papers encode frames with a ResNet-50 v2 (He et al. 2016, "Identity mappings in deep
residual networks"; VIVI §4 and app. A, Object-centric §4.1), three times wider for VIVI's "Big"
models, with BatchNorm, or GroupNorm + Weight Standardisation when co-training (see
``norm.py``). The papers give no further detail; the layout follows BiT (Kolesnikov et al. 2020,
google-research/big_transfer), see docs/reference.md, "ResNet-50 v2":

- root: k×k convolution (7×7, stride 2, 64·w channels), then a 3×3 max-pool with stride 2; no
  norm or activation in the root;
- unit (pre-activation bottleneck): norm → ReLU → [1×1 projection of this *pre-activated* tensor
  when the stride or the channel count changes] → 1×1 conv (c/4) → norm → ReLU → 3×3 conv with
  the stride → norm → ReLU → 1×1 conv (c) → add the shortcut;
- stages of [3, 4, 6, 3] units (ResNet-50) with 256, 512, 1024, 2048 (×w) output channels and
  stride 2 in the first unit of stages 2–4;
- final norm → ReLU → global average pool = pre-logits (2048·w features).

All convolutions are bias-free. The body has 23,500,352 parameters for w = 1 and 211,174,080 for
w = 3 (tests/test_models.py checks both).

The same class builds the small CPU encoders for the synthetic world: fewer units per stage, a
smaller base width, a 3×3 root and no stride in the last two stages, so that a 64×64 frame still
leaves an 8×8 feature grid for the object-level loss. Named configurations live in :data:`ENCODERS`;
:func:`create_encoder` builds one by name.

Input: float images (B, 3, H, W) with values in [0, 1] (what ``vivi.load_encoder`` and the data
pipeline hand over); the model maps them to [-1, 1] with a fixed ``(x - 0.5) / 0.5`` as its first
step, so no caller has to know a mean and std, and the zero padding of the root convolution is
mid-grey. Any H, W ≥ 32 works; the grid is about H/32 × W/32 for the full-size models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vivi.models.norm import get_norm_kind
from vivi.registry import from_registry


@dataclass(frozen=True)
class ResNetV2Config:
    units: tuple[int, ...] = (3, 4, 6, 3)    # bottleneck units per stage; (3, 4, 6, 3) is ResNet-50
    width: int = 1                           # width multiplier w; 3 is the papers' "Big" encoder
    base_width: int = 64                     # root channels at w = 1; stage s (from 0) has
                                             # base·w·2^s bottleneck and 4× that output channels
    stage_strides: tuple[int, ...] = (1, 2, 2, 2)  # stride of the first unit of each stage
    root_kernel: int = 7                     # root convolution: 7×7 stride 2 for ImageNet-size
    root_stride: int = 2                     # inputs, 3×3 stride 2 for the 64×64 synthetic frames
    root_pool: bool = True                   # 3×3 max-pool, stride 2, after the root convolution
    norm: str = "bn"                         # "bn" (VIVI) or "gnws" (co-training; see norm.py)

    def __post_init__(self):
        if len(self.stage_strides) != len(self.units):
            raise ValueError(f"stage_strides {self.stage_strides} needs one entry per stage "
                             f"of units {self.units}")
        get_norm_kind(self.norm)  # fail at construction on an unknown norm

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of each stage: 256, 512, 1024, 2048 (×w) for ResNet-50."""
        return tuple(4 * self.base_width * self.width * 2 ** s for s in range(len(self.units)))

    @property
    def stride(self) -> int:
        """Total downsampling from the input to the feature grid (32 for ResNet-50)."""
        total = self.root_stride * (2 if self.root_pool else 1)
        for s in self.stage_strides:
            total *= s
        return total


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck unit (He et al. 2016, Fig. 4e; BiT's ``PreActBottleneck``).

    The projection shortcut, when present, reads the normalised and activated input, not the raw
    residual stream; the identity shortcut reads the raw stream. The stride sits in the 3×3
    convolution (and in the projection).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str):
        super().__init__()
        conv, norm_layer = get_norm_kind(norm)
        mid = out_channels // 4
        self.norm1 = norm_layer(in_channels)
        self.conv1 = conv(in_channels, mid, 1, bias=False)
        self.norm2 = norm_layer(mid)
        self.conv2 = conv(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.norm3 = norm_layer(mid)
        self.conv3 = conv(mid, out_channels, 1, bias=False)
        self.relu = nn.ReLU()
        self.projection = None
        if stride != 1 or in_channels != out_channels:
            self.projection = conv(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        preact = self.relu(self.norm1(x))
        shortcut = x if self.projection is None else self.projection(preact)
        y = self.conv1(preact)
        y = self.conv2(self.relu(self.norm2(y)))
        y = self.conv3(self.relu(self.norm3(y)))
        return y + shortcut


class ResNetV2(nn.Module):
    """Pre-activation ResNet encoder: [0, 1] images → feature grid and pooled pre-logits.

    :meth:`forward_features` returns a dict (big_vision style):

    - ``"root"``: output of the root (after the pool, if any);
    - ``"stage1"`` … ``"stageN"``: the residual stream after each stage, *before* any norm;
    - ``"grid"`` (B, C, H', W'): the last stage after the final norm → ReLU. This is the feature
      grid of the object-level loss, which Object-centric §4.1 takes from "the ResNet block 4".
      vivi takes it *after* the final norm + ReLU: in a pre-activation network the raw output of
      the last block is an un-normalised sum of residuals whose scale grows with depth and which
      no layer was trained to read directly, and in v2 networks the final norm + ReLU completes
      the last block (TF-slim's resnet_v2 calls it ``postnorm`` and applies it before pooling, as
      BiT does before its head). It also makes ``pre_logits`` exactly the spatial mean of
      ``grid``, so box features and frame features live in one space (docs/reference.md,
      "Choices the papers leave open"). The raw stream is still available as ``"stageN"``.
    - ``"pre_logits"`` (B, C): global average of ``grid``; ``C`` is :attr:`num_features`.

    :meth:`forward` returns ``pre_logits``. Heads (frame, shot, object, supervised) are separate
    modules in ``vivi.models.heads`` and read these features.
    """

    def __init__(self, config: ResNetV2Config = ResNetV2Config()):
        super().__init__()
        self.config = config
        conv, norm_layer = get_norm_kind(config.norm)
        root_channels = config.base_width * config.width
        root = [conv(3, root_channels, config.root_kernel, stride=config.root_stride,
                     padding=config.root_kernel // 2, bias=False)]
        if config.root_pool:
            root.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.root = nn.Sequential(*root)

        stages = []
        in_channels = root_channels
        for units, out_channels, stride in zip(config.units, config.stage_channels,
                                               config.stage_strides):
            blocks = []
            for u in range(units):
                blocks.append(PreActBottleneck(in_channels, out_channels,
                                               stride if u == 0 else 1, config.norm))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = norm_layer(in_channels)
        self.relu = nn.ReLU()

        self.num_features: int = in_channels     # size of pre_logits (2048·w for ResNet-50)
        self.stage_channels: tuple[int, ...] = config.stage_channels
        self.stride: int = config.stride         # input pixels per grid cell (32 for ResNet-50)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convolutions; norm scale 1, offset 0.

        No residual branch is zero-initialised: a pre-activation branch ends in a convolution,
        not a norm, and zeroing that convolution would break Weight Standardisation (a zero
        filter has zero variance and a 1/sqrt(eps) = 1e5 gradient). BiT does not do it either.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of [0, 1] images ``x`` (B, 3, H, W); see the class docstring for the keys."""
        if not x.is_floating_point():
            raise TypeError(f"the encoder takes float images in [0, 1], got {x.dtype}: use x.float() / 255")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"the encoder takes images of shape (B, 3, H, W), got {tuple(x.shape)}")
        features = {}
        x = self.root((x - 0.5) / 0.5)
        features["root"] = x
        for s, stage in enumerate(self.stages):
            x = stage(x)
            features[f"stage{s + 1}"] = x
        grid = self.relu(self.norm(x))
        features["grid"] = grid
        features["pre_logits"] = grid.mean(dim=(2, 3))
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logits (B, :attr:`num_features`) of [0, 1] images ``x`` (B, 3, H, W).

        In eval mode (how :func:`vivi.load_encoder` returns it) images with values above 1.5 are
        refused: 0..255 pixels not divided by 255 would give features that look fine and are not."""
        if not self.training and x.is_floating_point() and x.numel() and float(x.detach().amax()) > 1.5:
            raise ValueError(f"the encoder takes images in [0, 1], got values up to {float(x.amax()):.4g}: "
                             "divide 0..255 pixels by 255")
        return self.forward_features(x)["pre_logits"]


# Named encoders. The full-size ones are the papers'; the small ones are for CPU runs on the
# 64×64 frames of the synthetic world (see docs/models.md for their speed).
ENCODERS: dict[str, ResNetV2Config] = {
    "resnet26_v2": ResNetV2Config(units=(2, 2, 2, 2)),
    "resnet50_v2": ResNetV2Config(units=(3, 4, 6, 3)),
    "resnet101_v2": ResNetV2Config(units=(3, 4, 23, 3)),
    "resnet50x3_v2": ResNetV2Config(units=(3, 4, 6, 3), width=3),
    # CPU encoders for 64×64 frames. Root: 3×3 conv stride 2 + max-pool (÷4, as BiT's root);
    # stages 3 and 4 keep stride 1, so the total stride is 8 and a 64×64 frame leaves an 8×8
    # grid, about the 7×7 grid ResNet-50 leaves of a 224×224 image. Stride-1 roots (full-size
    # first stage) cost 10× more on CPU for the same grid; see docs/models.md.
    "resnet_tiny_v2": ResNetV2Config(units=(1, 1, 1, 1), base_width=16, stage_strides=(1, 2, 1, 1),
                                     root_kernel=3, root_stride=2, root_pool=True),
    "resnet_small_v2": ResNetV2Config(units=(2, 2, 2, 2), base_width=16, stage_strides=(1, 2, 1, 1),
                                      root_kernel=3, root_stride=2, root_pool=True),
}


def create_encoder(name: str, **overrides) -> ResNetV2:
    """Build the encoder named ``name`` in :data:`ENCODERS`, with config fields replaced by ``overrides``.

    ``create_encoder("resnet50_v2", norm="gnws")`` is the co-training encoder. An unknown name or
    field raises ``ValueError`` listing the valid ones.
    """
    for key in ("units", "stage_strides"):  # accept lists from YAML / the command line
        if key in overrides:
            overrides[key] = tuple(overrides[key])
    return ResNetV2(from_registry(ENCODERS, name, "encoder", **overrides))


__all__ = ["ENCODERS", "PreActBottleneck", "ResNetV2", "ResNetV2Config", "create_encoder"]
