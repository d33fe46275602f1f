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

__all__ = ["embed", "embed_files", "export", "image_files", "load_encoder"]


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


def export(source: str | Path, out: str | Path, format: str = "vivi") -> Path:
    """Write the encoder of a run folder or checkpoint alone (``.safetensors`` or ``.pt``):
    ``format="vivi"`` for :func:`load_encoder`, ``"timm"`` for timm's ResNetV2 (the state dict
    under timm's names; docs/models.md, "Use the backbone elsewhere")."""
    from vivi.train.checkpoint import export_encoder
    return export_encoder(source, out, format)


def image_files(inputs: list[str | Path]) -> list[Path]:
    """Image files among ``inputs`` (files, or folders searched recursively for the extensions of
    :data:`vivi.data.images.IMAGE_SUFFIXES`, sorted)."""
    from vivi.data.images import IMAGE_SUFFIXES
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
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

    ``images``: a float tensor (n, 3, H, W) in [0, 1], or image files / folders (one path or a
    list; read with OpenCV, resized to ``size`` x ``size`` ignoring the aspect ratio as in VTAB;
    default: the encoder's training size); an unreadable file raises ValueError naming it (see
    :func:`embed_files` to skip such files instead). ``encoder``: a module or anything
    :func:`load_encoder` takes.
    """
    if isinstance(images, torch.Tensor):
        encoder, size = _ready(encoder, size, batch_size)
        device = next(encoder.parameters()).device
        return torch.cat([encoder(b.to(device)).float().cpu() for b in images.split(batch_size)]).numpy()
    return embed_files(encoder, images, size=size, batch_size=batch_size)[0]


@torch.no_grad()
def embed_files(encoder: nn.Module | str | Path, images, *, size: int | None = None, batch_size: int = 64,
                skip_unreadable: bool = False) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """(embeddings (n, D), the n files in row order, the files skipped with the reason) of image
    files / folders. With ``skip_unreadable`` a file OpenCV cannot read (corrupt, empty, not an
    image) is skipped and reported instead of stopping the whole run."""
    from vivi.data.images import read_image
    encoder, size = _ready(encoder, size, batch_size)
    device = next(encoder.parameters()).device
    files = image_files([images] if isinstance(images, (str, Path)) else list(images))
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    out = []
    for start in range(0, len(files), batch_size):
        arrays = []
        for path in files[start:start + batch_size]:
            try:
                array = read_image(path)
            except ValueError as error:
                if not skip_unreadable:
                    raise
                skipped.append((path, str(error)))
                continue
            image = torch.from_numpy(array).permute(2, 0, 1).float()[None] / 255
            arrays.append(F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
            kept.append(path)
        if arrays:
            out.append(encoder(torch.cat(arrays).to(device)).float().cpu())
    if not out:
        raise ValueError(f"none of the {len(files)} image files could be read (first: {skipped[0][1]})")
    return torch.cat(out).numpy(), kept, skipped


def _ready(encoder, size: int | None, batch_size: int) -> tuple[nn.Module, int]:
    if size is not None and size < 1 or batch_size < 1:
        raise ValueError(f"size and batch size must be positive, got size={size}, batch_size={batch_size}")
    if not isinstance(encoder, nn.Module):
        encoder = load_encoder(encoder)
    return encoder, size or getattr(encoder, "input_size", 224)
