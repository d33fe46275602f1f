"""Presets and the config: every YAML parses and builds; overrides are type-checked; errors list valid values."""
from __future__ import annotations

import pytest
import torch

from vivi.train.config import TrainConfig, config_to_dict, list_presets, load_config, preset_rows
from vivi.train.model import VIVIModel

PAPER_ROWS = ["ex-yt-f", "ex-yt-s", "vivi-ex2", "vivi-ex4", "vivi-ex2-ord", "rot-yt-f", "vivi-rot2", "vivi-rot4",
              "vivi-ex4-big", "vivi-ex4-aa", "vivi-ex4-co10", "vivi-ex4-co100", "vivi-ex4-co100-big",
              "objcentric-vivi", "objcentric", "objcentric-random-boxes", "objcentric-random-boxes-labels",
              "objcentric-extra-class-head", "objcentric-class-head-only", "objcentric-co100",
              "ex-yt-f-aa", "ex-yt-s-aa", "rot-yt-f-aa", "vivi-ex4-big-aa", "vivi-rot4-aa",
              "objcentric-vivi-co100", "objcentric-co100-wide", "objcentric-vivi-co100-wide",
              "ex-imagenet", "rot-imagenet", "sup-100", "sup-rot-100"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_paper_row_has_a_preset_with_a_description():
    presets = list_presets()
    for name in PAPER_ROWS:
        assert name in presets and presets[name], name
    assert all(description for description in presets.values())


@pytest.mark.parametrize("name", sorted(list_presets()))
def test_preset_parses_validates_and_builds(name, tmp_path):
    source = tmp_path / "images.npz"
    source.write_bytes(b"")                       # existence is all validation checks
    config = load_config(name, validate=False)
    if config.loss.cotrain_weight > 0:
        config = load_config(config, [f"loss.cotrain_source={source}"])
    else:
        config.validate()
    assert config.name == name
    big = not config.model.encoder.startswith("resnet_tiny")
    # R50 models are built on the meta device: shapes and heads without memory or compute
    with torch.device("meta") if big else torch.device("cpu"):
        model = VIVIModel(config)
    heads = {n for n, _ in model.named_children()}
    assert ("frame_head" in heads) == (config.loss.frame != "none")
    assert ("shot_projection" in heads) == (config.loss.video != "none")
    assert ("object_loss" in heads) == (config.loss.object_weight > 0)
    assert ("image_class_head" in heads) == (config.loss.cotrain_weight > 0)
    if config.loss.object_weight > 0:
        assert ("object_class_head" in heads) == ("classification" in config.loss.object_terms)
    # a disabled head is an attribute set to None (not a missing one), and the model says which
    # inputs it needs: a loop that probed attributes, or asked the wrong property, fails here
    for name in ("frame_head", "shot_projection", "predictor", "shot_order_head", "video_loss", "object_class_head",
                 "object_loss", "image_class_head"):
        assert (getattr(model, name) is None) == (name not in heads), name
    assert model.uses_boxes == (config.loss.object_weight > 0)
    assert model.uses_labelled_images == (config.loss.cotrain_weight > 0)
    if not big:                                   # a real forward of the tiny model
        d = config.data
        k = d.shots
        frames = torch.rand(2, k, d.frames, 3, 32, 32)
        boxes = torch.tensor([0.1, 0.1, 0.6, 0.6]).expand(2, k, d.frames, 2, 4).clone()
        labels = torch.randint(0, 3, (2, k, d.frames, 2))
        images, image_labels = torch.rand(4, 3, 32, 32), torch.randint(0, 4, (4,))
        terms, _ = model(frames, boxes, labels, images, image_labels, generator=torch.Generator().manual_seed(0))
        assert all(torch.isfinite(t) for t in terms.values())
        # every enabled loss gives its term (a head built but skipped in forward would be missing)
        expected = {config.loss.frame, config.loss.video} - {"none"}
        expected |= {"object"} if config.loss.object_weight > 0 else set()
        expected |= {"supervised"} if config.loss.cotrain_weight > 0 else set()
        assert set(terms) == expected


def _linear(name: str) -> list[str]:
    return [f"{name}.weight", f"{name}.bias"]


# The names under which a checkpoint stores each head's tensors (besides ``encoder.*``), written
# out: checkpoints of earlier runs load only while the model registers its heads under these names.
HEAD_KEYS = {
    "frame_head": _linear("frame_head"),
    "shot_projection": _linear("shot_projection.proj"),
    "mlp": [f"predictor.{net}.{i}.{p}" for net in ("phi", "psi") for i in (0, 2) for p in ("weight", "bias")],
    "lstm": [f"predictor.lstm.{kind}_{gate}_l{layer}" for kind in ("weight", "bias") for gate in ("ih", "hh")
             for layer in (0, 1)],        # + one linear map per prediction offset: predictor.heads.M
    "bilinear": ["predictor.weight.weight"],
    "shot_order": [f"shot_order_head.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")],
    "object_class_head": _linear("object_class_head"),
    "image_class_head": _linear("image_class_head"),
}


@pytest.mark.parametrize("name, overrides", [(name, []) for name in sorted(list_presets())] + [
    ("tiny-vivi-ex4", ["loss.predictor=bilinear"]), ("tiny-vivi-ex2", ["loss.predictor=lstm"]),
    ("tiny-vivi-ex4", ["model.lstm_output=per_offset"])])
def test_checkpoint_keys_keep_their_names(name, overrides):
    """The state_dict keys of every preset's model: ``encoder.`` + the encoder's own, and the heads'
    names of HEAD_KEYS. Catches a renamed or re-nested head attribute, or a loss module that gained
    parameters or buffers, either of which would make the checkpoints of earlier runs unloadable."""
    from vivi.train.model import build_encoder, encoder_spec
    config = load_config(name, overrides, validate=False)
    loss = config.loss
    with torch.device("meta"):
        keys = list(VIVIModel(config).state_dict())
        encoder_keys = ["encoder." + k for k in build_encoder(encoder_spec(config)).state_dict()]
    expected = list(encoder_keys)
    expected += HEAD_KEYS["frame_head"] if loss.frame != "none" else []
    expected += HEAD_KEYS["shot_projection"] if loss.video != "none" else []
    if loss.video == "infonce":
        expected += HEAD_KEYS[loss.predictor]
    if loss.video == "infonce" and loss.predictor == "lstm":
        # one output layer (VIVI app. A), or one per offset with model.lstm_output=per_offset
        heads = config.data.shots - 1 if config.model.lstm_output == "per_offset" else 1
        expected += [key for m in range(heads) for key in _linear(f"predictor.heads.{m}")]
    expected += HEAD_KEYS["shot_order"] if loss.video == "shot_order" else []
    if loss.object_weight > 0 and "classification" in loss.object_terms:
        expected += HEAD_KEYS["object_class_head"]
    expected += HEAD_KEYS["image_class_head"] if loss.cotrain_weight > 0 else []
    assert sorted(keys) == sorted(expected)


def test_paper_hyper_parameters():
    ex4 = load_config("vivi-ex4")
    assert (ex4.data.shots, ex4.data.frames, ex4.data.videos) == (4, 8, 512)
    assert (ex4.optim.lr, ex4.optim.steps, ex4.optim.decay_steps, ex4.optim.warmup_steps) == \
        (0.8, 120000, [90000, 110000], 5000)
    assert ex4.model.encoder == "resnet50_v2" and ex4.model.norm == "bn" and ex4.loss.predictor == "lstm"
    f = load_config("ex-yt-f")
    assert f.data.mode == "frame" and f.optim.warmup_steps == 17000 and f.loss.video == "none"
    assert f.data.frame_choice == "fixed"    # the papers' frame data set: one frame per video (VIVI §4)
    assert load_config("vivi-ex4-aa").loss.video_weight == pytest.approx(ex4.loss.video_weight / 2)
    obj = load_config("objcentric")
    assert obj.loss.object_weight == 5.0 and obj.loss.video_weight == 0.04 and obj.data.detector
    co = load_config("vivi-ex4-co10", validate=False)
    assert co.model.norm == "gnws" and co.optim.steps == 100000 and co.loss.cotrain_images == 256
    assert load_config("vivi-ex4-big").model.encoder == "resnet50x3_v2"


def test_overrides_are_type_checked():
    config = load_config("tiny-vivi-ex4", ["optim.lr=0.5", "data.videos=3", "run.compile=true",
                                           "optim.decay_steps=[10, 20]", "data.detector=null", "optim.lr=1e-3"])
    assert config.optim.lr == 1e-3 and config.data.videos == 3 and config.run.compile is True
    assert config.optim.decay_steps == [10, 20] and config.data.detector is None
    with pytest.raises(TypeError, match="data.videos expects an integer"):
        load_config("tiny-vivi-ex4", ["data.videos=many"])
    with pytest.raises(TypeError, match="run.compile expects true/false"):
        load_config("tiny-vivi-ex4", ["run.compile=3"])
    with pytest.raises(TypeError, match="optim.decay_steps expects a list"):
        load_config("tiny-vivi-ex4", ["optim.decay_steps=5"])


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="optim.lr"):
        load_config("tiny-vivi-ex4", ["optim.learning_rate=0.1"])
    with pytest.raises(KeyError, match="valid: .*optim.steps"):
        load_config("tiny-vivi-ex4", ["steps=3"])
    with pytest.raises(KeyError, match="valid: name, description, data, model"):
        load_config("tiny-vivi-ex4", {"optimizer": {"lr": 1}})
    with pytest.raises(ValueError, match="unknown preset 'vivi-ex9'; valid: .*vivi-ex4"):
        load_config("vivi-ex9")
    with pytest.raises(ValueError, match="loss.frame='triplet' is not valid; valid: exemplar, rotation, none"):
        load_config("tiny-vivi-ex4", ["loss.frame=triplet"])
    with pytest.raises(ValueError, match="data.frame_choice='random' is not valid; valid: fixed, each_draw"):
        load_config("tiny-ex-yt-f", ["data.frame_choice=random"])
    with pytest.raises(ValueError, match="model.encoder=.*valid: .*resnet50_v2"):
        load_config("tiny-vivi-ex4", ["model.encoder=vgg"])
    with pytest.raises(ValueError, match="needs data.shots >= 2"):
        load_config("tiny-vivi-ex4", ["data.shots=1"])
    with pytest.raises(ValueError, match="needs data.detector"):
        load_config("tiny-vivi-ex4", ["loss.object_weight=1.0"])


def test_yaml_file_round_trip(tmp_path):
    from vivi.train.config import dump_config
    config = load_config("vivi-rot4", ["optim.steps=7"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(config))
    again = load_config(path)
    assert again == config and isinstance(again, TrainConfig)


def test_every_paper_preset_names_its_row_and_the_mean_the_reference_page_lists():
    """Each paper preset's row (paper, table, VTAB-1k mean) is printed by --list-presets; its mean must be
    the one docs/reference.md quotes from the paper (a typo in either shows here)."""
    from pathlib import Path
    reference = (Path(__file__).parents[1] / "docs" / "reference.md").read_text()
    rows = preset_rows()
    for name in PAPER_ROWS:
        row = rows[name]
        assert row is not None and row.paper in ("VIVI", "Object-centric") and row.vtab is not None, name
        assert f"{row.vtab:.1f}" in reference, (name, row.vtab)
    assert all(rows[name] is None for name in rows if name.startswith("tiny-"))


@pytest.mark.parametrize("name, base, changed", [
    ("ex-yt-f-aa", "ex-yt-f", {"augment.preset": "autoaugment"}),
    ("vivi-ex4-big-aa", "vivi-ex4-big", {"augment.preset": "autoaugment", "loss.video_weight": 0.02}),
    ("vivi-rot4-aa", "vivi-rot4", {"augment.preset": "autoaugment", "loss.video_weight": 0.02}),
    ("objcentric-vivi-co100", "objcentric-co100", {"loss.object_weight": 0.0, "data.detector": None}),
    ("objcentric-co100-wide", "objcentric-co100", {"model.encoder": "resnet50x3_v2"}),
])
def test_a_preset_with_a_base_is_its_base_with_only_its_own_fields_changed(name, base, changed):
    """A derived preset (``base:``) differs from its base in exactly the fields it lists (a merge that
    replaced a whole section would reset the base's other fields of that section to the defaults)."""
    def flat(config):
        return {f"{section}.{key}": value for section, values in config_to_dict(config).items()
                if isinstance(values, dict) for key, value in values.items()}
    derived, original = flat(load_config(name, validate=False)), flat(load_config(base, validate=False))
    assert {key for key in derived if derived[key] != original[key]} == set(changed)
    assert all(derived[key] == value for key, value in changed.items())


def test_a_config_file_may_start_from_a_preset_or_another_file(tmp_path):
    """`base:` in a user's YAML: a preset name, or a file beside it; a loop of bases is one error."""
    (tmp_path / "mine.yaml").write_text("base: tiny-vivi-ex4\noptim:\n  steps: 7\n")
    (tmp_path / "more.yaml").write_text("base: mine.yaml\nloss:\n  video_weight: 0.5\n")
    config = load_config(tmp_path / "more.yaml")
    reference = load_config("tiny-vivi-ex4", ["optim.steps=7", "loss.video_weight=0.5"])
    assert config_to_dict(config) == {**config_to_dict(reference), "name": "custom", "description": ""}
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="leads back to itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: no-such-preset\n")
    with pytest.raises(ValueError, match="unknown preset 'no-such-preset'"):
        load_config(tmp_path / "c.yaml")
