"""What a run writes beside its checkpoints: ``config.yaml``, ``metrics.jsonl``, TensorBoard, the progress bar.

Only rank 0 writes; on the other ranks :class:`RunLog` keeps the step timing (so every rank
returns the same record) and writes nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from vivi.train.config import TrainConfig, dump_config

__all__ = ["METRICS_FILE", "RunLog", "records_until"]

METRICS_FILE = "metrics.jsonl"


def records_until(metrics: Path, step: int) -> list[str]:
    """The lines of ``metrics.jsonl`` logged at or before ``step``; a last line cut short (the
    process was killed while writing it) is dropped."""
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{metrics} line {number} is not JSON: repair or delete that line, then resume") from None
        if record.get("step", 0) <= step:
            kept.append(line)
    return kept


class RunLog:
    """The run folder's log files and the progress bar of one run.

    Opening writes the resolved ``config.yaml`` and prepares ``metrics.jsonl``: a resumed run
    keeps the records up to its checkpoint's step (a crash between checkpoints logged steps that
    are trained again), a fresh run in a folder whose run stopped before its first checkpoint
    starts the log over. So the log holds each step once.

    Args:
        out: the run folder (made on rank 0).
        config: the resolved config (``config.yaml``; name, steps, log interval, frames per step).
        start_step: the step the run starts from (0, or the checkpoint's).
        resumed: whether the run continues from a checkpoint.
        main_process: rank 0; the other ranks write nothing.
        progress: show the tqdm bar (rank 0).
    """

    def __init__(self, out: Path, config: TrainConfig, *, start_step: int, resumed: bool, main_process: bool,
                 progress: bool) -> None:
        d = config.data
        self.log_every = config.run.log_every
        self.frames_per_step = d.videos * d.shots * d.frames
        self._metrics = self._tensorboard = None
        if main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(dump_config(config))
            metrics = out / METRICS_FILE
            if resumed and metrics.exists():
                metrics.write_text("".join(line + "\n" for line in records_until(metrics, start_step)))
            elif metrics.exists():
                metrics.unlink()
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=start_step)
            except ImportError:
                pass        # tensorboard is optional: metrics.jsonl has everything
            self._metrics = open(metrics, "a")
        self._bar = tqdm(total=config.optim.steps, initial=start_step, disable=not (progress and main_process),
                         dynamic_ncols=True, desc=config.name)
        self._tick = time.perf_counter()

    def write(self, step: int, record: dict) -> None:
        """Log ``record`` (the measurements of ``step``, a logging step) as it is, with ``step``
        and the frames per second since the previous record added to it."""
        now = time.perf_counter()
        record["frames_per_s"] = self.frames_per_step * self.log_every / max(now - self._tick, 1e-9)
        self._tick = now
        record["step"] = step
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, step)
        self._bar.set_postfix(loss=f"{record['loss']:.4g}", fps=f"{record['frames_per_s']:.0f}",
                              **{k.split("/")[1]: f"{v:.3g}" for k, v in record.items() if k.startswith("loss/")})

    def advance(self) -> None:
        """One more step done (the progress bar)."""
        self._bar.update(1)

    def note(self, message: str) -> None:
        """A line printed without breaking the progress bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
