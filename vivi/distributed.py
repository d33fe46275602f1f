"""Process-group helpers that also work as a single process.

Every helper here answers as a one-process run (rank 0, world size 1, gathers that return
their input) when no process group has been initialised, so the whole library and its tests
run in one CPU process; the same code runs under ``torchrun`` (lightly/utils/dist.py is the
model for this).

Two gathers, named so they cannot be confused:

* :func:`all_gather_with_grad` -- autograd-aware. Used where in-batch negatives come from
  every device (the video-level InfoNCE loss: VIVI §3.3, footnote 2, and app. B; see
  docs/reference.md, "Loss scope"): gradients flow back to the rank that produced each row.
* :func:`all_gather_no_grad` -- plain, detached. Used for evaluation and logging.

Gradient convention (the one DDP uses). Each rank computes its loss as the *mean over its
local anchors*; DDP then *averages* parameter gradients over ranks. The backward of
:func:`all_gather_with_grad` *sums* the incoming gradients over ranks before taking this
rank's slice, because the objective DDP differentiates is ``sum_r L_r`` (every rank's loss
depends on every rank's rows) and DDP's average divides it by the world size. With equal
local batch sizes the result is exactly the gradient of the single-process mean loss on the
global batch (tests/test_distributed.py checks this with two gloo processes). Input
gradients seen on a rank (before any DDP averaging) are therefore ``world_size`` times the
single-process ones.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistributedInfo",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "all_reduce_mean",
    "all_reduce_sum_with_grad",
    "cleanup_distributed",
    "collective_failure",
    "get_rank",
    "get_world_size",
    "init_distributed_from_env",
    "is_distributed",
    "is_main_process",
    "max_over_ranks",
]


def is_distributed() -> bool:
    """True when a default process group exists (and has more than nothing to talk to)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process in the default group; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the one that logs and saves."""
    return get_rank() == 0


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each rank the summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.local_size = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # Every rank's loss depends on this rank's rows: sum those contributions (DDP then
        # averages parameter gradients, which turns the sum into the global mean).
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_size
        return grad[start : start + ctx.local_size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, keeping the autograd graph.

    Args:
        tensor: (B_local, ...) rows of this rank. Every rank must pass the same shape.

    Returns:
        (world_size * B_local, ...): rank r's rows at ``[r * B_local, (r + 1) * B_local)``.
        Without a process group (or with world size 1) ``tensor`` itself is returned.

    Backward: each rank receives the sum over ranks of the gradients w.r.t. its rows (see
    the module docstring for why this matches DDP's gradient averaging).
    """
    if get_world_size() == 1:
        return tensor
    _check_same_shape(tensor)
    return _AllGatherWithGrad.apply(tensor)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, detached (no gradient).

    Same layout as :func:`all_gather_with_grad`; returns ``tensor.detach()`` as one process.
    """
    if get_world_size() == 1:
        return tensor.detach()
    _check_same_shape(tensor)
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over ranks (detached), e.g. to log a loss; identity as one process."""
    if get_world_size() == 1:
        return tensor.detach()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


class _AllReduceSumWithGrad(torch.autograd.Function):
    """all_reduce(SUM) whose backward is the same all_reduce of the gradients (every rank's output
    depends on every rank's input)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over ranks, keeping the autograd graph (the gradient convention of
    :func:`all_gather_with_grad`); ``tensor`` itself as one process."""
    if get_world_size() == 1:
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)


def max_over_ranks(value: int, device: torch.device | None = None) -> int:
    """The largest ``value`` over ranks (one all-reduce of one integer), so that every rank takes
    the same decision; ``value`` itself as one process. ``device``: where the backend reduces
    (a CUDA device for NCCL)."""
    if get_world_size() == 1:
        return value
    flag = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


# What gloo and NCCL say when a peer stopped answering, or is gone.
_TIMED_OUT = ("timed out", "timeout")
_PEER_LOST = ("connection closed by peer", "connection reset by peer", "broken pipe", "communicator was aborted")


def collective_failure(error: BaseException, rank: int, timeout_s: float, where: str) -> OSError | None:
    """A one-line error for a collective operation that failed because another rank stopped
    responding (:class:`TimeoutError`) or died (:class:`ConnectionError`), or None for any other
    error. ``where`` says what this rank was doing (e.g. "at step 12")."""
    text = str(error).lower()
    if any(words in text for words in _PEER_LOST):
        return ConnectionError(
            f"rank {rank} lost another rank {where}: that process died (torchrun's failure summary names it); "
            "with torchrun --max-restarts N the group restarts from the newest checkpoint")
    if any(words in text for words in _TIMED_OUT):
        return TimeoutError(
            f"rank {rank} waited {timeout_s:g} s {where} for another rank that stopped responding (stopped, "
            "swapped out, or stuck reading data); if steps can take that long, raise run.timeout_s")
    return None


def _check_same_shape(tensor: torch.Tensor) -> None:
    # all_gather needs equal shapes; a mismatch otherwise hangs or fails deep in the backend.
    shape = torch.tensor(list(tensor.shape), dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(get_world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        raise ValueError(
            f"all_gather needs the same shape on every rank; got {[s.tolist() for s in shapes]}"
        )


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits: global rank, rank on its node, number of processes, device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0


def init_distributed_from_env(
    backend: str | None = None, timeout_s: float = 1800.0
) -> DistributedInfo:
    """Initialise the default process group from the variables ``torchrun`` sets.

    Reads ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` (and ``MASTER_ADDR``/``MASTER_PORT`` through
    the ``env://`` init method). The global ``RANK`` decides the data shard and that rank 0
    writes; ``LOCAL_RANK`` (the process's place on its node) decides the GPU, so the same
    command runs on one node or several (``torchrun --nnodes``). Without them (a plain ``python``
    run) no group is created and a single-process :class:`DistributedInfo` is returned, so the
    same script runs both ways (nanoGPT's convention).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default nccl when CUDA is available, else gloo.
        timeout_s: how long a collective operation waits for the other ranks before it fails
            (a rank that stopped responding blocks the others this long).

    Returns:
        DistributedInfo; on GPU the current CUDA device is set to ``LOCAL_RANK``.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        return DistributedInfo(rank=0, local_rank=0, world_size=1, device=device)

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    use_cuda = torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s): start at "
                             "most one process per GPU on each node (torchrun --nproc-per-node)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not is_distributed():
        timeout = datetime.timedelta(seconds=timeout_s)
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if restarts > 0:
            # torchrun's store outlives a restart, and with it the workers' addresses of the failed
            # attempt: a restarted worker could read a dead peer's address and fail to connect. Keys
            # of this attempt's own prefix are those of the live peers.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  is_master=rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
                                  timeout=timeout)
            dist.init_process_group(backend=backend, store=dist.PrefixStore(f"vivi-restart-{restarts}", store),
                                    rank=rank, world_size=world_size, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=timeout)
    return DistributedInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Destroy the default process group if there is one (safe to call as one process)."""
    if is_distributed():
        dist.destroy_process_group()
