"""What a run writes beside its checkpoints: ``config.yaml``, ``metrics.jsonl``, TensorBoard, the progress bar.

Only rank 0 writes; on the other ranks :class:`RunLog` keeps the step timing (so every rank
returns the same record) and writes nothing.
"""
from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from tqdm import tqdm

from vivi.train.config import TrainConfig, dump_config

__all__ = ["LEFT_CHANCE", "METRICS_FILE", "RunLog", "chance_report", "records_until"]

METRICS_FILE = "metrics.jsonl"
# A term has left chance once it is below this fraction of its chance level. Not 1: semi-hard
# mining picks negatives farther than the positive, so even a random encoder's triplet terms
# start some 5-12 % below the margin.
LEFT_CHANCE = 0.8


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


def chance_report(records: list[dict]) -> str:
    """One line: each unweighted term (mean over ``records``) against its chance level, and whether
    it has left it (below :data:`LEFT_CHANCE` of it)."""
    parts = []
    for key in records[-1]:
        if not key.startswith("raw/"):
            continue
        name = key[len("raw/"):]
        value = sum(r[key] for r in records) / len(records)
        chance = records[-1].get(f"{name}/chance")
        if chance is None:
            parts.append(f"{name} {value:.3g} (no chance level)")
        else:
            verdict = "has left chance" if value < LEFT_CHANCE * chance else "still at chance"
            parts.append(f"{name} {value:.3g} against chance {chance:.3g}: {verdict}")
    return f"loss terms over the last {len(records)} records: " + "; ".join(parts)


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
        precision: what the steps compute in ("bf16" or "fp32", ``run.precision`` resolved for the
            device), added to every record.
    """

    def __init__(self, out: Path, config: TrainConfig, *, start_step: int, resumed: bool, main_process: bool,
                 progress: bool, precision: str = "fp32") -> None:
        d = config.data
        self.precision = precision
        self.frames_per_step = d.videos * d.shots * d.frames
        self._last_step = start_step
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
        self._recent: collections.deque[dict] = collections.deque(maxlen=5)    # for the end's chance report

    def write(self, step: int, record: dict) -> None:
        """Log ``record`` (the measurements of ``step``, a logging step) as it is, with ``step``, the
        precision and the training frames per second since the previous record added to it (the
        time of a probe, ``monitor/seconds``, is not training time)."""
        now = time.perf_counter()
        seconds = now - self._tick - record.get("monitor/seconds", 0.0)
        record["frames_per_s"] = self.frames_per_step * (step - self._last_step) / max(seconds, 1e-9)
        self._tick, self._last_step = now, step
        record["step"] = step
        record["precision"] = self.precision
        if self._metrics is not None:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)
        self._recent.append(record)
        # each term unweighted, against its chance level where it has one: "exemplar=0.31/0.5"
        terms = {key.split("/")[1]: value for key, value in record.items() if key.startswith("raw/")}
        self._bar.set_postfix(loss=f"{record['loss']:.4g}", fps=f"{record['frames_per_s']:.0f}",
                              **{name: f"{value:.3g}" + (f"/{record[name + '/chance']:.3g}"
                                                         if name + "/chance" in record else "")
                                 for name, value in terms.items()})

    def advance(self) -> None:
        """One more step done (the progress bar)."""
        self._bar.update(1)

    def report_chance(self) -> None:
        """At the end of a run with the progress bar: whether each term has left its chance level
        (:func:`chance_report` of the last records)."""
        if not self._bar.disable and self._recent:
            self.note(chance_report(list(self._recent)))

    def note(self, message: str) -> None:
        """A line printed without breaking the progress bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
