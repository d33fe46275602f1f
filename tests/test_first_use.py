"""What a user meets first: `vivi eval`'s defaults follow the checkpoint (the probes at the encoder's
training size, the VTAB-1k sweep at the protocol's 224 px, the GPU where there is one), every
result shows its task's chance, and asking for CUDA without it says how to get it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_eval import write_colour_task

from vivi.eval import EvalConfig, evaluate
from vivi.eval import transfer as transfer_module

pytestmark = pytest.mark.usefixtures("one_thread")
RANDOM = "random:resnet_tiny_v2"      # no checkpoint file to read the paper's selection rule from
LOAD = transfer_module.load_eval_encoder


def _encoder_trained_at(size: int):
    encoder = LOAD(RANDOM)
    encoder.input_size = size            # what vivi.load_encoder reads from a run's augment.size
    return encoder


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_a_probe_runs_at_the_encoders_training_size_unless_told(tmp_path, monkeypatch, protocol):
    """A 32 px model was probed at 224 px by default: slower, and it scored lower. Catches a default
    resolution that ignores the checkpoint (the features would be computed at 224 px)."""
    suite = write_colour_task(tmp_path)
    monkeypatch.setattr(transfer_module, "load_eval_encoder", lambda *args, **kwargs: _encoder_trained_at(32))
    seen, real = [], transfer_module.frozen_features

    def spy(encoder, split, resolution, *args):
        seen.append(resolution)
        return real(encoder, split, resolution, *args)
    monkeypatch.setattr(transfer_module, "frozen_features", spy)
    result = evaluate(RANDOM, suite, tmp_path / "default", EvalConfig(protocol=protocol), progress=False)
    assert set(seen) == {32} and result["config"]["resolution"] == 32
    assert json.loads((tmp_path / "default" / "eval_config.json").read_text())["result_settings"]["resolution"] == 32
    seen.clear()
    evaluate(RANDOM, suite, tmp_path / "asked", EvalConfig(protocol=protocol, resolution=40), progress=False)
    assert set(seen) == {40}


def test_vtab1k_keeps_the_protocols_224_px_and_the_device_defaults_to_auto(tmp_path, monkeypatch):
    suite = write_colour_task(tmp_path)
    monkeypatch.setattr(transfer_module, "load_eval_encoder", lambda *args, **kwargs: _encoder_trained_at(32))
    used = []

    def capture(encoder, tasks, config, out, progress):
        used.append(config)
        raise InterruptedError        # the sweep itself is not under test: stop before it
    monkeypatch.setattr(transfer_module, "_run_units", capture)
    with pytest.raises(InterruptedError):
        evaluate(RANDOM, suite, tmp_path / "o", EvalConfig(), progress=False)
    assert used[0].resolution == 224
    assert EvalConfig().device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cuda_on_a_machine_without_it_says_how_to_get_it():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="install a CUDA build of PyTorch"):
        EvalConfig(device="cuda")


def test_results_and_reports_show_each_tasks_chance(tmp_path):
    """A number a user can read needs its floor: the test accuracy of always guessing the most frequent
    class, in results.json, results.md and `vivi report` (catches a chance of 1/classes on an
    unbalanced test set, or a column that shifts the runs' values)."""
    from vivi.eval import compare
    from vivi.eval.suite import load_split, load_suite
    suite = write_colour_task(tmp_path)
    labels = load_split(load_suite(suite)[0], "test").labels
    expected = max(np.mean(labels == 0), np.mean(labels == 1))
    for name in ("a", "b"):
        result = evaluate(RANDOM, suite, tmp_path / name, EvalConfig(protocol="knn", resolution=8), progress=False)
    assert result["tasks"]["colour"]["chance"] == pytest.approx(expected)
    assert f"| colour | natural | {100 * expected:.1f} |" in (tmp_path / "b" / "results.md").read_text()
    compare([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
               if line.startswith("| colour"))
    assert row.split(" | ")[2] == f"{100 * expected:.1f}" and len(row.split(" | ")) == 5


def test_training_on_cuda_without_it_says_how_to_get_it():
    from vivi.train.config import load_config
    from vivi.train.loop import training_device
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="install a CUDA build of PyTorch"):
        training_device(load_config("tiny-vivi-ex4", ["run.device=cuda"]), torch.device("cpu"))
