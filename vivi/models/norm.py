"""Normalisation choices for the encoder: BatchNorm, or GroupNorm + Weight Standardisation.

VIVI trains with BatchNorm; co-trained models use GroupNorm with Weight Standardisation instead,
"to avoid mismatch in batch statistics between the two data sources" (VIVI §4 and app. A;
Object-centric §4.1, "Cotraining details"): video frames and labelled images pass through the
same encoder and must not share batch statistics. Neither paper gives the recipe's constants;
vivi takes BiT's (Kolesnikov et al. 2020; VIVI's acknowledgements thank Lucas Beyer, a BiT
author, for the implementation of GroupNorm with weight standardisation): every convolution
standardises each output filter over (in, kh, kw) with the biased variance and eps 1e-10, and
GroupNorm uses 32 groups. See docs/reference.md, "Co-training" and "ResNet-50 v2".

With ``model.sync_bn`` a multi-rank run computes the BatchNorm statistics over the global batch
(:func:`convert_sync_batchnorm`): ``torch.nn.SyncBatchNorm`` on GPUs, :class:`CrossRankBatchNorm2d`
on CPU processes (gloo), where PyTorch's has no kernels.

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


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch over all ranks, in
    plain tensor operations (``torch.nn.SyncBatchNorm`` runs on GPUs only): two all-reduces per
    layer, the channel sums with the count, then the squared deviations from the global mean (two
    passes: the variance keeps the digits that E[x²] − E[x]² would lose). Gradients flow through
    both sums to every rank. Outside training, or in one process, it is ``nn.BatchNorm2d``; its
    state dict is BatchNorm2d's, so checkpoints load into the plain layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from vivi.distributed import all_reduce_sum_with_grad, get_world_size
        if not self.training or get_world_size() == 1:
            return super().forward(x)
        # statistics in float32 whatever the input (bf16 autocast gives bf16 activations), as BatchNorm2d
        dtype, x = x.dtype, x.float()
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce_sum_with_grad(torch.cat([x.sum(dims), count]))
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x - mean[None, :, None, None]
        var = all_reduce_sum_with_grad((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), momentum)   # unbiased, as BatchNorm
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm2d computing its statistics over all ranks (parameters and
    buffers kept): ``torch.nn.SyncBatchNorm`` on CUDA, :class:`CrossRankBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = CrossRankBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                               child.track_running_stats, device=device)
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            convert_sync_batchnorm(child, device)
    return module


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


__all__ = ["NORMS", "CrossRankBatchNorm2d", "NormKind", "StdConv2d", "convert_sync_batchnorm", "get_norm_kind",
           "group_norm", "standardize_weight"]
