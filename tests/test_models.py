"""The frame encoder (vivi.models) against the layout of docs/reference.md, "ResNet-50 v2": exact
parameter counts, structure read from the modules, the unit's order of operations observed with
hooks, the normalisation against its plain formula, and the memory formats and bf16 against float32.
Each test says in its docstring which defect it catches."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vivi.models import ENCODERS, PreActBottleneck, ResNetV2, StdConv2d, create_encoder
from vivi.models.norm import standardize_weight


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def on_meta(name: str, **overrides) -> ResNetV2:
    """Build without allocating memory: parameter counts and structure only."""
    with torch.device("meta"):
        return create_encoder(name, **overrides)


# --- sizes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["bn", "gnws"])
def test_parameter_counts_of_resnet50_v2_and_its_x3_width(norm):
    """BiT's ResNet-50 v2 body has exactly 23,500,352 parameters, 211,174,080 three times wider;
    a missing or extra layer, a bias or a wrong width changes the count."""
    r50 = on_meta("resnet50_v2", norm=norm)
    assert n_params(r50) == 23_500_352
    assert n_params(r50) + 2048 * 1000 + 1000 == 25_549_352   # with a 1000-way linear head
    assert r50.num_features == 2048
    r50x3 = on_meta("resnet50x3_v2", norm=norm)
    assert n_params(r50x3) == 211_174_080
    assert r50x3.num_features == 6144


def test_depth_variants():
    """Units per stage and stage widths of the named encoders."""
    def units(model):
        return [len(stage) for stage in model.stages]
    assert units(on_meta("resnet26_v2")) == [2, 2, 2, 2]
    assert units(on_meta("resnet50_v2")) == [3, 4, 6, 3]
    assert units(on_meta("resnet101_v2")) == [3, 4, 23, 3]
    assert on_meta("resnet50_v2").stage_channels == (256, 512, 1024, 2048)
    assert on_meta("resnet50x3_v2").stage_channels == (768, 1536, 3072, 6144)


# Expected grid sizes (H', W') for each input size; the BiT layout is checked on a narrow,
# shallow ResNet so that it runs in milliseconds.
GRIDS = {
    "resnet_tiny_v2": {(32, 32): (4, 4), (64, 64): (8, 8), (65, 97): (9, 13)},
    "resnet_small_v2": {(32, 32): (4, 4), (64, 64): (8, 8), (65, 97): (9, 13)},
    "resnet26_v2": {(32, 32): (1, 1), (64, 64): (2, 2), (65, 97): (3, 4)},
}
NARROW = {"resnet26_v2": dict(base_width=8, units=(1, 1, 1, 1))}


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("norm", ["bn", "gnws"])
def test_feature_shapes(name, norm):
    """Grid sizes per input size (a wrong stride or padding changes them), pre-logits = the grid's
    mean, and the grid taken after the final norm + ReLU rather than from the raw stream."""
    torch.manual_seed(0)
    model = create_encoder(name, norm=norm, **NARROW.get(name, {})).eval()
    for (h, w), grid_hw in GRIDS[name].items():
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            features = model.forward_features(x)
            pre_logits = model(x)
        assert features["grid"].shape == (2, model.num_features, *grid_hw)
        assert features["pre_logits"].shape == (2, model.num_features)
        for s, channels in enumerate(model.stage_channels):
            assert features[f"stage{s + 1}"].shape[1] == channels
        assert torch.allclose(pre_logits, features["grid"].mean(dim=(2, 3)), atol=1e-6)
        assert (features["grid"] >= 0).all()          # after the final ReLU
        assert torch.equal(features["grid"], torch.relu(model.norm(features[f"stage{len(model.stages)}"])))


def test_tiny_and_small_leave_an_8x8_grid_of_64x64_frames():
    """The config's total stride: 8 for the CPU encoders, 32 for ResNet-50."""
    for name in ("resnet_tiny_v2", "resnet_small_v2"):
        assert ENCODERS[name].stride == 8
    assert ENCODERS["resnet50_v2"].stride == 32


# --- registry --------------------------------------------------------------------------------

def test_unknown_name_lists_valid_names():
    """A typo in the encoder name is refused with every valid name in the message."""
    with pytest.raises(ValueError, match="resnet50_v2") as info:
        create_encoder("resnet51_v2")
    for name in ENCODERS:
        assert name in str(info.value)


def test_overrides():
    """Overrides reach the model (lists become tuples), unknown fields and norms are refused
    naming the valid ones, and the registry's entry is left unchanged."""
    model = create_encoder("resnet_tiny_v2", units=[1, 2, 1, 1], norm="gnws")
    assert model.config.units == (1, 2, 1, 1)
    assert len(model.stages[1]) == 2
    with pytest.raises(ValueError, match="base_width"):
        create_encoder("resnet_tiny_v2", widht=2)
    with pytest.raises(ValueError, match="gnws"):
        create_encoder("resnet_tiny_v2", norm="layernorm")
    assert ENCODERS["resnet_tiny_v2"].norm == "bn"   # overrides do not touch the registry


# --- structure -------------------------------------------------------------------------------

def test_root_has_no_norm_or_activation():
    """The root is exactly conv 7x7/2 (64·w channels, no bias) and max-pool 3x3/2."""
    bit = on_meta("resnet50_v2")
    conv, pool = bit.root
    assert type(conv) is nn.Conv2d and conv.kernel_size == (7, 7) and conv.stride == (2, 2)
    assert conv.out_channels == 64 and conv.bias is None
    assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 3 and pool.stride == 2
    assert on_meta("resnet50x3_v2").root[0].out_channels == 192


def test_stride_sits_in_the_3x3_conv_and_projections_in_first_units():
    """ResNet v2 as in BiT: stride 2 in the 3x3 conv (not the first 1x1) of the first unit of
    stages 2-4, a 1x1 projection in every first unit only, bottleneck = c/4, no conv bias."""
    model = on_meta("resnet50_v2")
    for s, stage in enumerate(model.stages):
        for u, unit in enumerate(stage):
            stride = 2 if (s > 0 and u == 0) else 1
            assert unit.conv1.stride == (1, 1) and unit.conv3.stride == (1, 1)
            assert unit.conv2.stride == (stride, stride)         # the stride is in the 3×3 conv
            assert unit.conv1.out_channels == unit.conv3.out_channels // 4
            assert (unit.projection is not None) == (u == 0)     # channels change in every first unit
            if unit.projection is not None:
                assert unit.projection.stride == (stride, stride)
                assert unit.projection.kernel_size == (1, 1)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def _random_bn_stats(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_projection_reads_the_preactivated_tensor():
    """With the branch's last conv zeroed, a unit returns its shortcut: the raw input for an
    identity unit, projection(relu(norm1(x))) for a projection unit; a projection of the raw
    input (ResNet v1 style) differs."""
    torch.manual_seed(0)
    model = create_encoder("resnet_tiny_v2", units=(2, 1, 1, 1)).eval()
    _random_bn_stats(model)
    first, second = model.stages[0]
    with torch.no_grad():
        for unit in (first, second):
            unit.conv3.weight.zero_()
        x = torch.randn(2, first.norm1.num_features, 8, 8)
        preact = torch.relu(first.norm1(x))
        expected = F.conv2d(preact, first.projection.weight)
        assert torch.allclose(first(x), expected, atol=1e-6)
        assert not torch.allclose(first(x), F.conv2d(torch.relu(x), first.projection.weight), atol=1e-3)
        y = torch.randn(2, second.norm1.num_features, 8, 8)
        assert second.projection is None and torch.equal(second(y), y)


def test_unit_order_by_hooks():
    """norm -> ReLU precedes every conv of the branch (pre-activation), conv1 and the projection
    read the same tensor, and the output is the branch plus the shortcut."""
    torch.manual_seed(0)
    unit = PreActBottleneck(16, 32, stride=2, norm="bn").eval()
    _random_bn_stats(unit)
    seen = {}
    for name in ("conv1", "conv2", "conv3", "projection", "norm1", "norm2", "norm3"):
        getattr(unit, name).register_forward_hook(
            lambda mod, inp, out, name=name: seen.update({name: (inp[0], out)}))
    with torch.no_grad():
        out = unit(torch.randn(2, 16, 9, 9))
    assert torch.equal(seen["conv1"][0], torch.relu(seen["norm1"][1]))
    assert torch.equal(seen["projection"][0], seen["conv1"][0])
    assert torch.equal(seen["norm2"][0], seen["conv1"][1])
    assert torch.equal(seen["conv2"][0], torch.relu(seen["norm2"][1]))
    assert torch.equal(seen["conv3"][0], torch.relu(seen["norm3"][1]))
    assert out.shape == (2, 32, 5, 5)
    assert torch.allclose(out, seen["conv3"][1] + seen["projection"][1])


def test_input_is_mapped_from_unit_range_to_symmetric():
    """The root convolution sees (x - 0.5) / 0.5 of the [0, 1] input."""
    model = create_encoder("resnet_tiny_v2").eval()
    seen = {}
    model.root[0].register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0]))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
    assert torch.allclose(seen["x"], 2 * x - 1)


def test_refuses_integer_images_and_unscaled_pixels():
    """uint8 images and, in eval mode, float images above 1.5 (0..255 not divided by 255) are
    refused instead of giving features that look fine; training mode does not check values."""
    model = create_encoder("resnet_tiny_v2").eval()
    with pytest.raises(TypeError, match="255"):
        model.forward_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="255"):
        model(torch.full((1, 3, 32, 32), 200.0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))
    with torch.no_grad():
        model.train()(torch.full((2, 3, 32, 32), 200.0))


def test_init():
    """Kaiming-normal with fan_out: std sqrt(2 / (out · kh · kw)); norms start at scale 1, offset 0.

    The convs checked have fan_out != fan_in (1x1, 256 -> 128 and 128 -> 512 channels), so a
    fan_in init (std 0.088 instead of 0.125, 0.125 instead of 0.0625) fails. Each has >= 32768
    weights: the sample std is within 1 / sqrt(2n) ~ 0.4 % of the true one (one standard error),
    so rel = 0.02 is five standard errors.
    """
    torch.manual_seed(0)
    model = create_encoder("resnet_small_v2")
    unit = model.stages[3][0]
    for conv in (unit.conv1, unit.conv3):
        assert conv.in_channels != conv.out_channels and conv.kernel_size == (1, 1)
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / conv.out_channels), rel=0.02)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


# --- normalisation ---------------------------------------------------------------------------

def test_weight_standardisation_matches_plain_formula():
    """Per output filter, over (in, kh, kw), biased variance, eps 1e-10; StdConv2d convolves with
    the standardised weight and is invariant to each filter's scale and offset."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64) * 3 + 1
    expected = torch.empty_like(w)
    for o in range(w.shape[0]):
        values = w[o].flatten().tolist()
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)      # biased
        expected[o] = (w[o] - mean) / math.sqrt(var + 1e-10)
    assert torch.allclose(standardize_weight(w.float()).double(), expected, atol=1e-5)

    conv = StdConv2d(3, 5, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w.float())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(conv(x), F.conv2d(x, expected.float(), padding=1), atol=1e-4)
    with torch.no_grad():                       # invariant to each filter's scale and offset
        conv.weight.mul_(torch.rand(5, 1, 1, 1) + 0.5).add_(torch.randn(5, 1, 1, 1))
    assert torch.allclose(conv(x), F.conv2d(x, expected.float(), padding=1), atol=1e-4)


def test_weight_standardisation_in_bf16():
    """Statistics in float32 whatever the parameter's dtype. Compared bit for bit: statistics
    computed in bf16 are off by up to ~0.02 for these filters, which a tolerance would let pass."""
    torch.manual_seed(0)
    w = torch.randn(8, 64, 3, 3) * 0.1 + 0.3
    reference = standardize_weight(w)
    assert reference.dtype == torch.float32
    # A bf16 parameter (model.bfloat16()) is standardised from float32 statistics of its values,
    # then cast back to bf16.
    low = standardize_weight(w.bfloat16())
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, standardize_weight(w.bfloat16().float()).bfloat16())
    # Under autocast the float32 parameter is standardised in float32; autocast casts the result
    # for the conv exactly as it casts a plain conv's weight.
    conv = StdConv2d(64, 8, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(w)
    x = torch.randn(2, 64, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        expected = F.conv2d(x, reference, padding=1)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, expected)


def test_bn_and_gnws_variants():
    """"bn" has no StdConv2d or GroupNorm; "gnws" has only StdConv2d (eps 1e-10) and GroupNorm
    with 32 groups (16 for the 16-channel layers of the CPU models)."""
    bn, gnws = on_meta("resnet50_v2", norm="bn"), on_meta("resnet50_v2", norm="gnws")
    assert not any(isinstance(m, (StdConv2d, nn.GroupNorm)) for m in bn.modules())
    convs = [m for m in gnws.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, StdConv2d) and m.eps == 1e-10 for m in convs)
    norms = [m for m in gnws.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 32 for m in norms)
    tiny = on_meta("resnet_tiny_v2", norm="gnws")     # 16-channel layers: 16 groups
    assert tiny.stages[0][0].norm1.num_groups == 16


@pytest.mark.parametrize("norm, independent", [("gnws", True), ("bn", False)])
def test_group_norm_does_not_mix_the_batch(norm, independent):
    """Co-training relies on this: under "gnws" a frame's features do not depend on the rest of
    the batch in training mode (1e-5 allows float32 reordering); under "bn" they do."""
    torch.manual_seed(0)
    model = create_encoder("resnet_tiny_v2", norm=norm).train()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        together, alone = model(x)[:2], model(x[:2])
    assert torch.allclose(together, alone, atol=1e-5) == independent


# --- memory format and precision -------------------------------------------------------------

@pytest.mark.parametrize("norm", ["bn", "gnws"])
def test_channels_last_matches_contiguous(norm):
    """channels_last gives the contiguous result up to float32 summation order (1e-4: the
    kernels accumulate in another order over a few hundred terms per output)."""
    torch.manual_seed(0)
    model = create_encoder("resnet_tiny_v2", norm=norm).train()
    x = torch.rand(4, 3, 48, 40)
    with torch.no_grad():
        expected = model.forward_features(x)
        model = model.to(memory_format=torch.channels_last)
        got = model.forward_features(x.contiguous(memory_format=torch.channels_last))
    for key in ("grid", "pre_logits"):
        assert torch.allclose(got[key], expected[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("norm", ["bn", "gnws"])
def test_bf16_autocast_forward_and_backward(norm):
    """Under bf16 autocast the grid is bf16, the pre-logits stay within 5 % (of the largest value)
    of float32, and every parameter gets a finite float32 gradient.

    bf16 keeps 8 significant bits (0.4 % per rounding); over the tiny encoder's layers the
    measured deviation is 1.6 % for both norms, so 5 % leaves a 3x margin for other CPUs' bf16
    kernels, while an error that changes the computation under autocast, not just its rounding,
    is off by far more.
    """
    torch.manual_seed(0)
    model = create_encoder("resnet_tiny_v2", norm=norm).train()
    x = torch.rand(8, 3, 64, 64)
    expected = model(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.forward_features(x)
    assert features["grid"].dtype == torch.bfloat16
    pre_logits = features["pre_logits"].float()
    assert (pre_logits - expected).abs().max() < 0.05 * expected.abs().max()
    pre_logits.square().mean().backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


# --------------------------------------------------------------------------------------
# The LSTM predictor's output layer (VIVI app. A)
# --------------------------------------------------------------------------------------


def test_lstm_predictor_ends_in_one_linear_layer_by_default():
    """VIVI app. A's K = 4 predictor: a 2-layer LSTM and "another linear layer" 256 -> 512. By default
    (and in every preset) one layer maps the state after shot l to every later shot's prediction, so
    the three predictions from shot 0 are the same vector; ``per_offset`` has a layer per offset m,
    whose three predictions differ."""
    from vivi.models.heads import LSTMPredictor
    from vivi.train.config import ModelConfig, list_presets, load_config
    assert ModelConfig().lstm_output == "linear" and len(LSTMPredictor(8).heads) == 1
    assert {load_config(name, validate=False).model.lstm_output for name in list_presets()} == {"linear"}
    torch.manual_seed(0)
    shots = torch.randn(2, 4, 8)
    for output, layers in (("linear", 1), ("per_offset", 3)):
        predictor = LSTMPredictor(8, hidden=6, max_offset=3, output=output)
        assert len(predictor.heads) == layers
        queries = predictor(shots).queries                     # pairs (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
        same = torch.equal(queries[:, 0], queries[:, 1]) and torch.equal(queries[:, 0], queries[:, 2])
        assert same == (output == "linear")
    with pytest.raises(ValueError, match="per_offset"):
        LSTMPredictor(8, output="per_shot")


def test_a_checkpoint_with_per_offset_layers_loads_into_the_default_model():
    """A model saved with one layer per offset (``model.lstm_output=per_offset``, vivi's only kind in
    earlier versions, whose configs do not name it) loads into a model built with the default, strictly,
    and predicts what the saved one predicts."""
    from vivi.train.config import load_config
    from vivi.train.model import VIVIModel
    torch.manual_seed(0)
    saved = VIVIModel(load_config("tiny-vivi-ex4", ["model.lstm_output=per_offset"], validate=False))
    loaded = VIVIModel(load_config("tiny-vivi-ex4", validate=False))
    assert len(loaded.predictor.heads) == 1
    loaded.load_state_dict(saved.state_dict())
    assert loaded.predictor.output == "per_offset" and len(loaded.predictor.heads) == 3
    shots = torch.randn(2, 4, saved.predictor.lstm.input_size)
    torch.testing.assert_close(loaded.predictor(shots).queries, saved.predictor(shots).queries)
