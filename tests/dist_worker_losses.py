"""Worker for tests/test_distributed.py, run as ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each rank takes its half of a fixed global batch of frame embeddings, computes the
video-level InfoNCE loss through a DDP-wrapped shot projection + predictor (negatives gathered
from all ranks with gradients), runs backward and saves its loss, its DDP-averaged parameter
gradients and its input gradients to ``--out/rank{r}.pt``. The test compares them with the
single-process loss on the global batch (:func:`single_process_reference`).

Also checks the gathers: :func:`all_gather_no_grad` must reproduce the global batch, and
:func:`all_gather_with_grad` must refuse rows of different shapes on the two ranks (instead of
hanging or failing inside the backend).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vivi import distributed
from vivi.losses.infonce import VideoInfoNCELoss
from vivi.models.heads import LSTMPredictor, MLPCritic, ShotProjection

#: name -> (num_videos_global, num_shots, num_frames, feature_dim)
CASES = {"mlp_k2": (8, 2, 3, 16), "lstm_k4": (6, 4, 2, 16)}
SHOT_DIM = 12


class VideoModel(nn.Module):
    """Shot projection + predictor, the parameters DDP synchronises."""

    def __init__(self, case: str, feature_dim: int) -> None:
        super().__init__()
        self.projection = ShotProjection(feature_dim, SHOT_DIM)
        if case == "mlp_k2":
            self.predictor = MLPCritic(SHOT_DIM, hidden=10, out_dim=8)
        else:
            self.predictor = LSTMPredictor(SHOT_DIM, hidden=10, num_layers=2, max_offset=3)

    def forward(self, frames: torch.Tensor):
        return self.predictor(self.projection(frames))


def make_case(case: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model and global batch of frame embeddings (N, K, F, C), same on every rank."""
    n, k, f, c = CASES[case]
    torch.manual_seed(seed)
    model = VideoModel(case, c).double()
    frames = torch.randn(n, k, f, c, dtype=torch.float64)
    return model, frames


def single_process_reference(case: str) -> dict[str, torch.Tensor]:
    """Loss and gradients of the mean loss on the whole global batch, one process."""
    model, frames = make_case(case)
    frames = frames.clone().requires_grad_(True)
    pred = model(frames)
    loss, _ = VideoInfoNCELoss()(pred.queries, pred.keys, pred.target_shot)
    loss.backward()
    result = {"loss": loss.detach(), "input_grad": frames.grad.detach().clone()}
    for name, p in model.named_parameters():
        result[f"param/{name}"] = p.grad.detach().clone()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    info = distributed.init_distributed_from_env(backend="gloo")
    rank, world = distributed.get_rank(), distributed.get_world_size()
    assert (rank, world) == (info.rank, info.world_size) and world == 2
    assert distributed.is_main_process() == (rank == 0)

    results: dict[str, torch.Tensor] = {}
    for case in CASES:
        model, frames = make_case(case)
        n = frames.shape[0] // world
        local = frames[rank * n : (rank + 1) * n].clone().requires_grad_(True)

        gathered = distributed.all_gather_no_grad(local)
        assert not gathered.requires_grad
        assert torch.equal(gathered, frames), "all_gather_no_grad must rebuild the global batch"

        ddp = DistributedDataParallel(model)
        pred = ddp(local)
        loss, diag = VideoInfoNCELoss()(pred.queries, pred.keys, pred.target_shot)
        loss.backward()  # DDP averages parameter gradients over ranks here

        results[f"{case}/loss"] = loss.detach()
        results[f"{case}/loss_mean"] = distributed.all_reduce_mean(loss)
        results[f"{case}/num_candidates"] = diag["num_candidates"]
        results[f"{case}/input_grad"] = local.grad.detach().clone()
        for name, p in model.named_parameters():
            results[f"{case}/param/{name}"] = p.grad.detach().clone()

    try:
        distributed.all_gather_with_grad(torch.zeros(rank + 1, 2))
        results["shape_mismatch_refused"] = torch.tensor(False)
    except ValueError as error:
        results["shape_mismatch_refused"] = torch.tensor("same shape on every rank" in str(error))

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(results, args.out / f"rank{rank}.pt")
    distributed.cleanup_distributed()


if __name__ == "__main__":
    main()
