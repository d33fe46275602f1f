"""`vivi demo` end to end at the smallest scale: every stage leaves its outputs, each evaluation
probes the encoder its training run left, a re-run redoes nothing, more seeds extend a folder, other
settings in the same folder are refused.

Whether the methods learn is not tested here: at the 30 steps the suite can afford, every trained
method's mean over the six tasks is at or below random init's (three seeds of ``TINY``: random
19.2 / 15.8 / 15.8 %, trained 12.8-17.5 %; with 60 test images a task one image is 1.7 points), as
at the demo's own 300-step ``--quick`` size. The losses' decrease is tested per preset in
tests/test_train.py; the methods' gains are the demo runs' results (docs/demo.md)."""
from __future__ import annotations

import json
import time

import pytest

from vivi.demo import demo_scale, run_demo, select_methods
from vivi.demo.summary import one_seed_caveat, ordering

TINY = dict(mode="quick", workers=2, videos=6, seconds=8.0, steps=30, test_size=60, progress=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, **TINY)


def test_every_stage_leaves_its_outputs(demo):
    """Catches a stage that is skipped or writes elsewhere: world, shards, boxes, runs, report files."""
    out, result = demo
    assert (out / "world" / "world.json").exists() and (out / "world" / "tasks" / "suite.json").exists()
    assert json.loads((out / "data" / "manifest.json").read_text())["videos"] == 6
    assert (out / "data" / "detections" / "groundtruth" / "detector.json").exists()
    for name in ("report.md", "results.json", "means.png", "contact_sheet.png", "per-task/accuracy.png",
                 "per-task/report.md"):
        assert (out / "report" / name).stat().st_size > 0, name
    for method in ("ex-yt-f", "ex-yt-s", "vivi-ex4", "vivi-ex4-obj"):
        assert (out / "runs" / f"{method}-seed0" / "checkpoints" / "step-0000030.safetensors").exists()
    assert set(result["methods"]) == {"random", "ex-yt-f", "ex-yt-s", "vivi-ex4", "vivi-ex4-obj"}
    metrics = out / "runs" / "vivi-ex4-seed0" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    probed = [r["step"] for r in records if any(key.startswith("monitor/") for key in r)]
    assert probed == [6, 12, 18, 24, 30]                 # the probe on the world's tasks, five times a run
    assert {"synth", "ingest", "train + eval (wall)"} <= set(result["timings"])
    report = (out / "report" / "report.md").read_text()
    assert "VIVI-Ex(4) + objects" in report and "The papers' ordering" in report
    assert "One seed: a difference" in report and "`vivi demo --full` (8000 steps, 5 seeds)" in report
    assert "real photos*" in report and "*real photos: which way up a piece of a real photograph" in report
    rows = {line.split(" | ")[0]: line.split(" | ") for line in report.splitlines() if line.startswith("| ")}
    assert len(rows["| chance"]) == len(rows["| method"])         # a floor for every column of the table


def test_each_evaluation_probes_its_own_runs_final_encoder(demo):
    """Catches evaluation jobs wired to the wrong encoder: the random one, another method's run,
    or a checkpoint other than the run's last."""
    from vivi.api import load_encoder
    from vivi.eval.transfer import encoder_digest
    out, result = demo
    digests = {}
    for name in result["methods"]:
        evaluated = json.loads((out / "evals" / f"{name}-seed0" / "results.json").read_text())
        digests[name] = evaluated["encoder_sha256"]
        photos = json.loads((out / "evals" / f"{name}-seed0" / "photos" / "results.json").read_text())
        assert photos["encoder_sha256"] == digests[name] and list(photos["tasks"]) == ["photo-orientation"]
        assert result["methods"][name]["photos"] == [photos["mean"]]
        if name == "random":
            assert evaluated["checkpoint"] == "random:resnet_tiny_v2"
            continue
        run = out / "runs" / f"{name}-seed0"
        assert evaluated["checkpoint"] == str(run)
        assert digests[name] == encoder_digest(load_encoder(run)), name
    assert len(set(digests.values())) == len(digests)       # five encoders, five different weights


def test_ordering_checks_every_neighbouring_pair(demo):
    """Catches a pair of the papers' ordering left out, and a significance test run on one seed."""
    _, result = demo
    checks = result["ordering"]
    assert [(c["low"], c["high"]) for c in checks] == [("random", "ex-yt-f"), ("ex-yt-f", "ex-yt-s"),
                                                         ("ex-yt-s", "vivi-ex4"), ("vivi-ex4", "vivi-ex4-obj")]
    assert all(c["p_value"] is None for c in checks)          # one seed: no test


def test_rerun_redoes_nothing(demo):
    """Catches a re-run that makes the world again, retrains or re-evaluates finished jobs."""
    out, result = demo
    kept = [out / "world" / "world.json", *out.glob("runs/*/checkpoints/*.safetensors"),
            *out.glob("evals/*-seed0/results.json"), *out.glob("evals/*-seed0/photos/results.json")]
    assert len(kept) == 1 + 4 + 5 + 5
    written = {path: path.stat().st_mtime_ns for path in kept}
    start = time.perf_counter()
    again = run_demo(out, **TINY)
    assert time.perf_counter() - start < 30       # retraining alone would take minutes
    # an evaluation run again resumes from its finished tasks in a second: only the files tell
    assert {path: path.stat().st_mtime_ns for path in kept} == written
    assert again["methods"] == result["methods"]


def test_other_settings_in_the_same_folder_are_refused(demo):
    """Catches results of two scales mixed in one folder, and a refused run that overwrites demo.json."""
    out, _ = demo
    settings = (out / "demo.json").read_text()
    with pytest.raises(ValueError, match="other settings.*steps"):
        run_demo(out, **{**TINY, "steps": 31})
    assert (out / "demo.json").read_text() == settings


def test_ordering_significance_over_seeds():
    """Catches a Welch test that calls separated seeds not significant, or overlapping ones significant."""
    methods = {"random": {"mean": [0.10, 0.11, 0.12]}, "ex-yt-f": {"mean": [0.20, 0.21, 0.22]},
               "ex-yt-s": {"mean": [0.19, 0.22, 0.20]}}
    low_high = {(c["low"], c["high"]): c for c in ordering(methods)}
    assert low_high[("random", "ex-yt-f")]["significant"] and low_high[("random", "ex-yt-f")]["holds"]
    assert not low_high[("ex-yt-f", "ex-yt-s")]["significant"]
    assert one_seed_caveat(ordering(methods)) is None         # tested: nothing to warn about


def test_method_selection_and_scales():
    """Catches unknown names accepted, the random baseline missing, and sizes out of order."""
    assert [m.name for m in select_methods(["vivi-ex4"])] == ["random", "vivi-ex4"]
    assert [m.name for m in select_methods(None, rotation=True)][-2:] == ["rot-yt-f", "vivi-rot4"]
    with pytest.raises(ValueError, match="unknown demo method"):
        select_methods(["vivi-ex5"])
    with pytest.raises(ValueError, match="unknown demo mode"):
        demo_scale("huge")
    assert demo_scale("full").seeds >= 3 and demo_scale("quick").steps < demo_scale("default").steps


def test_at_least_pair_reports_whether_a_shortfall_is_significant():
    """Catches the ">=" pair (objects over VIVI) treated as ">" or its shortfall left untested."""
    methods = {"vivi-ex4": {"mean": [0.27, 0.28, 0.29]}, "vivi-ex4-obj": {"mean": [0.265, 0.27, 0.285]}}
    (check,) = ordering(methods)
    assert check["relation"] == ">=" and not check["holds"] and not check["significantly_worse"]
    methods["vivi-ex4-obj"]["mean"] = [0.20, 0.21, 0.20]
    (check,) = ordering(methods)
    assert check["significantly_worse"] and check["p_worse"] < 0.05


def test_world_settings_and_training_size_reach_the_world_and_the_runs(tmp_path):
    """Catches --world and --train-size lost on the way, bad world settings written before they are
    refused, a seed's finished jobs redone when seeds are added, and a kept world of other settings used."""
    with pytest.raises(ValueError, match="trackin: not a world setting; valid: .*tracking"):
        run_demo(tmp_path / "bad", **TINY, world={"trackin": 1.0})
    with pytest.raises(ValueError, match="tracking_share"):
        run_demo(tmp_path / "bad", **TINY, world={"tracking_share": 2.0})
    with pytest.raises(ValueError, match="its own option"):
        run_demo(tmp_path / "bad", **TINY, world={"videos": 3})
    assert not (tmp_path / "bad").exists()         # refused before anything is written

    out = tmp_path / "demo"
    small = {**TINY, "videos": 4, "steps": 2, "test_size": 20}
    result = run_demo(out, **small, methods=["ex-yt-s"], world={"tracking": 1.0, "background_warp": 1.0},
                      train_size=24)
    config = json.loads((out / "world" / "world.json").read_text())["config"]
    assert config["tracking"] == 1.0 and config["background_warp"] == 1.0
    assert "size: 24" in (out / "runs" / "ex-yt-s-seed0" / "config.yaml").read_text()
    assert result["settings"]["world"] == {"tracking": 1.0, "background_warp": 1.0}
    assert result["settings"]["train_size"] == 24
    report = (out / "report" / "report.md").read_text()
    assert "`tracking=1.0`" in report and "24 px" in report
    with pytest.raises(ValueError, match="other settings.*train_size"):
        run_demo(out, **small, methods=["ex-yt-s"], world={"tracking": 1.0, "background_warp": 1.0})

    # more seeds extend the folder: seed 1's jobs run, seed 0's are kept as they are
    first_run = (out / "runs" / "ex-yt-s-seed0" / "metrics.jsonl").stat().st_mtime_ns
    more = run_demo(out, **small, seeds=2, methods=["ex-yt-s"], world={"tracking": 1.0, "background_warp": 1.0},
                    train_size=24)
    assert len(more["methods"]["ex-yt-s"]["mean"]) == 2 and len(more["methods"]["random"]["mean"]) == 2
    assert (out / "runs" / "ex-yt-s-seed1" / "config.yaml").exists()
    assert (out / "runs" / "ex-yt-s-seed0" / "metrics.jsonl").stat().st_mtime_ns == first_run

    # a setting given at its default value names the same world (cast is on by default)
    same = run_demo(out, **small, seeds=2, methods=["ex-yt-s"],
                    world={"tracking": 1.0, "background_warp": 1.0, "cast": True}, train_size=24)
    assert same["settings"]["world"] == {"tracking": 1.0, "background_warp": 1.0}

    # a finished world of other settings (an older vivi's defaults, say) stops the demo before
    # anything is written; a world whose generation stopped before the end is made again
    path = out / "world" / "world.json"
    stored = json.loads(path.read_text())
    path.write_text(json.dumps({**stored, "config": {**stored["config"], "cast": not stored["config"]["cast"]}}))
    settings = (out / "demo.json").read_text()
    with pytest.raises(ValueError, match=r"world made with other settings \(cast: .* there"):
        run_demo(out, **small, seeds=2, methods=["ex-yt-s"], world={"tracking": 1.0, "background_warp": 1.0},
                 train_size=24)
    assert (out / "demo.json").read_text() == settings
    path.write_text(json.dumps(stored))        # the world as made, but its generation did not finish
    (out / "world" / "tasks" / "suite.json").unlink()
    (out / "world" / "videos" / "video_00003.mp4").unlink()
    again = run_demo(out, **small, seeds=2, methods=["ex-yt-s"], world={"tracking": 1.0, "background_warp": 1.0},
                     train_size=24)
    assert json.loads(path.read_text())["config"] == stored["config"]
    assert (out / "world" / "tasks" / "suite.json").exists() and again["methods"] == more["methods"]
    assert (out / "world" / "videos" / "video_00003.mp4").exists()
