"""vivi.eval: VTAB-1k sweep, probes, robustness and object metrics, reports, resume, bad inputs.

Tasks are made here (solid red vs blue images in the VTAB image-folder layout) or come with
scikit-learn (digits); encoders are the random-init ``resnet_tiny_v2`` at 32 px.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vivi.cli import main
from vivi.eval import (
    EvalConfig,
    evaluate,
    fisher_test,
    load_split,
    load_suite,
    nearest_neighbour_hits,
    pm_k_accuracy,
    vtab,
)
from vivi.eval.probe import assert_unchanged, frozen_features, knn_classify, linear_probe, state_snapshot
from vivi.eval.transfer import load_eval_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = {"train800": 48, "val200": 16, "test": 40}


def write_colour_task(root: Path, name: str = "colour", random_labels: bool = False, seed: int = 0) -> Path:
    """A two-class image-folder task: noisy all-red (0) vs all-blue (1) 8x8 images; with
    ``random_labels`` the labels are coin flips. Returns the suite file."""
    rng = np.random.default_rng(seed)
    folder = root / name
    (folder / "images").mkdir(parents=True)
    lines, number = {}, 0
    for split, count in SIZES.items():
        rows = []
        for i in range(count):
            colour = i % 2
            image = rng.integers(0, 40, (8, 8, 3)).astype(np.uint8)
            image[..., 0 if colour == 0 else 2] += 200
            label = int(rng.integers(2)) if random_labels else colour
            cv2.imwrite(str(folder / "images" / f"{number:04d}.png"), image[..., ::-1])
            rows.append(f"images/{number:04d}.png {label}\n")
            number += 1
        lines[split] = rows
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("".join(rows))
    (folder / "task.json").write_text(json.dumps({"name": name, "group": "natural", "num_classes": 2}))
    suite = root / "suite.json"
    entries = json.loads(suite.read_text())["tasks"] if suite.exists() else []
    entries.append({"name": name, "group": "natural" if not random_labels else "structured"})
    suite.write_text(json.dumps({"tasks": entries}))
    return suite


def tiny_encoder(seed: int = 0):
    return load_eval_encoder("random:resnet_tiny_v2", seed=seed)


def splits_of(suite: Path, name: str) -> dict:
    task = next(t for t in load_suite(suite) if t.name == name)
    return {s: load_split(task, s) for s in ("train800", "val200", "train800val200", "test")}


def test_probe_knn_and_finetune_separate_colours_and_do_not_see_test_labels(tmp_path):
    """Red vs blue is separable: the probe, kNN and fine-tuning must all be exactly right on test
    (catches labels misaligned with images, a probe or head that does not train, a vote or argmax
    over the wrong axis). On the noise task the test labels are 40 fair coin flips drawn
    independently of the images and of every training label, so a classifier that never sees them
    gets Binomial(40, 1/2) right: 30 or more (accuracy >= 0.75) has probability 0.0011 for any seed,
    while one that was fitted on the test split (a leak) gets about all 40."""
    suite = write_colour_task(tmp_path)
    write_colour_task(tmp_path, "noise", random_labels=True, seed=1)
    encoder = tiny_encoder()
    config = vtab.FinetuneConfig(resolution=32, batch_size=16, eval_batch_size=64)
    for name in ("colour", "noise"):
        splits = splits_of(suite, name)
        feats = {s: frozen_features(encoder, v, 32) for s, v in splits.items()}
        labels = {s: v.labels for s, v in splits.items()}
        probe = linear_probe(feats, labels, cs=(0.1, 1.0))["test_accuracy"]
        knn = np.mean(knn_classify(feats["train800val200"], labels["train800val200"], feats["test"], k=5)
                      == labels["test"])
        model = vtab.finetune(encoder, splits["train800val200"], 2, vtab.Setting(0.01, 15), config, seed=0)
        tuned = vtab.accuracy(model, splits["test"], config)
        for what, value in (("probe", probe), ("knn", knn), ("finetune", tuned)):
            if name == "colour":
                assert value == 1.0, (name, what, value)
            else:
                assert value < 0.75, (name, what, value)


def test_linear_probe_leaves_the_encoder_bit_identical(tmp_path):
    suite = write_colour_task(tmp_path)
    encoder = tiny_encoder().train()           # even in train mode, features must not move BN buffers
    before = state_snapshot(encoder)
    splits = splits_of(suite, "colour")
    feats = {s: frozen_features(encoder, v, 32) for s, v in splits.items()}
    linear_probe(feats, {s: v.labels for s, v in splits.items()}, cs=(1.0,))
    assert_unchanged(encoder, before)
    assert encoder.training                    # mode restored
    with torch.no_grad():
        next(encoder.parameters()).add_(1e-7)
    with pytest.raises(AssertionError, match="changed"):
        assert_unchanged(encoder, before)


def test_finetune_does_not_touch_the_pretrained_encoder_and_head_starts_at_zero(tmp_path):
    suite = write_colour_task(tmp_path)
    encoder = tiny_encoder()
    before = state_snapshot(encoder)
    config = vtab.FinetuneConfig(resolution=32, batch_size=8)
    model = vtab.finetune(encoder, splits_of(suite, "colour")["train800"], 2, vtab.Setting(0.1, 0), config, 0)
    assert_unchanged(encoder, before)
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0


def test_learning_rate_schedule_decays_at_30_60_90_percent():
    lrs = [vtab.learning_rate_at(s, 0.1, 100) for s in range(100)]
    assert lrs[29] == 0.1 and lrs[30] == pytest.approx(0.01) and lrs[59] == pytest.approx(0.01)
    assert lrs[60] == pytest.approx(0.001) and lrs[90] == pytest.approx(1e-4)
    assert [s.key for s in vtab.sweep_settings()] == ["lr0.1-steps2500", "lr0.1-steps10000",
                                                           "lr0.01-steps2500", "lr0.01-steps10000"]
    assert [s.steps for s in vtab.sweep_settings(steps_scale=0.01)] == [25, 100, 25, 100]


def _digits_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "digits.yaml"
    suite.write_text("tasks:\n  - name: digits\n    group: natural\n    source: digits\n")
    return suite


class FakeTrainer:
    """Stands in for vtab.finetune/accuracy: records what each stage sees; val accuracy by setting."""

    VAL = {"lr0.1-steps25": 0.50, "lr0.1-steps100": 0.70, "lr0.01-steps25": 0.90, "lr0.01-steps100": 0.90}

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = [], fail_after

    def finetune(self, encoder, train, num_classes, setting, config, seed):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append({"split": train.name, "n": len(train), "ids": list(train.ids), "setting": setting.key,
                           "seed": seed, "classes": num_classes})
        return setting

    def accuracy(self, model, split, config):
        return self.VAL[model.key] if split.name == "val200" else 0.5 + 0.01 * len(self.calls) % 7 / 100


def test_sweep_picks_best_val200_then_retrains_on_the_1000_images(tmp_path, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(vtab, "finetune", fake.finetune)
    monkeypatch.setattr(vtab, "accuracy", fake.accuracy)
    config = EvalConfig(repetitions=2, steps_scale=0.01, resolution=8)
    result = evaluate("random:resnet_tiny_v2", _digits_suite(tmp_path), tmp_path / "out", config, progress=False)
    per_rep = 5
    assert len(fake.calls) == 2 * per_rep
    sweep, final = fake.calls[:4], fake.calls[4]
    assert [c["setting"] for c in sweep] == list(FakeTrainer.VAL)
    assert all(c["split"] == "train800" and c["n"] == 800 for c in sweep)
    # best val200 is a tie 0.9/0.9: the first in sweep order wins
    assert final["setting"] == "lr0.01-steps25" and final["split"] == "train800val200" and final["n"] == 1000
    assert final["ids"] == sweep[0]["ids"] + load_split(load_suite(_digits_suite(tmp_path))[0], "val200").ids
    assert fake.calls[per_rep]["seed"] != fake.calls[0]["seed"] and final["classes"] == 10
    task = result["tasks"]["digits"]
    assert task["selected"] == [{"lr": 0.01, "steps": 25}] * 2 and len(task["test_accuracy"]) == 2
    assert (tmp_path / "out" / "results.md").read_text().count("digits") >= 1


def test_interrupted_evaluation_resumes_without_redoing_finished_units(tmp_path, monkeypatch):
    suite = _digits_suite(tmp_path)
    config = EvalConfig(repetitions=1, steps_scale=0.01, resolution=8)
    first = FakeTrainer(fail_after=1)
    monkeypatch.setattr(vtab, "finetune", first.finetune)
    monkeypatch.setattr(vtab, "accuracy", first.accuracy)
    with pytest.raises(KeyboardInterrupt):
        evaluate("random:resnet_tiny_v2", suite, tmp_path / "out", config, progress=False)
    assert len(first.calls) == 1
    assert (tmp_path / "out" / "units" / "digits" / "rep0-val-lr0.1-steps25.json").exists()
    second = FakeTrainer()
    monkeypatch.setattr(vtab, "finetune", second.finetune)
    monkeypatch.setattr(vtab, "accuracy", second.accuracy)
    evaluate("random:resnet_tiny_v2", suite, tmp_path / "out", config, progress=False)
    assert [c["setting"] for c in second.calls] == ["lr0.1-steps100", "lr0.01-steps25", "lr0.01-steps100",
                                                    "lr0.01-steps25"]
    with pytest.raises(ValueError, match="other settings"):
        evaluate("random:resnet_tiny_v2", suite, tmp_path / "out", EvalConfig(repetitions=2), progress=False)


def test_pm_k_on_a_constructed_case():
    # two videos of 6 frames; video 0: frame 3 wrong; video 1: all right; frame 11 unlabelled
    labels = np.array([1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, -1])
    predictions = labels.copy()
    predictions[3] = 0
    predictions[11] = 5
    videos = np.array([0] * 6 + [1] * 6)
    result = pm_k_accuracy(predictions, labels, videos, anchors=[0, 2, 3, 5, 6, 10], k=1)
    # anchors: 0 ok (nbr 1 ok), 2 ok but nbr 3 wrong, 3 wrong, 5 ok (nbr 4 ok), 6 ok (video 0's frame 5
    # is not a neighbour), 10 ok (11 unlabelled is ignored)
    assert result["anchor_accuracy"] == pytest.approx(5 / 6)
    assert result["pm_k_accuracy"] == pytest.approx(4 / 6)
    assert result["delta"] == pytest.approx(1 / 6)
    assert pm_k_accuracy(predictions, labels, videos, anchors=[0, 5], k=2)["pm_k_accuracy"] == pytest.approx(0.5)
    assert pm_k_accuracy(predictions, labels, videos, anchors=[0, 5], k=3)["pm_k_accuracy"] == pytest.approx(0.0)
    assert pm_k_accuracy(predictions, labels, videos, anchors=[0, 5], k=0)["pm_k_accuracy"] == pytest.approx(1.0)


def _hits_by_loop(features, labels, groups=None) -> tuple[int, int]:
    """The object metric from its definition, one object at a time: the most cosine-similar other
    object (outside the object's group), first index on ties; objects without one are not counted."""
    hits = total = 0
    for i, a in enumerate(features):
        best, nearest = -np.inf, None
        for j, b in enumerate(features):
            if j != i and (groups is None or groups[j] != groups[i]):
                similarity = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                if similarity > best:
                    best, nearest = similarity, j
        if nearest is not None:
            total += 1
            hits += int(labels[nearest] == labels[i])
    return hits, total


def _fisher_by_sum(hits_a: int, total_a: int, hits_b: int, total_b: int) -> float:
    """Two-sided Fisher's exact p-value from the hypergeometric law of the 2x2 table with fixed
    margins: the summed probability of every table no more likely than the observed one."""
    from math import comb
    hits, total = hits_a + hits_b, total_a + total_b
    law = {x: comb(total_a, x) * comb(total_b, hits - x) / comb(total, hits)
           for x in range(max(0, hits - total_b), min(hits, total_a) + 1)}
    return min(1.0, sum(p for p in law.values() if p <= law[hits_a] * (1 + 1e-9)))


def test_nearest_neighbour_metric_and_fisher_test_against_their_definitions():
    """Catches a neighbour search that keeps the object itself or its own video's objects, picks the
    least similar, or counts objects without a candidate; and a Fisher test that is one-sided or
    reports another odds ratio."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    labels = np.repeat(np.arange(3), 20)
    clustered = centres[labels] + rng.normal(size=(60, 16))
    assert nearest_neighbour_hits(clustered, labels) == (60, 60)
    # pairs of identical objects (same video) with alternating classes: every NN is the twin
    twins = np.repeat(rng.normal(size=(30, 16)), 2, axis=0)
    twin_labels = np.repeat(np.arange(30) % 2, 2)
    assert nearest_neighbour_hits(twins, twin_labels) == (60, 60)
    # excluding the same video (the twin) leaves only other objects
    groups = np.repeat(np.arange(30), 2)
    assert nearest_neighbour_hits(twins, twin_labels, groups=groups) == _hits_by_loop(twins, twin_labels, groups)
    noise, noise_labels = rng.normal(size=(40, 8)), rng.integers(0, 3, 40)
    assert nearest_neighbour_hits(noise, noise_labels) == _hits_by_loop(noise, noise_labels)
    assert nearest_neighbour_hits(twins[:4], twin_labels[:4], groups=[0, 0, 1, 1]) == (0, 4)
    assert nearest_neighbour_hits(twins[:2], twin_labels[:2], groups=[0, 0]) == (0, 0)   # no candidate at all
    for a, b in ((50, 50), (90, 50), (66, 60), (60, 66), (3, 9)):
        result = fisher_test(a, 100, b, 100)
        assert result["p_value"] == pytest.approx(_fisher_by_sum(a, 100, b, 100), rel=1e-9), (a, b)
        assert result["odds_ratio"] == pytest.approx(a * (100 - b) / ((100 - a) * b)), (a, b)


def _welch_p(a, b) -> float:
    """Two-sided Welch t-test from its formula: t on the unpooled standard error, the
    Welch-Satterthwaite degrees of freedom."""
    from scipy.stats import t
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(2 * t.sf(abs(np.mean(a) - np.mean(b)) / np.sqrt(va + vb), df))


def test_report_compares_two_evaluations(tmp_path, monkeypatch):
    """The report's medians, relative increase and p-value match values computed here from the
    repetitions (catches another run taken as the baseline, a pooled-variance t-test); the
    means cover the compared tasks only; a folder that is not an evaluation's is refused."""
    suite = write_colour_task(tmp_path / "tasks")
    write_colour_task(tmp_path / "tasks", "noise", random_labels=True, seed=1)
    outs = []
    # test accuracy 0.3 + shift + spread x (fine-tuning runs so far) / 100: each task's repetitions
    # spread out, run b's twice as much as run a's after its shift, so Welch's test differs from Student's
    for run, shift, spread in (("a", 0.0, 1.0), ("b", 0.2, 1.5)):
        fake = FakeTrainer()
        monkeypatch.setattr(vtab, "finetune", fake.finetune)
        monkeypatch.setattr(vtab, "accuracy",
                            lambda model, split, config, shift=shift, spread=spread, fake=fake:
                            0.3 + shift + spread * len(fake.calls) / 100 if split.name == "test" else 0.5)
        out = tmp_path / run
        evaluate("random:resnet_tiny_v2", suite, out, EvalConfig(repetitions=3, steps_scale=0.001, resolution=8),
                 progress=False)
        outs.append(str(out))
    assert main(["report", *outs, "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    # colour, repetition r: its test unit is fine-tuning run 5 (r + 1) (4 sweep settings, then the retrain)
    a, b = [0.35, 0.40, 0.45], [0.575, 0.65, 0.725]
    assert report["tasks"][0]["task"] == "colour"
    base, other = report["tasks"][0]["runs"]
    assert base["median"] == pytest.approx(0.40) and other["median"] == pytest.approx(0.65)
    assert other["relative_increase"] == pytest.approx(0.25 / 0.40)
    assert other["p_value"] == pytest.approx(_welch_p(b, a), rel=1e-6) and other["significant"]
    assert base["p_value"] is None
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| colour | natural |" in table and "| *structured* |" in table and "**mean**" in table
    assert "p=" in table
    for png in ("accuracy.png", "relative.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
    # a run with a task more (and another protocol): means over the compared tasks only, both said
    extra = json.loads((Path(outs[1]) / "results.json").read_text())
    extra["tasks"]["more"] = {"group": "specialized", "median": 0.99, "test_accuracy": [0.99]}
    extra["protocol"], extra["mean"] = "knn", 0.9
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text(json.dumps(extra))
    assert main(["report", outs[0], str(tmp_path / "c"), "--out", str(tmp_path / "report2")]) == 0
    report = json.loads((tmp_path / "report2" / "report.json").read_text())
    medians = [row["runs"][1]["median"] for row in report["tasks"]]
    assert report["mean"]["c"] == pytest.approx(np.mean(medians)) and "specialized" not in report["groups"]["c"]
    table = (tmp_path / "report2" / "report.md").read_text()
    assert "c's more" in table and "different protocols" in table
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.json").write_text(json.dumps({"data": "x"}))
    assert main(["report", outs[0], str(tmp_path / "d"), "--out", str(tmp_path / "report3")]) == 2


def test_cli_eval_knn_end_to_end_with_a_random_init_encoder(tmp_path, capsys):
    """`vivi eval --protocol knn` on the separable colour task scores exactly 1.0 (catches test
    features or labels misaligned with train800val200's, a unit result read back wrongly)."""
    suite = write_colour_task(tmp_path)
    out = tmp_path / "out"
    args = ["eval", "--checkpoint", "random:resnet_tiny_v2", "--suite", str(suite), "--out", str(out),
            "--protocol", "knn", "--resolution", "32", "--knn-k", "5", "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["tasks"]["colour"]["median"] == 1.0 and results["groups"] == {"natural": results["mean"]}
    assert "colour" in (out / "results.md").read_text()


def test_a_resumed_evaluation_must_be_of_the_same_weights_and_tasks(tmp_path, capsys):
    """Resuming into OUT recomputes nothing, so it is refused when the encoder's weights (a run
    folder's newest checkpoint may change) or a task (another folder under the same name) differ;
    settings the protocol does not use may change."""
    suite = write_colour_task(tmp_path)
    write_colour_task(tmp_path / "other", name="colour", random_labels=True, seed=1)
    out = tmp_path / "out"
    args = ["eval", "--checkpoint", "random:resnet_tiny_v2", "--suite", str(suite), "--out", str(out),
            "--protocol", "knn", "--resolution", "32", "--knn-k", "5", "--no-progress"]
    assert main(args) == 0
    first = json.loads((out / "results.json").read_text())["tasks"]
    assert main(args + ["--reps", "2", "--batch-size", "8"]) == 0      # unused by knn: resumes
    assert json.loads((out / "results.json").read_text())["tasks"] == first
    _bad(tmp_path, capsys, args + ["--seed", "1"], "encoder weights")  # random:NAME is seeded
    suite.write_text(json.dumps({"tasks": [{"name": "colour", "group": "natural", "path": "other/colour"}]}))
    _bad(tmp_path, capsys, args, "tasks: colour")
    _bad(tmp_path, capsys, args[:-3] + ["--knn-k", "7", "--no-progress"], "knn_k 5 then, 7 now")


def test_suite_and_device_mistakes_are_named_before_anything_runs(tmp_path, capsys):
    write_colour_task(tmp_path)
    base = ["eval", "--checkpoint", "random:resnet_tiny_v2", "--protocol", "knn", "--resolution", "32",
            "--no-progress"]
    cases = {"bad.yaml": ("tasks: [{name: colour, group: natural", ["bad.yaml", "not valid YAML"]),
             "keys.json": (json.dumps({"tasks": [{"name": "colour", "group": "natural", "pth": "colour"}]}),
                           ["keys.json", "'pth'", "valid for source 'folder'"]),
             "late.json": (json.dumps({"tasks": [{"name": "colour", "group": "natural"},
                                                 {"name": "backgruond", "group": "natural"}]}),
                           ["backgruond", "does not exist"]),
             "classes.json": (json.dumps({"tasks": [{"name": "colour", "group": "natural", "num_classes": "six"}]}),
                              ["classes.json", "'six'", "integer"])}
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        _bad(tmp_path, capsys, base + ["--suite", str(tmp_path / name), "--out", str(tmp_path / name[:-5])], *words)
        assert not (tmp_path / name[:-5]).exists(), name       # refused before the output folder is made
    good = base + ["--suite", str(tmp_path / "suite.json")]
    _bad(tmp_path, capsys, good + ["--out", str(tmp_path / "o1"), "--device", "cuda:0" if not torch.cuda.is_available()
                                   else "nonsense"], "device")
    (tmp_path / "colour" / "task.json").unlink()         # no class count: a negative label is still caught
    lines = (tmp_path / "colour" / "train800.txt").read_text().splitlines()
    lines[2] = lines[2].rsplit(maxsplit=1)[0] + " -1"
    (tmp_path / "colour" / "train800.txt").write_text("\n".join(lines) + "\n")
    _bad(tmp_path, capsys, good + ["--out", str(tmp_path / "o2")], "train800.txt line 3", "negative")


def test_synthetic_world_tasks_folder_is_a_suite(tmp_path):
    from vivi.synth import make_world
    make_world(tmp_path / "w", videos=1, seconds=2, tasks=True, task_test_size=12, progress=False, workers=1)
    tasks = load_suite(tmp_path / "w")
    assert [t.name for t in tasks][:2] == ["object_class", "background"] and tasks[0].num_classes == 10
    split = load_split(tasks[0], "test")
    assert len(split) == 12 and split.batch([0, 1], 32).shape == (2, 3, 32, 32)
    digits = load_split(load_suite(_digits_suite(tmp_path))[0], "test")
    assert len(digits) == 797 and digits.batch([0], 16).max() <= 1


def _bad(tmp_path: Path, capsys, argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)


def test_bad_inputs_name_the_file(tmp_path, capsys):
    suite = write_colour_task(tmp_path)
    base = ["eval", "--checkpoint", "random:resnet_tiny_v2", "--suite", str(suite), "--protocol", "knn",
            "--resolution", "32", "--no-progress"]
    folder = tmp_path / "colour"
    (folder / "val200.txt").rename(folder / "val.txt")
    _bad(tmp_path, capsys, base + ["--out", str(tmp_path / "o1")], "val200.txt", "does not exist")
    (folder / "val.txt").rename(folder / "val200.txt")
    image = folder / "images" / "0003.png"
    data = image.read_bytes()
    image.write_bytes(b"not a png")
    _bad(tmp_path, capsys, base + ["--out", str(tmp_path / "o2")], "0003.png")
    image.write_bytes(data)
    lazy = folder / "images" / "0070.png"           # a test image: decoded when its batch is read
    data = lazy.read_bytes()
    lazy.write_bytes(b"")
    _bad(tmp_path, capsys, base + ["--out", str(tmp_path / "o2b")], "0070.png")
    lazy.write_bytes(data)
    lines = (folder / "test.txt").read_text().splitlines()
    lines[4] = lines[4].rsplit(maxsplit=1)[0] + " 7"
    (folder / "test.txt").write_text("\n".join(lines) + "\n")
    _bad(tmp_path, capsys, base + ["--out", str(tmp_path / "o3")], "test.txt line 5", "label 7")
    wrong = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(wrong), metadata={"kind": "something-else"})
    base[2] = str(wrong)
    _bad(tmp_path, capsys, base + ["--out", str(tmp_path / "o4")], "weights.safetensors")
    base[2] = "random:resnet_huge"
    _bad(tmp_path, capsys, base + ["--out", str(tmp_path / "o5")], "resnet_tiny_v2")


def test_video_robustness_and_object_metric_on_an_ingested_world(dataset, tmp_path):
    """pm-k of a constant classifier is known from the frames' labels; the object metric counts
    every box of the sampled frames once and equals its definition on the collected features
    (catches boxes dropped or merged, repeated frames counted twice, neighbours from the wrong set)."""
    import shutil

    from vivi.detect import build_detector, detect_dataset
    from vivi.eval import object_nn_metric, video_robustness
    from vivi.eval.objects import collect_object_features
    from vivi.eval.robustness import frame_labels_from_boxes
    data = tmp_path / "ds"
    shutil.copytree(dataset, data)                 # the shared dataset fixture stays without detections
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    encoder = tiny_encoder()
    # a zero head always predicts class 0: anchors are right exactly where the largest object is
    # class 0, and so are their same-label neighbours: pm-k = anchor accuracy, delta = 0
    constant = vtab.Classifier(encoder, 12)
    result = video_robustness(constant, data, k=2, resolution=32, neighbours="sampled")
    native = video_robustness(constant, data, k=2, resolution=32)       # the world's videos are at hand
    assert native["neighbours"] == "native" and native["delta"] == pytest.approx(0.0)
    assert (native["anchors"], native["anchor_accuracy"]) == (result["anchors"], result["anchor_accuracy"])
    from vivi.data.boxes import load_detections
    from vivi.data.reader import VideoDataset
    detections, videos = load_detections(data, "groundtruth"), VideoDataset(data).videos
    labels = np.array([frame_labels_from_boxes(detections.frame_boxes(v.key, f))
                       for v in videos for f in range(v.num_frames)])
    assert result["frames"] == len(labels) and result["anchors"] == int((labels >= 0).sum())
    assert result["anchor_accuracy"] == pytest.approx(np.mean(labels[labels >= 0] == 0))
    assert result["delta"] == pytest.approx(0.0)
    sample = dict(batches=2, videos_per_batch=2, shots=1, frames=2, size=64)
    metric = object_nn_metric(encoder, data, "groundtruth", **sample)
    # the objects are the boxes of the sampled frames, each (video, frame, box) once: counted here
    # from the same seeded loader and the stored detections (64 px frames: the crop is the frame)
    from vivi.data.clips import ClipConfig, make_loader
    loader = make_loader(data, ClipConfig(shots=1, frames=2, size=64), batch_size=2, seed=0, workers=0,
                         infinite=False, shuffle=True, drop_last=False)
    eligible = loader.dataset.videos
    sampled = {(eligible[int(v)].key, int(f)) for batch, _ in zip(loader, range(2))
               for v, frames in zip(batch["video"], batch["frame_index"]) for f in frames.flatten()}
    assert metric["objects"] == sum(min(5, len(detections.frame_boxes(key, f))) for key, f in sampled) > 2
    found = collect_object_features(encoder, data, "groundtruth", **sample)
    hits, total = _hits_by_loop(found["features"], found["labels"])
    assert (metric["hits"], metric["objects"], metric["rate"]) == (hits, total, hits / total)
    assert metric["batches"] == 2 and metric["videos"] == 4
    # clips of 8 frames repeat the frames of these short shots: each object still counts once
    # (a repeat would be a bit-identical feature row, its own nearest neighbour)
    found = collect_object_features(encoder, data, "groundtruth", batches=50, videos_per_batch=2, shots=1, frames=8,
                                    size=64)
    assert len(np.unique(found["features"], axis=0)) == len(found["features"]) > 2
    assert found["batches"] < 50 and found["sampled_videos"] == len(videos)


def test_objects_command_compares_two_checkpoints(world, dataset, tmp_path, capsys):
    """Both checkpoints are measured on the same objects and Fisher's test is of their two hit counts
    (catches a test of the wrong counts, a sample that differs between checkpoints); with
    --exclude-same-video, one video (no neighbour from another video), or one checkpoint twice, is
    refused with a message."""
    import shutil

    from conftest import TINY_INGEST

    from vivi.detect import build_detector, detect_dataset
    from vivi.ingest import ingest
    data = tmp_path / "ds"
    shutil.copytree(dataset, data)
    detect_dataset(data, build_detector("groundtruth"), progress=False)
    out = tmp_path / "objects.json"
    assert main(["objects", "--checkpoint", "random:resnet_tiny_v2", "--checkpoint", "random:resnet_small_v2",
                 "--data", str(data), "--batches", "2", "--size", "64", "--exclude-same-video", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["checkpoints"]) == {"random:resnet_tiny_v2", "random:resnet_small_v2"}
    tiny, small = result["checkpoints"]["random:resnet_tiny_v2"], result["checkpoints"]["random:resnet_small_v2"]
    assert tiny["objects"] == small["objects"] > 0 and tiny["videos"] == small["videos"]
    assert all(r["rate"] == r["hits"] / r["objects"] and r["exclude_same_video"] for r in (tiny, small))
    assert result["fisher"]["p_value"] == pytest.approx(
        _fisher_by_sum(tiny["hits"], tiny["objects"], small["hits"], small["objects"]), rel=1e-9)
    # one video: no object has a neighbour from another video -- a clear error, not a division by zero
    one = tmp_path / "one"
    ingest([sorted((world / "videos").glob("*.mp4"))[0]], one, TINY_INGEST, progress=False)
    detect_dataset(one, build_detector("groundtruth"), progress=False)
    _bad(tmp_path, capsys, ["objects", "--checkpoint", "random:resnet_tiny_v2", "--data", str(one), "--size", "64",
                            "--exclude-same-video"], "leave out --exclude-same-video")
    _bad(tmp_path, capsys, ["objects", "--checkpoint", "random:resnet_tiny_v2", "--checkpoint", "random:resnet_tiny_v2",
                            "--data", str(data)], "twice")


def test_robustness_command_on_the_world(tmp_path, capsys):
    """With sampled neighbours every sampled frame is classified and every frame with a box is an
    anchor (catches frames or anchors left out); pm-k never exceeds anchor accuracy; the default
    decodes native neighbours where the videos are readable and otherwise falls back, saying so,
    while --neighbours native then stops; a task whose classes are not the detector's, k = 0 and
    detections without a box are refused."""
    from vivi.cli import main
    from vivi.data import VideoDataset, load_detections
    from vivi.detect import build_detector, detect_dataset
    from vivi.ingest import IngestConfig, SamplingConfig, ingest
    from vivi.synth import make_world
    make_world(tmp_path / "w", videos=2, seconds=6.0, workers=1, task_test_size=50, progress=False)
    ingest([tmp_path / "w" / "videos"], tmp_path / "d", IngestConfig(sampling=SamplingConfig(short_side=64)),
           progress=False)
    detect_dataset(tmp_path / "d", build_detector("groundtruth"), progress=False)
    out = tmp_path / "r.json"
    assert main(["robustness", "--checkpoint", "random:resnet_tiny_v2",
                 "--task", str(tmp_path / "w/tasks/object_class"), "--data", str(tmp_path / "d"),
                 "--steps", "2", "--resolution", "32", "--k", "1", "--neighbours", "sampled", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["neighbours"] == "sampled"
    detections, videos = load_detections(tmp_path / "d", "groundtruth"), VideoDataset(tmp_path / "d").videos
    boxed = [len(detections.frame_boxes(v.key, f)) > 0 for v in videos for f in range(v.num_frames)]
    assert (r["frames"], r["anchors"]) == (len(boxed), sum(boxed)) and 0 < sum(boxed)
    assert r["pm_k_accuracy"] <= r["anchor_accuracy"]
    assert r["delta"] == pytest.approx(r["anchor_accuracy"] - r["pm_k_accuracy"])
    assert main(["robustness", "--checkpoint", "random:resnet_tiny_v2", "--task", str(tmp_path / "w/tasks/count"),
                 "--data", str(tmp_path / "d")]) == 2          # count's classes are not the detector's
    # a task folder outside any suite works; detections without a box and a k of 0 are refused up front
    import shutil
    shutil.copytree(tmp_path / "w/tasks/object_class", tmp_path / "solo" / "oc")
    args = ["robustness", "--checkpoint", "random:resnet_tiny_v2", "--task", str(tmp_path / "solo" / "oc"),
            "--data", str(tmp_path / "d"), "--steps", "2", "--resolution", "32", "--k", "1"]
    assert main(args + ["--out", str(out)]) == 0
    assert json.loads(out.read_text())["neighbours"] == "native"
    shutil.move(tmp_path / "w" / "videos", tmp_path / "elsewhere")
    capsys.readouterr()
    assert main(args + ["--out", str(out)]) == 0
    assert "neighbours: +-1 sampled frames (the source video " in capsys.readouterr().out
    assert json.loads(out.read_text())["neighbours"] == "sampled"
    assert main(args + ["--neighbours", "native"]) == 2
    assert "use --neighbours sampled" in capsys.readouterr().err
    shutil.move(tmp_path / "elsewhere", tmp_path / "w" / "videos")
    assert main(args[:-1] + ["0"]) == 2
    shutil.copytree(tmp_path / "d", tmp_path / "d2", ignore=shutil.ignore_patterns("detections"))
    detect_dataset(tmp_path / "d2", build_detector("groundtruth"), progress=False)
    for sidecar in (tmp_path / "d2" / "detections" / "groundtruth").glob("shard-*.json"):   # every box gone
        videos = json.loads(sidecar.read_text())["videos"]
        sidecar.write_text(json.dumps({"videos": {key: [[] for _ in frames] for key, frames in videos.items()}}))
    assert main(args[:6] + [str(tmp_path / "d2")] + args[7:]) == 2


def test_a_folder_of_vtab1k_task_folders_is_a_suite(tmp_path, capsys):
    """The layout the fine-tuning repositories distribute (one folder per task, aliases such as
    cifar100 included) is a suite without a suite file: groups and class counts are VTAB's, the
    missing tasks are named, and the report has the three group means (catches a task put in the
    wrong group, a class count read from the folder instead of VTAB's, a silent partial suite)."""
    for name in ("cifar100", "patch_camelyon", "smallnorb_ele"):
        write_colour_task(tmp_path / "vtab", name=name)
    (tmp_path / "vtab" / "suite.json").unlink()
    tasks = load_suite(tmp_path / "vtab")
    assert [(t.name, t.group, t.num_classes) for t in tasks] == [
        ("cifar", "natural", 100), ("patch_camelyon", "specialized", 2), ("smallnorb_ele", "structured", 9)]
    note = capsys.readouterr().err
    assert "holds 3 of the 19 VTAB-1k tasks; missing: caltech101, dtd," in note and "smallnorb_azi" in note
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", "random:resnet_tiny_v2", "--suite", str(tmp_path / "vtab"), "--out",
                 str(out), "--protocol", "knn", "--resolution", "16", "--no-progress"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert sorted(result["groups"]) == ["natural", "specialized", "structured"]
    with pytest.raises(FileNotFoundError, match="no VTAB-1k task folder"):
        load_suite(tmp_path / "out")


def test_suite_selection_takes_one_setting_for_every_task(tmp_path, monkeypatch):
    """VIVI §4 picks the sweep setting by the val200 accuracy averaged over the tasks, the
    object-centric paper per task: two tasks whose own best settings differ get their own under
    select="task" and the suite's best under select="suite" (catches the rule ignored, or the mean
    taken over settings instead of tasks); "auto" follows the checkpoint's preset."""
    suite = tmp_path / "two.yaml"
    suite.write_text("tasks:\n  - {name: a, group: natural, source: digits}\n"
                     "  - {name: b, group: structured, source: digits}\n")
    val = {"a": {"lr0.1-steps25": 0.9, "lr0.1-steps100": 0.1, "lr0.01-steps25": 0.6, "lr0.01-steps100": 0.1},
           "b": {"lr0.1-steps25": 0.1, "lr0.1-steps100": 0.1, "lr0.01-steps25": 0.8, "lr0.01-steps100": 0.2}}
    fake = FakeTrainer()
    monkeypatch.setattr(vtab, "finetune", lambda encoder, train, n, setting, config, seed:
                        (fake.calls.append(train.task), setting)[1])
    monkeypatch.setattr(vtab, "accuracy", lambda model, split, config:
                        val[split.task][model.key] if split.name == "val200" else 0.5)
    chosen = {}
    for select in ("task", "suite"):
        config = EvalConfig(repetitions=1, steps_scale=0.01, resolution=8, select=select)
        result = evaluate("random:resnet_tiny_v2", suite, tmp_path / select, config, progress=False)
        chosen[select] = {name: t["selected"][0]["lr"] for name, t in result["tasks"].items()}
        assert result["result_settings"]["select"] == select
    assert chosen["task"] == {"a": 0.1, "b": 0.01}            # a: 0.9 at lr 0.1; b: 0.8 at lr 0.01
    assert chosen["suite"] == {"a": 0.01, "b": 0.01}          # mean over tasks: 0.7 at lr0.01-steps25
    from vivi.eval.transfer import resolve_selection
    assert resolve_selection(EvalConfig(), "random:resnet_tiny_v2").select == "task"
    for preset, rule in (("vivi-ex4", "suite"), ("tiny-ex-yt-s", "suite"), ("objcentric", "task")):
        monkeypatch.setattr("vivi.train.checkpoint.read_encoder_file", lambda path, p=preset: {"config": {"name": p}})
        assert resolve_selection(EvalConfig(), tmp_path / "run").select == rule, preset
    assert (tmp_path / "suite" / "results.md").read_text().startswith("# vtab1k (setting chosen for the suite)")
    from vivi.eval import compare
    compare([tmp_path / "task", tmp_path / "suite"], tmp_path / "report")
    assert "different protocols" in (tmp_path / "report" / "report.md").read_text()


def test_numbers_that_are_not_finite_or_out_of_range_are_named_in_one_line(tmp_path, capsys):
    """`--steps-scale inf` overflowed and `nan` failed deep in the sweep with a traceback; every
    number of EvalConfig and of the robustness and objects options is checked first, one line
    naming the setting (and its flag), before the output folder is made."""
    suite = write_colour_task(tmp_path)
    base = ["eval", "--checkpoint", "random:resnet_tiny_v2", "--suite", str(suite), "--out", str(tmp_path / "o"),
            "--no-progress"]
    for value in ("inf", "nan", "-inf", "0"):
        assert main(base + [f"--steps-scale={value}"]) == 2
        assert capsys.readouterr().err == ("vivi eval: error: steps_scale (--steps-scale) must be a finite number "
                                           f"above 0, got {float(value)!r}\n")
    assert main(base + ["--knn-k", "0"]) == 2
    assert "knn_k (--knn-k) must be an integer at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    for field, value, words in (("learning_rates", (0.1, float("nan")), "learning_rates[1] must be a finite number"),
                                ("momentum", 1.0, "momentum must be a finite number at least 0 and below 1"),
                                ("decay_at", (0.3, 1.5), "decay_at[1] must be a finite number at least 0 and at most"),
                                ("probe_cs", (float("inf"),), "probe_cs[0] must be a finite number above 0"),
                                ("steps", (2500, 0), "steps[1] must be an integer at least 1"),
                                ("repetitions", 2.5, "repetitions (--reps) must be an integer"),
                                ("seed", -1, "seed (--seed) must be an integer at least 0, got -1")):
        with pytest.raises(ValueError, match="^" + re.escape(words)):
            EvalConfig(**{field: value})
    robustness = ["robustness", "--checkpoint", "random:resnet_tiny_v2", "--task", str(tmp_path / "colour"),
                  "--data", str(tmp_path)]
    assert main(robustness + ["--lr", "nan"]) == 2
    assert capsys.readouterr().err == "vivi robustness: error: lr (--lr) must be a finite number above 0, got nan\n"
    assert main(["objects", "--checkpoint", "random:resnet_tiny_v2", "--data", str(tmp_path), "--batches", "0"]) == 2
    assert capsys.readouterr().err == "vivi objects: error: batches (--batches) must be an integer at least 1, got 0\n"
