"""Which run a ``train`` call starts or continues, and with which config.

A run folder holds one run: without ``resume`` a folder with checkpoints is refused (two runs
never mix in one folder); with ``resume`` the run continues from its newest intact checkpoint (a
damaged newer one is named and passed over) with the config saved in it, and the command line
may change only :data:`RESUME_OVERRIDES`. ``resume`` on a folder without a checkpoint yet starts
the run (with a note), so that one command serves a job's first start and its requeued ones.
Workers that torchrun restarted after a failure (``TORCHELASTIC_RESTART_COUNT`` > 0) resume by
themselves: the command they were started with has no ``--resume``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from vivi.train.checkpoint import latest_checkpoint, newest_intact_checkpoint
from vivi.train.config import TrainConfig, config_from_dict, config_to_dict, load_config

__all__ = ["RESUME_OVERRIDES", "open_run", "resumed_config"]

# What ``--resume`` may change: how the run is carried out, and how long it goes on. Anything else
# (the model, the data, the losses, the schedule) would no longer be the checkpoint's run.
RESUME_OVERRIDES = ("optim.steps", "run.log_every", "run.ckpt_every", "run.keep_checkpoints", "run.device",
                    "run.precision", "run.channels_last", "run.compile", "run.timeout_s", "run.monitor_every",
                    "run.monitor_suite", "run.monitor_probe", "run.monitor_images", "data.workers", "data.cache",
                    "data.max_damaged_frames")


def _note(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":          # under torchrun, once for the job
        print(f"note: {message}", file=sys.stderr)


def open_run(config: TrainConfig | str | Path | None, out: Path, resume: bool,
             overrides: list[str] | dict | None, restarts: int = 0) -> tuple[TrainConfig, dict | None]:
    """The run's config and the checkpoint it continues from (None for a new run); raises before
    anything is written when ``out`` and ``resume`` disagree. ``restarts``: how often torchrun has
    restarted this worker group (its ``TORCHELASTIC_RESTART_COUNT``); a restarted group resumes."""
    found = latest_checkpoint(out)
    if restarts > 0 and not resume and found is not None:
        _note(f"torchrun restarted the workers (restart {restarts}): resuming from the newest checkpoint in {out}")
        resume = True
    if not resume:
        config = load_config(config, overrides)
        if found is not None:
            raise ValueError(f"{out} already holds a run (checkpoints up to {found.stem}): continue it with "
                             "--resume, or pass a new --out (or delete the folder) to start another")
        return config, None
    if found is None:
        if config is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out}/checkpoints, and no --config to start the "
                                    "run with: pass --config PRESET_OR_FILE")
        config = load_config(config, overrides)
        _note(f"--resume: no checkpoint in {out}/checkpoints yet: starting the run from step 0")
        return config, None
    checkpoint, passed = newest_intact_checkpoint(out)
    if checkpoint is None:
        raise ValueError(f"--resume: no checkpoint in {out}/checkpoints can be read ({'; '.join(passed)}): "
                         "start the run again with a new --out")
    for line in passed:
        _note(f"{line}; resuming from {checkpoint['path'].name}")
    return resumed_config(checkpoint, config, overrides, out), checkpoint


def resumed_config(checkpoint: dict, asked: TrainConfig | str | Path | None, overrides: list[str] | dict | None,
                   out: Path) -> TrainConfig:
    """The run's own config with the overrides that ``--resume`` allows (:data:`RESUME_OVERRIDES`).

    ``asked`` is the config the command named: None, or the run's own preset or file (another
    one is refused, since the checkpoint was not trained with it).
    """
    saved = config_from_dict(checkpoint["config"])
    if isinstance(asked, (str, Path)) and load_config(asked, validate=False).name != saved.name:
        raise ValueError(f"{out} is a {saved.name!r} run, not {str(asked)!r}: --resume continues the run's own "
                         f"config (pass --config {saved.name}, or a new --out for another run)")
    config = load_config(saved, overrides)
    before, after = config_to_dict(saved), config_to_dict(config)
    changed = sorted(f"{section}.{key}" for section, values in after.items() if isinstance(values, dict)
                     for key, value in values.items() if before[section][key] != value)
    refused = [key for key in changed if key not in RESUME_OVERRIDES]
    if refused:
        raise ValueError(f"--resume continues the run's own config; {', '.join(refused)} cannot change (the "
                         "checkpoint was trained without it): start another run with a new --out. On resume "
                         f"these may change: {', '.join(RESUME_OVERRIDES)}")
    if config.optim.steps < checkpoint["step"]:
        raise ValueError(f"{out} is at step {checkpoint['step']} already; pass optim.steps larger than that "
                         f"to train further (got {config.optim.steps})")
    return config
