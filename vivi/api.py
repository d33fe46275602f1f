"""Public one-call functions for using a trained encoder: ``load_encoder`` and ``embed``.

    encoder = vivi.load_encoder("runs/vivi-ex4")          # run folder, checkpoint or export
    features = encoder(images)                            # float (B, 3, H, W) in [0, 1] -> (B, D)
    array = vivi.embed(encoder, ["photos/", "cat.jpg"])   # files or folders -> numpy (n, D)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["embed", "export", "image_files", "load_encoder"]


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The frame encoder of a run folder, a training checkpoint or an exported encoder.

    Returns the ResNet v2 in eval mode: ``forward`` takes float images (B, 3, H, W) in [0, 1]
    (H, W >= 32; the encoder normalises them itself) and returns the pooled pre-logits (B, D).
    ``forward_features`` gives the grid too. ``encoder.input_size`` is the training frame size
    (the size :func:`embed` resizes to). A file of another kind raises ValueError.
    """
    from vivi.train.checkpoint import read_encoder_file
    from vivi.train.model import build_encoder
    blob = read_encoder_file(path)
    encoder = build_encoder(blob["encoder"])
    missing, unexpected = encoder.load_state_dict(blob["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: the weights do not fit encoder {blob['encoder']['name']} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    config = blob.get("config") or {}
    encoder.input_size = int(config.get("augment", {}).get("size", 224))
    return encoder.to(device).eval()


def export(source: str | Path, out: str | Path) -> Path:
    """Write the encoder of a run folder or checkpoint alone (``.safetensors`` or ``.pt``)."""
    from vivi.train.checkpoint import export_encoder
    return export_encoder(source, out)


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders searched recursively, sorted)."""
    from vivi.data.images import IMAGE_SUFFIXES
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist")
    if not files:
        raise ValueError(f"no image files in {', '.join(map(str, inputs))}")
    return files


@torch.no_grad()
def embed(encoder: nn.Module | str | Path, images, *, size: int | None = None, batch_size: int = 64) -> np.ndarray:
    """Pre-logit embeddings (n, D) float32 of images.

    ``images``: a float tensor (n, 3, H, W) in [0, 1], or a list of image files / folders
    (read with OpenCV, resized to ``size`` x ``size`` ignoring the aspect ratio as in VTAB;
    default: the encoder's training size). ``encoder``: a module or anything load_encoder takes.
    """
    if not isinstance(encoder, nn.Module):
        encoder = load_encoder(encoder)
    size = size or getattr(encoder, "input_size", 224)
    device = next(encoder.parameters()).device
    if isinstance(images, torch.Tensor):
        batches = images.split(batch_size)
    else:
        from vivi.data.images import read_image
        files = image_files(list(images))

        def read(chunk):
            arrays = [torch.from_numpy(read_image(p)).permute(2, 0, 1).float()[None] / 255 for p in chunk]
            return torch.cat([F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True) for a in arrays])
        batches = (read(files[i:i + batch_size]) for i in range(0, len(files), batch_size))
    out = [encoder(b.to(device)).float().cpu() for b in batches]
    return torch.cat(out).numpy()
