"""The run's callbacks from `task`, `checkpoint` and `callbacks`, and the in-epoch step checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from ..callbacks.adapter import AdapterCallback, CheckpointOnException, RNGStateCallback
from ..callbacks.fault_tolerance import GracefulStop, RestoreLoaderPosition, RunRecord, StepCheckpoint
from ..callbacks.metrics import MetricsHistory
from ..callbacks.throughput import Throughput
from .plain import plain


def step_checkpoints(checkpoint_cfg: Mapping[str, Any], checkpoint_dir: Path) -> list[StepCheckpoint]:
    """`last.ckpt` inside epochs too: every N optimizer steps and/or every N minutes (each null = off).

    Lightning takes one trigger per ModelCheckpoint, so each trigger is its own callback; both keep
    only `last.ckpt` (save_top_k=0), the file `ckpt_path=last` resumes.
    """
    steps = checkpoint_cfg.get("every_n_train_steps")
    minutes = checkpoint_cfg.get("every_n_minutes")
    triggers = []
    if steps:
        triggers.append({"every_n_train_steps": int(steps)})
    if minutes:
        triggers.append({"train_time_interval": timedelta(minutes=float(minutes))})
    return [
        StepCheckpoint(dirpath=checkpoint_dir, save_top_k=0, save_last=True, enable_version_counter=False, **trigger)
        for trigger in triggers
    ]


def build_callbacks(
    config: Mapping[str, Any],
    output_dir: Path,
    adapter_callback: AdapterCallback,
    history: MetricsHistory,
    run_config: dict[str, Any],
) -> list[L.Callback]:
    """The adapter callback first (it adapts the model at setup), the run's own callbacks, then the
    optional monitors and `callbacks.extra`: within each hook Lightning calls them in this order."""
    config = plain(config)
    task, options = config["task"], config["callbacks"]
    checkpoint_dir = output_dir / "checkpoints"
    callbacks: list[L.Callback] = [
        adapter_callback,
        history,
        RNGStateCallback(),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best-{epoch}",
            monitor=task["monitor"],
            mode=task["mode"],
            save_last=True,
            save_top_k=config["checkpoint"]["save_top_k"],
            # one last.ckpt shared with the step checkpoints, overwritten in place (never last-v1.ckpt)
            enable_version_counter=False,
        ),
        *step_checkpoints(config["checkpoint"], checkpoint_dir),
        CheckpointOnException(checkpoint_dir),
        GracefulStop(checkpoint_dir),
        RestoreLoaderPosition(),
        RunRecord(run_config),
    ]
    if options["throughput"]:
        callbacks.append(Throughput(window_size=int(options["throughput"])))
    if options["lr_monitor"] and config.get("logger"):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [instantiate(node) for node in (options.get("extra") or {}).values()]
    return callbacks
