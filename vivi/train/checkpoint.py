"""Checkpoints that load safely: tensors in safetensors, everything else as JSON metadata.

A training checkpoint is one file ``RUN/checkpoints/step-XXXXXXX.safetensors``:

* tensors ``model.<name>`` (parameters and buffers of :class:`vivi.train.model.VIVIModel`) and
  ``optim.<name>.momentum_buffer`` (SGD state by parameter name);
* metadata (strings): ``kind = "vivi-checkpoint"``, ``config`` (the resolved config, JSON),
  ``encoder`` (name + overrides that rebuild the encoder), ``step`` (steps done), ``world_size``
  (the processes that trained it: each reads its share of every batch; absent in older files) and
  ``tensors_sha256``, a checksum of every tensor's name, dtype, shape and bytes, verified on
  load: a file damaged after it was written (a flipped byte, a copy cut short) is reported
  instead of trained from. A run folder resumes from its newest checkpoint that verifies, and
  says which newer ones it passed over and why.

An exported encoder (``vivi export``) is ``encoder.safetensors`` (tensors = the encoder's state
dict; metadata ``kind = "vivi-encoder"``, ``encoder``, ``config``) or ``encoder.pt`` (a dict of
the same, readable with ``torch.load(weights_only=True)``).

Files are serialised in memory, written to a temporary name in the same folder and renamed
(atomic on POSIX), so a crash leaves either the old or the new checkpoint, never half of one; an
error while writing (a full disk) is an ``OSError`` naming the file, and the temporary file is
removed (:func:`vivi.files.replacing`).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..files import replacing

__all__ = ["CHECKPOINT_DIR", "CHECKPOINT_KIND", "ENCODER_KIND", "EXPORT_FORMATS", "checkpoint_path", "export_encoder",
           "latest_checkpoint", "load_momentum", "newest_intact_checkpoint", "read_checkpoint", "read_encoder_file",
           "tensors_digest", "write_checkpoint"]

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_KIND = "vivi-checkpoint"
ENCODER_KIND = "vivi-encoder"
_STEP = re.compile(r"step-(\d+)\.safetensors$")


def checkpoint_path(run: str | Path, step: int) -> Path:
    return Path(run) / CHECKPOINT_DIR / f"step-{step:07d}.safetensors"


def latest_checkpoint(run: str | Path) -> Path | None:
    """The checkpoint with the most steps in a run folder, or None."""
    folder = Path(run) / CHECKPOINT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.safetensors") if (m := _STEP.search(p.name))]
    return max(found)[1] if found else None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors' names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    # serialised in memory, written by Python: a full disk is an OSError naming the file
    data = save(tensors, metadata={**metadata, "tensors_sha256": tensors_digest(tensors)})
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_checkpoint(run: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     config_json: str, encoder: dict, keep: int = 3, world_size: int = 1) -> Path:
    """Write the checkpoint after ``step`` steps of ``world_size`` processes; keep the newest ``keep`` checkpoints."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{names[id(p)]}.momentum_buffer"] = buf
    metadata = {"kind": CHECKPOINT_KIND, "config": config_json, "encoder": json.dumps(encoder), "step": str(step),
                "world_size": str(world_size)}
    path = checkpoint_path(run, step)
    _atomic_save(tensors, metadata, path)
    old = sorted(Path(run, CHECKPOINT_DIR).glob("step-*.safetensors"))
    for stale in old[:-keep] if keep > 0 else []:
        stale.unlink(missing_ok=True)
    return path


def load_momentum(optimizer: torch.optim.Optimizer, model: torch.nn.Module, momentum: dict[str, torch.Tensor],
                  device: torch.device) -> None:
    """Put a checkpoint's SGD momentum (``read_checkpoint(...)["optim"]``, by parameter name) into
    ``optimizer``, whose parameters are ``model``'s: the inverse of :func:`write_checkpoint`'s."""
    params = dict(model.named_parameters())
    for name, buf in momentum.items():
        optimizer.state[params[name]]["momentum_buffer"] = buf.to(device)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a vivi safetensors file, its checksum verified."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:  # safetensors raises its own error types for foreign or cut-short files
        raise ValueError(f"{path} is not a safetensors file written by vivi, or is damaged ({error})") from None
    expected = metadata.get("tensors_sha256")
    if expected is not None and tensors_digest(tensors) != expected:
        raise ValueError(f"{path} is damaged: its tensors do not match the checksum written with them")
    return tensors, metadata


def newest_intact_checkpoint(run: str | Path) -> tuple[dict | None, list[str]]:
    """The newest checkpoint of a run folder that reads and verifies (None when there is none),
    and one line for each newer one passed over, saying why."""
    folder = Path(run) / CHECKPOINT_DIR
    found = sorted(((int(m.group(1)), p) for p in folder.glob("step-*.safetensors") if (m := _STEP.search(p.name))),
                   reverse=True)
    passed = []
    for _, path in found:
        try:
            return read_checkpoint(path), passed
        except ValueError as error:
            passed.append(str(error))
    return None, passed


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (file or run folder) -> dict(step, config, encoder, model, optim, world_size);
    ``world_size`` is None for a file written before it was recorded."""
    path = Path(path)
    if path.is_dir():
        checkpoint, passed = newest_intact_checkpoint(path)
        for line in passed:
            print(f"note: {line}; using an older checkpoint", file=sys.stderr)
        if checkpoint is None:
            raise FileNotFoundError(f"no intact checkpoint in {path / CHECKPOINT_DIR}" +
                                    (f" ({'; '.join(passed)})" if passed else ""))
        return checkpoint
    tensors, metadata = _read(path)
    if metadata.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a vivi training checkpoint (kind={metadata.get('kind')!r}); "
                         f"an exported encoder is loaded with vivi.load_encoder")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim = {k[len("optim."):-len(".momentum_buffer")]: v for k, v in tensors.items() if k.startswith("optim.")}
    return {"path": path, "step": int(metadata["step"]), "config": json.loads(metadata["config"]),
            "encoder": json.loads(metadata["encoder"]), "model": model, "optim": optim,
            "world_size": int(metadata["world_size"]) if "world_size" in metadata else None}


def read_encoder_file(path: str | Path) -> dict:
    """Any of: a run folder, a training checkpoint, an exported encoder (.safetensors / .pt)
    -> dict(encoder spec, state_dict of the encoder, config or None)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir() or (path.suffix == ".safetensors" and _read(path)[1].get("kind") == CHECKPOINT_KIND):
        ckpt = read_checkpoint(path)
        state = {k[len("encoder."):]: v for k, v in ckpt["model"].items() if k.startswith("encoder.")}
        return {"encoder": ckpt["encoder"], "state_dict": state, "config": ckpt["config"]}
    if path.suffix == ".safetensors":
        tensors, metadata = _read(path)
        if metadata.get("kind") != ENCODER_KIND:
            raise ValueError(f"{path} is not a vivi encoder or checkpoint (kind={metadata.get('kind')!r})")
        return {"encoder": json.loads(metadata["encoder"]), "state_dict": tensors,
                "config": json.loads(metadata.get("config", "null"))}
    if path.suffix in (".pt", ".pth"):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path} cannot be loaded safely as a vivi encoder ({error})") from None
        if not isinstance(blob, dict) or blob.get("kind") != ENCODER_KIND:
            raise ValueError(f"{path} is not a vivi encoder export (no kind={ENCODER_KIND!r})")
        return {"encoder": json.loads(blob["encoder"]), "state_dict": blob["state_dict"],
                "config": json.loads(blob.get("config", "null"))}
    raise ValueError(f"{path}: expected a run folder, a .safetensors checkpoint/encoder or an encoder .pt")


EXPORT_FORMATS = ("vivi", "timm")


def export_encoder(source: str | Path, out: str | Path, format: str = "vivi") -> Path:
    """Write the encoder of a run folder or checkpoint alone to ``out`` (.safetensors or .pt).

    ``format="vivi"``: vivi's state dict and how to rebuild the encoder (``vivi.load_encoder``
    reads it). ``format="timm"``: the state dict under timm's names, which the timm model of
    :func:`vivi.models.timm_keys.timm_target` loads with ``strict=True`` (no ``head.fc``: build it
    with ``num_classes=0``); a .pt file is the plain state dict, a .safetensors file also names
    that model in its metadata. An encoder with no timm counterpart (the small CPU encoders) is
    refused in one line naming the difference.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid: {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise ValueError(f"export to .safetensors or .pt, got {out}")
    blob = read_encoder_file(source)
    encoder, config = json.dumps(blob["encoder"]), json.dumps(blob["config"])
    state, metadata = blob["state_dict"], {"kind": ENCODER_KIND, "encoder": encoder, "config": config}
    if format == "timm":
        state, metadata = _timm_export(blob)
    if out.suffix == ".safetensors":
        _atomic_save(state, metadata, out)
        return out
    payload = {k: v.contiguous() for k, v in state.items()}
    if format == "vivi":
        payload = {**metadata, "state_dict": payload}
    buffer = io.BytesIO()        # serialised in memory: a full disk is then an OSError naming the file
    torch.save(payload, buffer)
    with replacing(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return out


def _timm_export(blob: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict of an encoder blob (:func:`read_encoder_file`) under timm's names, and the
    metadata naming the timm model that loads it."""
    from vivi.models import ENCODERS
    from vivi.models.timm_keys import timm_target, to_timm
    from vivi.registry import from_registry
    spec = blob["encoder"]
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["overrides"].items()}
    target = timm_target(from_registry(ENCODERS, spec["name"], "encoder", **overrides), f"encoder {spec['name']}")
    metadata = {"format": "timm", "timm_model": target.to_json(), "timm_code": target.code(),
                "input": "RGB float images in [0, 1] mapped to (x - 0.5) / 0.5, i.e. [-1, 1] (timm's default_cfg "
                         "mean = std = 0.5 does exactly this)", "vivi_encoder": json.dumps(spec)}
    return to_timm(blob["state_dict"]), metadata
