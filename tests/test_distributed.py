"""vivi.distributed: one-process behaviour, and the InfoNCE loss under torchrun (2 x gloo).

The two-process test checks the gradient convention of vivi/distributed.py: each rank's
loss is the mean over its local predictions (negatives gathered with gradients from both
ranks), DDP averages parameter gradients, and the result equals the single-process mean
loss on the global batch. Input gradients on a rank are world_size x the single-process
ones (they are not averaged by DDP).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vivi import distributed

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _load_worker():
    spec = importlib.util.spec_from_file_location("dist_worker_losses", TESTS / "dist_worker_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_single_process_defaults():
    """Without a process group: rank 0 of 1, the main process."""
    assert not distributed.is_distributed()
    assert distributed.get_rank() == 0
    assert distributed.get_world_size() == 1
    assert distributed.is_main_process()


def test_gathers_are_identity_in_one_process():
    """In one process the gradient gather returns its input itself (graph intact, gradient 1:1);
    the no-grad gather and the mean are detached copies of the input."""
    x = torch.randn(3, 4, requires_grad=True)
    y = distributed.all_gather_with_grad(x)
    assert y is x  # no copy, graph intact
    (y * 2).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 2.0))

    z = distributed.all_gather_no_grad(x)
    assert torch.equal(z, x) and not z.requires_grad
    m = distributed.all_reduce_mean(x)
    assert torch.equal(m, x) and not m.requires_grad


def test_init_without_torchrun_env_is_single_process(monkeypatch):
    """Without torchrun's variables no group is created, so the same script runs as a plain
    python process; cleanup is safe without a group."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_distributed_from_env()
    assert (info.rank, info.local_rank, info.world_size) == (0, 0, 1)
    assert info.is_main_process
    assert not distributed.is_distributed()
    distributed.cleanup_distributed()  # safe without a group


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_infonce_two_processes_match_single_process(tmp_path):
    """Two gloo processes reproduce the one-process loss and DDP parameter gradients exactly
    (float64, default tolerances): a gather without gradient, a backward that does not sum over
    ranks, a wrong video offset or local-only negatives each changes the loss or a gradient."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone", "--nproc_per_node=2",
        str(TESTS / "dist_worker_losses.py"), "--out", str(tmp_path),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout}\n{proc.stderr}"

    worker = _load_worker()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    world = 2
    for case, (n_global, k, _, _) in worker.CASES.items():
        ref = worker.single_process_reference(case)
        # Loss: the mean of the two local means is the global mean (equal shards).
        local = torch.stack([r[f"{case}/loss"] for r in ranks])
        torch.testing.assert_close(local.mean(), ref["loss"])
        for r in ranks:
            torch.testing.assert_close(r[f"{case}/loss_mean"], ref["loss"])
            # Negatives came from both ranks: all shots of every other video.
            assert r[f"{case}/num_candidates"].item() == 1 + (n_global - 1) * k
        # Parameter gradients after DDP averaging: identical to the single process.
        param_keys = [key for key in ref if key.startswith("param/")]
        assert param_keys
        for key in param_keys:
            for r in ranks:
                torch.testing.assert_close(r[f"{case}/{key}"], ref[key])
        # Input gradients: rank r's rows, world_size x the single-process gradient.
        grads = torch.cat([r[f"{case}/input_grad"] for r in ranks], dim=0)
        torch.testing.assert_close(grads / world, ref["input_grad"])
    assert all(bool(r["shape_mismatch_refused"]) for r in ranks)
