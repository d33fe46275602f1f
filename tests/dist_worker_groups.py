"""Worker for tests/test_loss_groups.py, run as ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each rank takes its half (in global video order) of a fixed global batch, computes a grouped loss
through a DDP-wrapped head -- the exemplar triplet loss mined per group of consecutive shots, or
the InfoNCE loss with ``scope="group"`` -- runs backward and saves its loss, the mean loss over
ranks, its DDP-averaged parameter gradients and its input gradients to ``--out/rank{r}.pt``. The
test compares them with :func:`single_process_reference` on the whole global batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vivi import distributed
from vivi.losses import ExemplarLoss, VideoInfoNCELoss
from vivi.models.heads import LSTMPredictor, MLPCritic, ShotProjection

#: name -> (num_videos_global, num_shots, num_frames, feature_dim); every rank holds 4 videos,
#: i.e. two exemplar groups of 4 shots, or two InfoNCE groups of 2 videos.
CASES = {
    "exemplar_group_shots_4": (8, 2, 3, 6),
    "infonce_k2_group_videos_2": (8, 2, 2, 6),
    "infonce_k4_group_videos_2_sum": (8, 4, 2, 6),
}


def build(case: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Head, loss and global batch of frame features (N, K, F, C), the same on every rank."""
    n, k, f, c = CASES[case]
    torch.manual_seed(0)
    if case.startswith("exemplar"):
        head: nn.Module = nn.Linear(c, 5)
        loss_fn: nn.Module = ExemplarLoss(group_shots=4)
    else:
        predictor = MLPCritic(8, hidden=6, out_dim=4) if k == 2 else LSTMPredictor(8, hidden=6, max_offset=3)
        head = nn.Sequential(ShotProjection(c, 8), predictor)
        loss_fn = VideoInfoNCELoss(scope="group", group_videos=2, pair_reduction="sum" if "sum" in case else "mean")
    return head.double(), loss_fn, torch.randn(n, k, f, c, dtype=torch.float64)


def grouped_loss(head: nn.Module, loss_fn: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    out = head(frames)
    if isinstance(loss_fn, ExemplarLoss):
        return loss_fn(out)[0]
    return loss_fn(out.queries, out.keys, out.target_shot)[0]


def single_process_reference(case: str) -> dict[str, torch.Tensor]:
    """Loss and gradients on the whole global batch in one process."""
    head, loss_fn, frames = build(case)
    frames.requires_grad_(True)
    loss = grouped_loss(head, loss_fn, frames)
    loss.backward()
    grads = {f"param/{name}": p.grad.detach().clone() for name, p in head.named_parameters()}
    return {"loss": loss.detach(), "input_grad": frames.grad.detach().clone(), **grads}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    distributed.init_distributed_from_env(backend="gloo")
    rank, world = distributed.get_rank(), distributed.get_world_size()

    saved: dict[str, torch.Tensor] = {}
    for case in CASES:
        head, loss_fn, frames = build(case)
        per_rank = frames.shape[0] // world
        shard = frames[rank * per_rank : (rank + 1) * per_rank].clone().requires_grad_(True)
        ddp = DistributedDataParallel(head)
        loss = grouped_loss(ddp, loss_fn, shard)
        loss.backward()  # DDP averages the parameter gradients over the ranks here
        saved[f"{case}/loss"] = loss.detach()
        saved[f"{case}/loss_mean"] = distributed.all_reduce_mean(loss)
        saved[f"{case}/input_grad"] = shard.grad.detach().clone()
        saved.update({f"{case}/param/{name}": p.grad.detach().clone() for name, p in head.named_parameters()})

    out.mkdir(parents=True, exist_ok=True)
    torch.save(saved, out / f"rank{rank}.pt")
    distributed.cleanup_distributed()


if __name__ == "__main__":
    main()
