"""Checkpoints carry a checksum of their tensors: damage is reported, a run folder falls back to its
newest intact checkpoint, and a full disk is one line naming the file."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from vivi.cli import main
from vivi.train import train
from vivi.train.checkpoint import checkpoint_path, newest_intact_checkpoint, read_checkpoint

FAST = ["data.videos=4", "data.workers=0", "run.log_every=1", "optim.warmup_steps=2", "run.ckpt_every=1",
        "run.keep_checkpoints=3"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train("tiny-vivi-ex4", dataset, out, overrides=FAST + ["optim.steps=3"], progress=False)
    return out


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte near the end of the file: inside the tensor data, not the header."""
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_reported_and_the_run_falls_back(run, tmp_path, capsys):
    """Catches a checkpoint whose tensors changed after it was written being trained or exported
    from as if intact; the run folder gives its newest intact checkpoint and says which it passed."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    newest = checkpoint_path(copy, 3)
    intact = read_checkpoint(newest)["model"]
    _flip_a_tensor_byte(newest)
    with pytest.raises(ValueError, match="step-0000003.safetensors is damaged: its tensors do not match the checksum"):
        read_checkpoint(newest)
    checkpoint, passed = newest_intact_checkpoint(copy)
    assert checkpoint["step"] == 2 and len(passed) == 1 and "step-0000003" in passed[0]
    capsys.readouterr()
    assert main(["export", str(copy), "--out", str(tmp_path / "enc.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "note: " in err and "step-0000003.safetensors is damaged" in err and "using an older checkpoint" in err
    exported = read_checkpoint(checkpoint_path(copy, 2))["model"]
    assert not all(torch.equal(intact[k], exported[k]) for k in intact)        # step 2's weights, not step 3's


def test_a_checkpoint_cut_short_is_named(run, tmp_path):
    """Catches a truncated file (a copy that stopped) surfacing as a safetensors traceback."""
    path = tmp_path / "short.safetensors"
    path.write_bytes(checkpoint_path(run, 3).read_bytes()[:5000])
    with pytest.raises(ValueError, match="short.safetensors is not a safetensors file written by vivi, or is damaged"):
        read_checkpoint(path)


def test_a_full_disk_while_exporting_is_one_line(run, tmp_path, capsys, monkeypatch):
    """safetensors and torch.save wrote the file themselves, so a full disk surfaced as their own
    error types and a traceback; now the bytes are written by Python and the CLI names the file
    and the fix (catches a temporary file left behind too)."""
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    for suffix in (".safetensors", ".pt"):
        assert main(["export", str(run), "--out", str(tmp_path / f"encoder{suffix}")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vivi export: error: no space left on the device") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_resume_passes_over_a_damaged_newest_checkpoint(run, dataset, tmp_path, capsys):
    """--resume continues from the newest checkpoint that verifies, naming the damaged one (catches a
    resume that fails on a damaged file although an intact one is there, or trains from damage)."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _flip_a_tensor_byte(checkpoint_path(copy, 3))
    capsys.readouterr()
    result = train(None, dataset, copy, resume=True, overrides=FAST + ["optim.steps=4"], progress=False)
    assert result["step"] == 4
    err = capsys.readouterr().err
    assert "step-0000003.safetensors is damaged" in err and "resuming from step-0000002.safetensors" in err
