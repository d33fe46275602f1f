"""Grouped losses (VIVI app. B: triplet loss per core, 2-shot InfoNCE per core) do not depend on
the number of ranks: two gloo processes under torchrun give the one-process loss and gradients.

The per-group definitions themselves are checked against plain loops in tests/test_losses.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dist_worker_groups as worker  # tests/ is on sys.path: pytest puts a test file's folder there
import pytest
import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_grouped_losses_on_two_ranks_match_one_process(tmp_path):
    """Exemplar ``group_shots`` and InfoNCE ``scope="group"`` (mean and sum over pairs) on two
    ranks of two groups each reproduce the one-process loss and DDP parameter gradients
    (float64, default tolerances); the input gradients on a rank are world_size x the
    one-process ones, as DDP's gradient average expects (vivi/distributed.py). Groups cut in
    another order than the global batch's, or negatives taken from the other rank, change the
    loss."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "dist_worker_groups.py"), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout}\n{proc.stderr}"

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case in worker.CASES:
        ref = worker.single_process_reference(case)
        torch.testing.assert_close(torch.stack([r[f"{case}/loss"] for r in ranks]).mean(), ref["loss"])
        params = [key for key in ref if key.startswith("param/")]
        assert params
        for r in ranks:
            torch.testing.assert_close(r[f"{case}/loss_mean"], ref["loss"])
            for key in params:
                torch.testing.assert_close(r[f"{case}/{key}"], ref[key])
        grads = torch.cat([r[f"{case}/input_grad"] for r in ranks], dim=0)
        torch.testing.assert_close(grads / len(ranks), ref["input_grad"])
