"""run.precision (auto / bf16 / fp32) and run.compile on the CPU: what ``auto`` resolves to, bf16
training that learns as fp32 does, exact resume in bf16, a forced bf16 without native support, a
compile failure that falls back to eager steps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vivi.train.loop as loop
from vivi.train.checkpoint import read_checkpoint
from vivi.train.config import load_config
from vivi.train.loop import StepContext, resolve_precision, train
from vivi.train.model import CompiledOrEager

FAST = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2"]
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def native_bf16(monkeypatch):
    """The CPU probe set to True or False, so each test sees the machine it needs (a CPU without
    bf16 instructions still runs bf16 autocast, only in software)."""
    def set_native(value: bool):
        monkeypatch.setattr(loop, "cpu_computes_bf16", lambda: value)
    return set_native


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_where_the_cpu_computes_it(native_bf16, native, expected):
    """auto follows the CPU probe; fp32 stays fp32 on any CPU; the step context autocasts exactly
    when the precision resolves to bf16 (a wrong reading of the probe or of the request fails)."""
    native_bf16(native)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == expected
    config = load_config("tiny-ex-yt-s")
    assert config.run.precision == "auto"
    assert StepContext.create(config, CPU).autocast == (expected == "bf16")


def test_cpu_probe_reads_the_capability_and_cpu_flags(monkeypatch):
    """A CPU below AVX512 has no bf16 instructions whatever its flags say; an AVX512 CPU has them
    when torch's probe or /proc/cpuinfo says avx512_bf16 (AMD Zen 4, Intel Cooper Lake) or amx_bf16."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not loop.cpu_computes_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for value in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda value=value: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert loop.cpu_computes_bf16() == value


def test_forced_bf16_without_native_support_warns_once_and_runs_fp32(native_bf16, dataset, tmp_path, capsys):
    """One warning line, and the records say fp32: the run never claims a precision it did not use."""
    native_bf16(False)
    train("tiny-ex-yt-s", dataset, tmp_path / "run", overrides=FAST + ["optim.steps=2", "run.precision=bf16"],
          progress=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "run.precision=bf16" in warnings[0] and "fp32" in warnings[0]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["precision"] for r in records] == ["fp32", "fp32"]


def test_bf16_training_follows_fp32(native_bf16, dataset, tmp_path):
    """200 steps of Ex-YT-S from the same start in bf16 and in fp32 reach the same loss.

    The two trajectories separate after a few steps (bf16 keeps 8 significant bits), so what is
    compared is the mean loss of the last 100 steps. Measured on this data (6 videos, all in every
    batch): it falls by 0.08-0.09 from the mean of the first 20 steps in both runs, and the two
    precisions end 0.0005 apart, closer than two fp32 runs of different seeds (0.005). The bound,
    0.025, is five times that seed spread and under a third of what training gains: a bf16 path
    that computed wrongly (a loss stalled near the margin 0.5, or diverging) misses it.
    """
    native_bf16(True)
    over = ["data.videos=6", "data.workers=0", "optim.steps=200", "run.log_every=1", "run.ckpt_every=1000"]
    curves = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        train("tiny-ex-yt-s", dataset, run, overrides=over + [f"run.precision={precision}"], progress=False)
        curves[precision] = np.array(losses(run))
        assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["precision"] == precision
    for curve in curves.values():
        assert curve[-100:].mean() < curve[:20].mean() - 0.05          # both learned
    assert curves["bf16"][0] != curves["fp32"][0]                      # bf16 did change the computation
    assert abs(curves["bf16"][-100:].mean() - curves["fp32"][-100:].mean()) < 0.025


def test_resume_is_exact_in_bf16(native_bf16, dataset, tmp_path):
    """6 steps == 3 steps + resume + 3 steps, bit for bit, under bf16 autocast (one thread: the same
    bf16 kernels in the same order on both paths)."""
    native_bf16(True)
    over = FAST + ["run.precision=bf16", "run.keep_checkpoints=5"]
    train("tiny-vivi-ex4", dataset, tmp_path / "straight", overrides=over + ["optim.steps=6"], progress=False)
    train("tiny-vivi-ex4", dataset, tmp_path / "split", overrides=over + ["optim.steps=3"], progress=False)
    train("tiny-vivi-ex4", dataset, tmp_path / "split", resume=True, overrides=["optim.steps=6"], progress=False)
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "split")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["optim"]:
        assert torch.equal(a["optim"][key], b["optim"][key]), key
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")


def _broken_compile(real_compile):
    """torch.compile with a backend that fails as a missing C++ compiler would."""
    def backend(graph, inputs):
        raise RuntimeError("no C++ compiler")
    return lambda function, **kwargs: real_compile(function, backend=backend)


def test_compile_failure_falls_back_to_eager_with_one_note(monkeypatch, capsys):
    """The first call fails to compile: it is answered eagerly, one note says so, and later calls
    do not try again; an error of the computation itself is not taken for a compile failure."""
    monkeypatch.setattr(torch, "compile", _broken_compile(torch.compile))
    double = CompiledOrEager(lambda x: x * 2, "the doubler")
    assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
    assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and "torch.compile of the doubler failed" in notes[0] and "no C++ compiler" in notes[0]
    monkeypatch.undo()
    mismatch = CompiledOrEager(lambda x: x + torch.ones(3), "the adder")
    with pytest.raises(RuntimeError, match="size of tensor"):
        mismatch(torch.ones(2))


def test_compiled_run_that_cannot_compile_trains_as_the_eager_run(monkeypatch, dataset, tmp_path, capsys):
    """run.compile=true where compiling fails: the run goes on eagerly and ends with the eager
    run's parameters (the failed compile ran nothing: no batch-norm update counted twice)."""
    over = FAST + ["optim.steps=2", "run.precision=fp32"]
    train("tiny-ex-yt-s", dataset, tmp_path / "eager", overrides=over, progress=False)
    monkeypatch.setattr(torch, "compile", _broken_compile(torch.compile))
    train("tiny-ex-yt-s", dataset, tmp_path / "compiled", overrides=over + ["run.compile=true"], progress=False)
    assert sum("torch.compile of the encoder failed" in line for line in capsys.readouterr().err.splitlines()) == 1
    a, b = read_checkpoint(tmp_path / "eager"), read_checkpoint(tmp_path / "compiled")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
