"""Normalisation choices for the encoder: BatchNorm, or GroupNorm + Weight Standardisation.

VIVI trains with BatchNorm; co-trained models use GroupNorm with Weight Standardisation instead,
"to avoid mismatch in batch statistics between the two data sources" (VIVI §4 and app. A;
Object-centric §4.1, "Cotraining details"): video frames and labelled images pass through the
same encoder and must not share batch statistics. Neither paper gives the recipe's constants;
vivi takes BiT's (Kolesnikov et al. 2020; VIVI's acknowledgements thank Lucas Beyer, a BiT
author, for the implementation of GroupNorm with weight standardisation): every convolution
standardises each output filter over (in, kh, kw) with the biased variance and eps 1e-10, and
GroupNorm uses 32 groups. See docs/reference.md, "Co-training" and "ResNet-50 v2".

A norm kind is a pair (conv class, norm factory) looked up by name in :data:`NORMS`, so that a
model asks for ``conv(...)`` and ``norm(channels)`` without branching on the kind.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn


def standardize_weight(weight: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Weight Standardisation: each output filter to zero mean, unit (biased) variance.

    ``weight`` is (out, in, kh, kw). The statistics are computed in float32 whatever the
    parameter's dtype: under bf16 the variance of a 3×3×512 filter would lose most of its digits,
    and eps = 1e-10 is below bf16's resolution near 1. The result has the parameter's dtype;
    autocast, if active, casts it for the convolution as it would the raw weight.
    """
    w = weight.float()
    var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
    return ((w - mean) * torch.rsqrt(var + eps)).to(weight.dtype)


class StdConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is standardised per output filter at every call (BiT's StdConv).

    The stored parameter stays raw, so optimisers and weight decay see the unstandardised weight,
    as in BiT. Standardisation makes the layer invariant to the scale and offset of each filter.
    """

    def __init__(self, *args, eps: float = 1e-10, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.eps), self.bias)


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups, or gcd(groups, channels) where ``channels`` is not a multiple.

    The full-size models always get 32 groups (all their widths are multiples of 32); the small
    CPU models have 16-channel layers, which then get 16 groups of one channel each.
    """
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-5)


class NormKind(NamedTuple):
    conv: type[nn.Conv2d]                        # class of every convolution in the encoder
    norm: Callable[[int], nn.Module]             # channels -> normalisation layer


NORMS: dict[str, NormKind] = {
    "bn": NormKind(nn.Conv2d, nn.BatchNorm2d),
    "gnws": NormKind(StdConv2d, group_norm),
}


def get_norm_kind(name: str) -> NormKind:
    """The (conv, norm) pair named ``name``; an unknown name lists the valid ones."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; valid: {', '.join(sorted(NORMS))}")
    return NORMS[name]


__all__ = ["NORMS", "NormKind", "StdConv2d", "get_norm_kind", "group_norm", "standardize_weight"]
