"""vivi.eval.ood and `vivi ood`: ImageNet-V2, -C and -A accuracy of a co-trained model's ImageNet head.

The sets are fabricated in their published layouts from tiny uniform images written with OpenCV.
Where the predictions must be chosen image by image, the encoder reads an image's grey value as a
code and the head maps each code to a logit vector the test sets; the checkpoint tests use a tiny
co-trained run whose head's bias alone decides the prediction.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from vivi.cli import main
from vivi.eval.ood import (
    ALEXNET_ERRORS,
    NO_HEAD,
    ImageNetClassifier,
    imagenet_a_accuracy,
    imagenet_c_accuracy,
    imagenet_v2_accuracy,
    load_imagenet_classifier,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# 1000 made-up wnids; their sorted order is ImageNet's class-index order
WNIDS = sorted(f"n{1_000_000 + 37 * i:08d}" for i in range(1000))


def write_image(path: Path, code: int) -> None:
    """A uniform 12x12 grey PNG of value ``code`` (lossless: the code survives any resize)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((12, 12, 3), code, np.uint8))


class CodeEncoder(nn.Module):
    """The one-hot code (grey value 0..255) of each image."""
    num_features = 256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot((x[:, 0].mean((1, 2)) * 255).round().long(), 256).float()


class Plan:
    """Images whose logits the test chooses: ``add(path, logits)`` gives each a code."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []

    def add(self, path: Path, logits: torch.Tensor) -> None:
        write_image(path, len(self.rows))
        self.rows.append(logits)

    def model(self, names: list[str]) -> ImageNetClassifier:
        head = nn.Linear(256, 1000)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.weight[:, :len(self.rows)] = torch.stack(self.rows, 1)
        return ImageNetClassifier(CodeEncoder(), head, names, "test", input_size=8).eval()


def logits_with(top: list[int], rng: np.random.Generator) -> torch.Tensor:
    """Random logits in [0, 1) with ``top[0]`` the largest, ``top[1]`` the second, ..."""
    logits = torch.from_numpy(rng.random(1000)).float()
    for rank, output in enumerate(top):
        logits[output] = 10.0 - rank
    return logits


def test_accuracies_follow_the_class_mapping_and_the_imagenet_a_subset(tmp_path):
    """The head's classes are in a permuted order (a class file's order, not sorted): V2 folder i is the
    i-th wnid in sorted order, C and A folders their wnid's output; ImageNet-A's arg-max is over its
    folders' classes only. Catches an identity mapping, an unrestricted ImageNet-A arg-max, a mean
    over images instead of over severities, and a wrong mCE."""
    rng = np.random.default_rng(0)
    names = list(np.random.default_rng(1).permutation(WNIDS))
    out = {w: names.index(w) for w in WNIDS}           # wnid -> head output
    plan = Plan()
    v2 = tmp_path / "v2"
    # class 0: 2 right of 2; class 5: 1 right of 3 (the others predict class 6); class 999: 0 of 1
    for folder, right, wrong in (("0", 2, 0), ("5", 1, 2), ("999", 0, 1)):
        truth = out[WNIDS[int(folder)]]
        for i in range(right + wrong):
            plan.add(v2 / folder / f"{i}.png", logits_with([truth] if i < right else [out[WNIDS[6]], truth], rng))
    c = tmp_path / "c"
    wnid_a, wnid_b = WNIDS[10], WNIDS[20]
    # gaussian_noise: severity 1 has 2/2 right, severity 2 1/4 right -> mean 0.625 (0.5 over the 6 images);
    # fog: severity 1 has 0/1 right
    for corruption, severity, right, total in (("gaussian_noise", 1, 2, 2), ("gaussian_noise", 2, 1, 4),
                                               ("fog", 1, 0, 1)):
        for i in range(total):
            wnid = (wnid_a, wnid_b)[i % 2]
            top = [out[wnid]] if i < right else [out[WNIDS[30]], out[wnid]]
            plan.add(c / corruption / str(severity) / wnid / f"{i}.png", logits_with(top, rng))
    a = tmp_path / "a"
    subset = [WNIDS[100], WNIDS[200], WNIDS[300]]
    # per image (the true wnid, the ranking of outputs): the full arg-max of images 0 and 1 is a class
    # outside the subset; within the subset image 0 is right, image 1 wrong; image 2 right; image 3 wrong
    for i, (truth, top) in enumerate(((0, [WNIDS[5], subset[0]]), (1, [WNIDS[5], subset[2], subset[1]]),
                                      (2, [subset[2]]), (2, [subset[0], subset[2]]))):
        plan.add(a / subset[truth] / f"{i}.png", logits_with([out[w] for w in top], rng))
    model = plan.model(names)

    r = imagenet_v2_accuracy(model, v2)
    assert (r["accuracy"], r["images"], r["classes"]) == (pytest.approx(3 / 6), 6, 3)
    r = imagenet_c_accuracy(model, c)
    assert r["corruptions"]["gaussian_noise"]["severities"]["2"]["accuracy"] == pytest.approx(0.25)
    assert r["corruptions"]["gaussian_noise"]["accuracy"] == pytest.approx(0.625)
    assert r["accuracy"] == pytest.approx((0.625 + 0.0) / 2)
    assert r["mce"] is None and "no mCE" in r["mce_note"] and "ce" not in r["corruptions"]["fog"]
    r = imagenet_a_accuracy(model, a)
    assert (r["accuracy"], r["images"], r["classes"]) == (pytest.approx(2 / 4), 4, 3)


def test_mce_over_the_15_corruptions_against_its_definition(tmp_path):
    """With every corruption at severities 1-5, CE = (1 - mean accuracy over severities) / AlexNet's
    error and mCE their mean; a sixth corruption counts in the accuracy but not in the mCE. Catches
    a CE of the wrong sign or normaliser and an mCE over the wrong corruptions."""
    rng = np.random.default_rng(2)
    names = list(WNIDS)
    plan = Plan()
    right = {}
    for k, corruption in enumerate([*ALEXNET_ERRORS, "speckle_noise"]):
        for severity in range(1, 6):
            wnid = WNIDS[k]
            hit = (k + severity) % 3 != 0          # a pattern that differs between corruptions
            right[corruption, severity] = hit
            plan.add(tmp_path / corruption / str(severity) / wnid / "0.png",
                     logits_with([names.index(wnid)] if hit else [names.index(WNIDS[999]), names.index(wnid)], rng))
    r = imagenet_c_accuracy(plan.model(names), tmp_path)
    mean = {c: np.mean([right[c, s] for s in range(1, 6)]) for c in [*ALEXNET_ERRORS, "speckle_noise"]}
    assert r["mce"] == pytest.approx(np.mean([(1 - mean[c]) / ALEXNET_ERRORS[c] for c in ALEXNET_ERRORS]))
    assert r["accuracy"] == pytest.approx(np.mean(list(mean.values())))
    assert "ce" not in r["corruptions"]["speckle_noise"]


# ---------------------------------------------------------------- checkpoints and the command

def cotrained_run(tmp_path: Path, favoured: list[int], preset: str = "tiny-vivi-ex4-co") -> Path:
    """A tiny run of ``preset`` (1000 image classes, co-trained on a folder of the 1000 WNIDS) whose
    head ignores the image: logits = bias, ``favoured[0]`` highest, ``favoured[1]`` second, ..."""
    from vivi.train.checkpoint import write_checkpoint
    from vivi.train.config import config_json, load_config
    from vivi.train.model import VIVIModel, encoder_spec
    source = tmp_path / "cotrain"
    for wnid in WNIDS:
        (source / wnid).mkdir(parents=True)
    over = ["model.image_classes=1000"] + ([f"loss.cotrain_source={source}"] if preset.endswith("-co") else [])
    config = load_config(preset, over)
    torch.manual_seed(0)
    model = VIVIModel(config)
    if model.image_class_head is not None:
        with torch.no_grad():
            model.image_class_head.weight.zero_()
            model.image_class_head.bias.zero_()
            for rank, output in enumerate(favoured):
                model.image_class_head.bias[output] = 10.0 - rank
    run = tmp_path / "run"
    write_checkpoint(run, 1, model, torch.optim.SGD(model.parameters(), lr=0.1), config_json(config),
                     encoder_spec(config))
    return run


def write_sets(root: Path) -> tuple[Path, Path, Path]:
    """Small ImageNet-V2, -C and -A folders of random 20x14 images."""
    rng = np.random.default_rng(3)

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (20, 14, 3)).astype(np.uint8))

    for folder, count in (("0", 1), ("3", 3), ("12", 2)):
        for i in range(count):
            image(root / "v2" / folder / f"{i}.jpeg")
    for corruption, severity, wnid, count in (("blur", 1, WNIDS[7], 2), ("blur", 1, WNIDS[3], 2),
                                              ("blur", 3, WNIDS[7], 1), ("snow", 2, WNIDS[3], 3)):
        for i in range(count):
            image(root / "c" / corruption / str(severity) / wnid / f"{i}.JPEG")
    for wnid, count in ((WNIDS[7], 2), (WNIDS[40], 3)):
        for i in range(count):
            image(root / "a" / wnid / f"{i}.jpg")
    return root / "v2", root / "c", root / "a"


def accuracies_by_loop(run: Path, v2: Path, c: Path, a: Path) -> dict:
    """The three accuracies from the checkpoint's logits, image by image (the head's order: sorted
    wnids, the co-training folder's)."""
    from vivi.data.images import fit_square, read_image
    model = load_imagenet_classifier(run)

    def logits(path: Path) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(fit_square(read_image(path), model.input_size)[0]))
        with torch.no_grad():
            return model(x.permute(2, 0, 1)[None].float() / 255)[0]

    hits = [int(logits(p).argmax()) == int(p.parent.name) for p in sorted(v2.rglob("*.jpeg"))]
    severities = {}
    for p in sorted(c.rglob("*.JPEG")):
        hit = int(logits(p).argmax()) == WNIDS.index(p.parent.name)
        severities.setdefault((p.parts[-4], p.parts[-3]), []).append(hit)
    per_corruption = {}
    for (corruption, _), found in severities.items():
        per_corruption.setdefault(corruption, []).append(np.mean(found))
    subset = sorted(WNIDS.index(p.name) for p in a.iterdir())
    a_hits = []
    for p in sorted(a.rglob("*.jpg")):
        scores = logits(p)
        best = max(subset, key=lambda i: scores[i])
        a_hits.append(best == WNIDS.index(p.parent.name))
    return {"imagenet_v2": np.mean(hits), "imagenet_c": np.mean([np.mean(v) for v in per_corruption.values()]),
            "imagenet_a": np.mean(a_hits)}


def test_ood_command_on_a_cotrained_checkpoint(tmp_path, capsys):
    """`vivi ood` on a co-trained run: each set's accuracy equals a plain loop's over the same logits
    and the value the head's bias fixes (every image predicted as class 3, or, within ImageNet-A's
    classes, WNIDS[40]). Catches a class order other than the co-training folder's or the class
    file's, a V2 index read as a string rank, and an unrestricted ImageNet-A arg-max."""
    run = cotrained_run(tmp_path, favoured=[3, 40, 7, 992])
    v2, c, a = write_sets(tmp_path / "sets")
    out = tmp_path / "ood.json"
    assert main(["ood", "--checkpoint", str(run), "--imagenet-v2", str(v2), "--imagenet-c", str(c),
                 "--imagenet-a", str(a), "--workers", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["size"] == 32 and result["classes"]["source"].startswith("co-training folder")
    # C: blur severity 1 has 2 of 4 images of class 3, severity 3 none; snow 3 of 3
    expected = {"imagenet_v2": 3 / 6, "imagenet_c": np.mean([(2 / 4 + 0 / 1) / 2, 3 / 3]), "imagenet_a": 3 / 5}
    by_loop = accuracies_by_loop(run, v2, c, a)
    for name, value in expected.items():
        assert result[name]["accuracy"] == pytest.approx(value) == pytest.approx(by_loop[name]), name
    assert result["imagenet_c"]["mce"] is None and "ImageNet-C: top-1 accuracy 62.5 %" in printed
    # the same head, its classes named by a file in reverse order: within ImageNet-A's classes,
    # WNIDS[7] is output 992 (bias 7) and WNIDS[40] output 959 (bias 0)
    order = list(reversed(WNIDS))
    (tmp_path / "classes.txt").write_text("".join(f"{w} name of {w}\n" for w in order))
    assert main(["ood", "--checkpoint", str(run), "--imagenet-a", str(a), "--classes", str(tmp_path / "classes.txt"),
                 "--workers", "0", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["imagenet_a"]["accuracy"] == pytest.approx(2 / 5)


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_ood_refuses_models_without_a_head_and_bad_folders_in_one_line(tmp_path, capsys):
    """A random encoder, an exported encoder and a run trained without co-training have no ImageNet
    head; missing folders, folders of the wrong layout and wnid sets without class names are named."""
    run = cotrained_run(tmp_path, favoured=[7])
    v2, c, a = write_sets(tmp_path / "sets")
    base = ["--workers", "0", "--imagenet-v2", str(v2)]
    assert NO_HEAD in _error(capsys, ["ood", "--checkpoint", "random:resnet_tiny_v2", *base])
    assert main(["export", str(run), "--out", str(tmp_path / "enc.safetensors")]) == 0
    capsys.readouterr()
    assert NO_HEAD in _error(capsys, ["ood", "--checkpoint", str(tmp_path / "enc.safetensors"), *base])
    plain = cotrained_run(tmp_path / "plain", favoured=[], preset="tiny-vivi-ex4")
    assert NO_HEAD in _error(capsys, ["ood", "--checkpoint", str(plain), *base])
    assert "ImageNet-C folder" in _error(capsys, ["ood", "--checkpoint", str(run), "--imagenet-c",
                                                  str(tmp_path / "nope")])
    assert "at least one of" in _error(capsys, ["ood", "--checkpoint", str(run)])
    (v2 / "cat").mkdir()
    assert "named by its index" in _error(capsys, ["ood", "--checkpoint", str(run), *base])
    (v2 / "cat").rmdir()
    (a / "images").mkdir()
    assert "named by its wnid" in _error(capsys, ["ood", "--checkpoint", str(run), "--imagenet-a", str(a)])
    (a / "images").rmdir()
    (c / "blur" / "1" / "n99999999").mkdir()
    assert "no output for wnid n99999999" in _error(capsys, ["ood", "--checkpoint", str(run), "--imagenet-c", str(c)])
    (c / "blur" / "1" / "n99999999").rmdir()
    # the co-training folder gone: wnids cannot be mapped without a class file; V2's indices still can
    import shutil
    shutil.rmtree(tmp_path / "cotrain")
    assert "pass --classes FILE" in _error(capsys, ["ood", "--checkpoint", str(run), "--imagenet-a", str(a)])
    assert main(["ood", "--checkpoint", str(run), *base]) == 0
