"""What a run shows of its learning: the probe (run.monitor_every), whose records come at the right
steps, which does not change what the run trains, and whose suite, if unreadable, stops the run
before its first step; the unweighted loss terms beside their chance levels."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vivi.train.checkpoint import read_checkpoint
from vivi.train.log import chance_report
from vivi.train.loop import train

FAST = ["data.videos=4", "data.workers=0", "optim.warmup_steps=2", "run.precision=fp32"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """scikit-learn's digits as a one-task suite: labelled images without a synthetic world's tasks."""
    path = tmp_path_factory.mktemp("suite") / "suite.json"
    path.write_text(json.dumps({"tasks": [{"name": "digits", "source": "digits"}]}))
    return path


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_probes_come_at_their_steps_and_do_not_change_the_run(dataset, suite, tmp_path):
    """monitor_every=2 with log_every=3 over 6 steps: records at 2, 3, 4, 6, probes at 2, 4, 6 (kNN
    and linear, per task and as the mean); parameters, buffers, momentum and losses equal bit for
    bit to the run without the monitor (a probe in training mode would move the batch-norm
    statistics; one that drew from torch's generator would change the next draws)."""
    over = FAST + ["optim.steps=6", "run.log_every=3"]
    monitor = ["run.monitor_every=2", f"run.monitor_suite={suite}", "run.monitor_probe=knn+linear",
               "run.monitor_images=60"]
    train("tiny-vivi-ex4", dataset, tmp_path / "plain", overrides=over, progress=False)
    train("tiny-vivi-ex4", dataset, tmp_path / "monitored", overrides=over + monitor, progress=False)
    logged = records(tmp_path / "monitored")
    assert [r["step"] for r in logged] == [2, 3, 4, 6]
    probed = [r["step"] for r in logged if "monitor/knn" in r]
    assert probed == [2, 4, 6]
    for r in logged:
        if "monitor/knn" in r:
            assert r["monitor/knn"] == r["monitor/digits/knn"] and r["monitor/linear"] == r["monitor/digits/linear"]
            # 60 queries of 10 classes: a random encoder's features already separate digits far
            # above chance (0.1), so a probe fed wrong labels or unrelated features falls below 0.3
            assert 0.3 < r["monitor/knn"] <= 1 and 0.3 < r["monitor/linear"] <= 1
            assert r["monitor/seconds"] > 0
    a, b = read_checkpoint(tmp_path / "plain"), read_checkpoint(tmp_path / "monitored")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["optim"]:
        assert torch.equal(a["optim"][key], b["optim"][key]), key
    plain = {r["step"]: r["loss"] for r in records(tmp_path / "plain")}
    assert all(plain[r["step"]] == r["loss"] for r in logged if r["step"] in plain)


def test_resume_with_the_monitor_is_exact(dataset, suite, tmp_path):
    """4 steps == 2 steps + resume + 2 steps with a probe after every second step."""
    # the run's own precision (bf16 where the CPU has it): the probe then encodes in bf16 autocast too
    over = FAST + ["run.precision=auto", "run.log_every=1", "run.monitor_every=2", f"run.monitor_suite={suite}",
                   "run.monitor_images=30"]
    for run, resume, steps in (("straight", False, 4), ("split", False, 2), ("split", True, 4)):
        train("tiny-ex-yt-s", dataset, tmp_path / run, resume=resume, progress=False,
              overrides=[f"optim.steps={steps}"] + ([] if resume else over))
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    assert [key for key in a["model"] if not torch.equal(a["model"][key], b["model"][key])] == []
    straight, split = records(tmp_path / "straight"), records(tmp_path / "split")
    assert [r["loss"] for r in straight] == [r["loss"] for r in split]
    assert [r.get("monitor/knn") for r in straight] == [r.get("monitor/knn") for r in split]


@pytest.mark.parametrize("make_suite, words", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp, "holds no suite.json"),            # a folder without a suite in it
])
def test_a_suite_that_cannot_be_read_stops_the_run_before_its_first_step(dataset, tmp_path, make_suite, words):
    """One line naming the problem, raised before any step: no run folder is left behind."""
    where = make_suite(tmp_path / "suites")
    (tmp_path / "suites").mkdir()
    with pytest.raises(FileNotFoundError, match=words) as error:
        train("tiny-ex-yt-s", dataset, tmp_path / "run", progress=False,
              overrides=FAST + ["optim.steps=2", "run.monitor_every=1", f"run.monitor_suite={where}"])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_monitor_every_needs_a_suite(dataset, tmp_path):
    with pytest.raises(ValueError, match="run.monitor_every > 0 needs run.monitor_suite"):
        train("tiny-ex-yt-s", dataset, tmp_path / "run", overrides=FAST + ["run.monitor_every=5"], progress=False)


def test_raw_terms_are_logged_beside_their_chance_levels(dataset, tmp_path):
    """Each record holds every term unweighted (raw/NAME = loss/NAME / weight) and its chance level:
    the margin for the exemplar triplet, ln(candidates) for InfoNCE (mean over predicted pairs)."""
    train("tiny-vivi-ex4", dataset, tmp_path / "run", overrides=FAST + ["optim.steps=1", "run.log_every=1"],
          progress=False)
    record = records(tmp_path / "run")[0]
    assert record["raw/exemplar"] == record["loss/exemplar"] and record["exemplar/chance"] == 0.5
    assert record["raw/infonce"] * 0.5 == pytest.approx(record["loss/infonce"])          # video_weight 0.5
    assert record["infonce/chance"] == pytest.approx(math.log(record["infonce/num_candidates"]))


def test_chance_report_says_which_terms_left_chance():
    """Below 0.8 x chance is "left": a triplet term at 0.45 of margin 0.5 is still at chance, one at
    0.3 has left it; a term without a chance level is named as such."""
    recent = [{"raw/exemplar": 0.3, "exemplar/chance": 0.5, "raw/infonce": 3.3, "infonce/chance": 3.37,
               "raw/object": 0.2}, {"raw/exemplar": 0.3, "exemplar/chance": 0.5, "raw/infonce": 3.4,
                                    "infonce/chance": 3.37, "raw/object": 0.4}]
    line = chance_report(recent)
    assert line == ("loss terms over the last 2 records: exemplar 0.3 against chance 0.5: has left chance; "
                    "infonce 3.35 against chance 3.37: still at chance; object 0.3 (no chance level)")
