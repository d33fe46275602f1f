"""Models: the frame encoder (``resnet_v2``) and its normalisation layers (``norm``).

The heads that read the encoder's features (frame/shot/object embeddings, predictors, the
supervised classifier) live in ``vivi.models.heads``.
"""
from vivi.models.norm import NORMS, StdConv2d, standardize_weight
from vivi.models.resnet_v2 import ENCODERS, PreActBottleneck, ResNetV2, ResNetV2Config, create_encoder

__all__ = ["ENCODERS", "NORMS", "PreActBottleneck", "ResNetV2", "ResNetV2Config", "StdConv2d",
           "create_encoder", "standardize_weight"]
