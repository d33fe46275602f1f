"""`vivi export --format timm`: the encoder's state dict under the names and shapes of timm's ResNetV2
(vivi/models/timm_keys.py), values unchanged, and a one-line refusal for encoders timm has no
model of. timm itself is not installed here; bench/gpu_check.py loads the export into real timm
and compares features."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vivi.cli import main
from vivi.models import create_encoder
from vivi.models.timm_keys import from_timm, timm_state_shapes, timm_target, timm_target_of, to_timm


def _encoder_file(tmp_path, name: str, norm: str):
    """A vivi encoder export of a randomly initialised encoder with non-trivial norm statistics."""
    torch.manual_seed(0)
    encoder = create_encoder(name, norm=norm)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7)
    path = tmp_path / f"{name}-{norm}.safetensors"
    spec = {"name": name, "overrides": {"norm": norm}}
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(path),
              metadata={"kind": "vivi-encoder", "encoder": json.dumps(spec), "config": "null"})
    return encoder.eval(), path


def _shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("norm, layout", [("bn", "resnetv2_50"), ("gnws", "resnetv2_50x1_bit")])
def test_resnet50_export_has_timms_names_and_shapes_and_round_trips(tmp_path, capsys, norm, layout):
    """Catches a missing, extra, misnamed or misshaped entry against timm's ResNetV2 layout (the
    projection under downsample.conv, the stem under stem.conv, BN buffers), and any change of
    the values on the way: mapping the names back gives vivi's tensors bit for bit."""
    encoder, source = _encoder_file(tmp_path, "resnet50_v2", norm)
    for suffix in (".safetensors", ".pt"):
        out = tmp_path / f"timm-{norm}{suffix}"
        assert main(["export", str(source), "--out", str(out), "--format", "timm"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"timm state dict written to {out}; load it with model = timm.create_model(")
        state = load_file(str(out)) if suffix == ".safetensors" else torch.load(out, weights_only=True)
        assert _shapes(state) == timm_state_shapes(layout)
        back = from_timm(state)
        original = encoder.state_dict()
        assert back.keys() == original.keys()
        assert all(back[k].dtype == original[k].dtype and torch.equal(back[k], original[k]) for k in original)
    with safe_open(str(tmp_path / f"timm-{norm}.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    target = json.loads(metadata["timm_model"])
    assert target["model"] == "resnetv2_50" and target["kwargs"] == {"num_classes": 0} and target["layout"] == layout
    assert target["ws_eps"] == (1e-10 if norm == "gnws" else None)
    assert "(x - 0.5) / 0.5" in metadata["input"]


def test_the_big_encoder_maps_onto_resnetv2_50x3_bit():
    """Catches a width-dependent shape error of the 3x wide encoder (built on the meta device: no memory)."""
    with torch.device("meta"):
        encoder = create_encoder("resnet50x3_v2", norm="gnws")
    state = to_timm(encoder.state_dict())
    assert _shapes(state) == timm_state_shapes("resnetv2_50x3_bit")
    target = timm_target(encoder.config)
    assert (target.model, target.kwargs, target.layout) == ("resnetv2_50", {"num_classes": 0, "width_factor": 3},
                                                             "resnetv2_50x3_bit")
    assert timm_target_of(state) == target


def test_the_derived_layout_has_timms_parameter_counts():
    """Catches a wrong rule in the derivation itself, against counts timm publishes for these models:
    resnetv2_50 25,549,352 parameters, resnetv2_50x3_bit 217,319,080 (1000-way heads; BN buffers are
    not parameters)."""
    def parameters(name):
        return sum(math.prod(shape) for key, shape in timm_state_shapes(name, num_classes=1000).items()
                   if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert parameters("resnetv2_50") == 25_549_352
    assert parameters("resnetv2_50x1_bit") == 25_549_352
    assert parameters("resnetv2_50x3_bit") == 217_319_080


def test_features_survive_the_round_trip(tmp_path):
    """Catches an export that swaps two tensors of the same shape (norm2 and norm3 of a unit): the
    encoder rebuilt from the mapped-back state dict computes the same features."""
    encoder, _ = _encoder_file(tmp_path, "resnet50_v2", "bn")
    rebuilt = create_encoder("resnet50_v2").eval()
    rebuilt.load_state_dict(from_timm(to_timm(encoder.state_dict())), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), rebuilt(x))


@pytest.mark.parametrize("name", ["resnet_tiny_v2", "resnet_small_v2"])
def test_encoders_timm_has_no_model_of_are_refused_in_one_line(tmp_path, capsys, name):
    """Catches a state dict written for an encoder no timm model computes (3x3 root, 16 channels,
    stride-1 stages): the export stops with one line naming the differences and writes nothing."""
    _, source = _encoder_file(tmp_path, name, "bn")
    out = tmp_path / "timm.safetensors"
    assert main(["export", str(source), "--out", str(out), "--format", "timm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vivi export: error: encoder {name} has no timm counterpart: a 3x3/2 root")
    assert "\n" not in err
    assert "16·w root channels" in err and "stage strides 1,2,1,1" in err and "--format vivi" in err
    assert not out.exists()


def test_an_unknown_format_is_refused(tmp_path):
    """Catches a typo in the format silently writing vivi's format."""
    from vivi.api import export
    _, source = _encoder_file(tmp_path, "resnet_tiny_v2", "bn")
    with pytest.raises(ValueError, match="unknown export format 'onnx'; valid: vivi, timm"):
        export(source, tmp_path / "x.safetensors", format="onnx")
