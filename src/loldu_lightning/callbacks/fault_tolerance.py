"""Stopping cleanly: signals end a run at the next step boundary with a resumable checkpoint.

Lightning's own SIGTERM handling waits for the end of the epoch (hours for an instruction-tuning
epoch) and its SLURM handler saves from inside the signal handler, which can land in the middle of
an optimizer step. Here a signal only sets a flag; the run stops after the training step in flight,
saves `checkpoints/interrupted.ckpt` (a consistent point: resuming it replays nothing and skips
nothing), asks SLURM to requeue the job when the signal was SLURM's warning, and raises
`RunInterrupted`, which `train()` records as status `interrupted`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from ..checkpoints import CONFIG_KEY
from ..interrupts import RunInterrupted

log = logging.getLogger(__name__)

# SLURM's warning before a time limit or preemption: SIGUSR1 for `sbatch --signal=USR1@<s>` (Lightning's
# convention), SIGUSR2 for Hydra's submitit launcher (submitit's default).
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def in_slurm_job() -> bool:
    return bool(os.environ.get("SLURM_JOB_ID"))


def requeue_slurm_job() -> bool:
    """`scontrol requeue <this job>`; True when scontrol accepted it."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{array_task}" if array_job and array_task else os.environ["SLURM_JOB_ID"]
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        log.error("SLURM job %s: scontrol is not on PATH, so the job cannot be requeued", job_id)
        return False
    result = subprocess.run([scontrol, "requeue", job_id], check=False)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed with exit code %d", job_id, result.returncode)
    return result.returncode == 0


def resumable_here(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the end of training batch `batch_idx` is a point a checkpoint resumes exactly.

    Not inside a gradient-accumulation window: the partial gradients are not saved. Not on the
    epoch's last batch: Lightning (2.6) resumes a checkpoint saved there badly (it takes the epoch
    for finished without validating it and skips the next one); the epoch's end, after validation,
    is saved anyway.
    """
    if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
        return False
    return (batch_idx + 1) % max(int(trainer.accumulate_grad_batches), 1) == 0


class StepCheckpoint(ModelCheckpoint):
    """`last.ckpt` every N steps or minutes, at the next point that resumes exactly (`resumable_here`)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if resumable_here(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class GracefulStop(L.Callback):
    """SIGTERM, SIGINT (Ctrl-C) and, inside a SLURM job, SIGUSR1/SIGUSR2 stop the run at the next step
    boundary with `interrupted.ckpt`. A second Ctrl-C stops at once (Lightning's KeyboardInterrupt path).
    """

    def __init__(self, checkpoint_dir: str | Path):
        self.path = Path(checkpoint_dir) / "interrupted.ckpt"
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _signals(self) -> tuple[int, ...]:
        return (signal.SIGTERM, signal.SIGINT) + (REQUEUE_SIGNALS if in_slurm_job() else ())

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        if self.received is None:
            log.warning(
                "%s received: stopping after the current training step with a resumable checkpoint%s",
                signal.Signals(signum).name,
                " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else "",
            )
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning registers its own SIGTERM handler just before training starts; this one replaces it.
        for signum in self._signals():
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if resumable_here(trainer, batch_idx):
            self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_asked(trainer)

    def _stop_if_asked(self, trainer: L.Trainer) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            # decided together, or the ranks that did not get the signal would wait forever in the next all-reduce
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        trainer.save_checkpoint(self.path)
        requeued = False
        if signum in REQUEUE_SIGNALS and in_slurm_job() and trainer.is_global_zero:
            requeued = requeue_slurm_job()
        self._restore_handlers()
        raise RunInterrupted(signum, self.path, requeued)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()


class RestoreLoaderPosition(L.Callback):
    """Makes Lightning apply the training loader's saved position when a run resumes.

    Lightning loads the loader's state only if the loader is first built after the checkpoint is
    restored. Our schedules ask for `trainer.estimated_stepping_batches` in `configure_optimizers`,
    which builds (and starts iterating) the loader before the restore, so the saved position would be
    ignored and the resumed epoch would start again from its first batch. This applies the pending
    state and restarts the iterator before the first batch is fetched. It reaches into the fit
    loop's private attributes: the resume tests (tests/test_fault_tolerance.py) fail if they change.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if fit_loop._combined_loader_states_to_load and fit_loop._data_fetcher is not None:
            fit_loop._load_combined_loader_states()
            iter(fit_loop._data_fetcher)


class RunRecord(L.Callback):
    """Keeps the run's defining configuration in every checkpoint, for `checkpoints.check_resume`."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = dict(config)

    def state_dict(self) -> dict[str, Any]:
        return {CONFIG_KEY: json.dumps(self.config, sort_keys=True, default=str)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # the checkpoint's copy is read before fit (check_resume); the run keeps its own
