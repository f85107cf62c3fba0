"""The run's callbacks from `task`, `checkpoint` and `callbacks`, and the in-epoch step checkpoints."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from ..callbacks.adapter import AdapterCallback, CheckpointOnException, RNGStateCallback
from ..callbacks.fault_tolerance import GracefulStop, RestoreLoaderPosition, RunRecord, StepCheckpoint
from ..callbacks.metrics import MetricsHistory
from ..callbacks.throughput import Throughput
from ..options import CheckpointOptions

if TYPE_CHECKING:
    from .run import Run


def step_checkpoints(checkpoint: CheckpointOptions, checkpoint_dir: Path) -> list[StepCheckpoint]:
    """`last.ckpt` inside epochs too: every N optimizer steps and/or every N minutes (each null or 0 = off).

    Lightning takes one trigger per ModelCheckpoint, so each trigger is its own callback; both keep
    only `last.ckpt` (save_top_k=0), the file `ckpt_path=last` resumes.
    """
    triggers = []
    if checkpoint.every_n_train_steps:
        triggers.append({"every_n_train_steps": int(checkpoint.every_n_train_steps)})
    if checkpoint.every_n_minutes:
        triggers.append({"train_time_interval": timedelta(minutes=float(checkpoint.every_n_minutes))})
    return [
        StepCheckpoint(dirpath=checkpoint_dir, save_top_k=0, save_last=True, enable_version_counter=False, **trigger)
        for trigger in triggers
    ]


def build_callbacks(run: Run, adapter_callback: AdapterCallback, history: MetricsHistory) -> list[L.Callback]:
    """The adapter callback first (it adapts the model at setup), the run's own callbacks, then the
    optional monitors and `callbacks.extra`: within each hook Lightning calls them in this order."""
    options = run.options
    checkpoint_dir = run.output_dir / "checkpoints"
    callbacks: list[L.Callback] = [
        adapter_callback,
        history,
        RNGStateCallback(),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best-{epoch}",
            monitor=options.task.monitor,
            mode=options.task.mode,
            save_last=True,
            save_top_k=options.checkpoint.save_top_k,
            # one last.ckpt shared with the step checkpoints, overwritten in place (never last-v1.ckpt)
            enable_version_counter=False,
        ),
        *step_checkpoints(options.checkpoint, checkpoint_dir),
        CheckpointOnException(checkpoint_dir),
        GracefulStop(checkpoint_dir),
        RestoreLoaderPosition(),
        RunRecord(run.defining),
    ]
    if options.callbacks.throughput:
        callbacks.append(Throughput(window_size=options.callbacks.throughput))
    # the untyped `logger` node: the learning rate is logged only where a tracker takes it
    if options.callbacks.lr_monitor and run.config.get("logger"):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    # each extra callback is a `_target_` node, passed to Hydra's instantiate as written
    callbacks += [instantiate(node) for node in (options.callbacks.extra or {}).values()]
    return callbacks
