"""`train(cfg) -> dict`: the whole experiment as one plain function (CLI, tests and notebooks call it)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .builders import build_task
from .builders.callbacks import build_callbacks
from .builders.loggers import build_loggers, build_tracking
from .builders.run import Run, build_run
from .builders.schema import run_options
from .builders.trainer import trainer_options
from .callbacks.adapter import AdapterCallback
from .callbacks.metrics import MetricsHistory
from .checkpoints import (
    AtomicCheckpointIO,
    check_resume,
    config_fingerprint,
    resolve_ckpt_path,
    resumable_checkpoints,
)
from .interrupts import RunInterrupted
from .options import RunOptions

log = logging.getLogger(__name__)


# What Lightning's DDP launcher writes into this process's environment when it starts the other ranks.
_LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _end_distributed(opened_before: bool, environment: dict[str, str | None]) -> None:
    """Undo what a multi-process `fit` left in this process, so the next `train()` here starts clean.

    Lightning leaves the process group up and the launcher's variables set. The next job of a
    Hydra multirun with `trainer=ddp` would then reuse the group (talking to the finished job's
    ranks: "Connection closed by peer") and, seeing LOCAL_RANK set, would take its ranks for
    externally started ones and wait for them forever. A group the caller opened (torchrun) stays.
    """
    if not opened_before and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in environment.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _write_metrics(path: Path, payload: dict[str, Any]) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    path.write_text(json.dumps(clean(payload), indent=2) + "\n")


def evaluate_test_split(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, best_epoch: Any
) -> dict[str, Any]:
    """`task.test_split`, evaluated once with the checkpoint selected on validation (`ckpt_path="best"`).

    For protocols that select on held-out data (vision's `data.holdout_fraction`): the test split
    never influences training or model selection, and metrics.json's `test` holds its metrics.
    """
    best_path = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if not best_path:
        raise RuntimeError(
            "task.test_split is set but no best checkpoint was saved; keep checkpoint.save_top_k >= 1 "
            "and let validation run (trainer.limit_val_batches > 0)"
        )
    (results,) = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)
    return {
        **{key: float(value) for key, value in results.items()},
        "epoch": best_epoch,
        "checkpoint": Path(best_path).name,
    }


def completed_run(output_dir: Path, run_config: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics.json of a run in `output_dir` that completed with this same defining configuration."""
    path = output_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if previous.get("status") == "completed" and previous.get("run_fingerprint") == config_fingerprint(run_config):
        return previous
    return None


def _start_payload(run: Run) -> dict[str, Any]:
    """metrics.json before the run starts; its outcome fills in status, metrics and time."""
    task = run.task
    return {
        "status": "running",
        "error": None,
        "task": f"{task.family}/{task.name}",
        "adapter": run.adapter.name,
        "seed": run.seed,
        "monitor": task.monitor,
        "mode": task.mode,
        "objective": None,
        "best": {},
        "final": {},
        "params": {},
        "time_s": None,
        "output_dir": str(run.output_dir),
        "run_fingerprint": config_fingerprint(run.defining),
    }


def _checkpoint_to_resume(run: Run, payload: dict[str, Any]) -> Path | None:
    """`ckpt_path` (or, under `resume.auto`, this run folder's newest checkpoint), checked against the
    run's defining configuration."""
    checkpoint_dir = run.output_dir / "checkpoints"
    request = run.ckpt_path
    if run.auto_resume and request is None and resumable_checkpoints(checkpoint_dir):
        request = "last"  # resolve_ckpt_path picks the newest and checks it is whole
    ckpt_path = resolve_ckpt_path(request, checkpoint_dir)
    if ckpt_path is not None:
        for key, (old, new) in check_resume(ckpt_path, run.defining, run.allow_changes).items():
            log.warning("Resuming with %s changed on purpose: %r -> %r", key, old, new)
        payload["resumed_from"] = str(ckpt_path)
    return ckpt_path


def _fit(
    run: Run,
    ckpt_path: Path | None,
    adapter_callback: AdapterCallback,
    history: MetricsHistory,
    tracking: L.Callback,
    payload: dict[str, Any],
) -> None:
    module, datamodule = build_task(run.config, run.options)
    callbacks = [*build_callbacks(run, adapter_callback, history), tracking]
    loggers = build_loggers(run)
    trainer = L.Trainer(
        **trainer_options(run.options.trainer),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run.output_dir),
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted; the last checkpoint is in checkpoints/")
    if getattr(run.task, "test_split", None):  # vision's task.test_split; other families have none
        # loading "best" also restores the callbacks' state as of that checkpoint: keep the full history
        kept = copy.deepcopy(history.state_dict())
        payload["test"] = evaluate_test_split(trainer, module, datamodule, history.best.get("epoch"))
        history.load_state_dict(kept)


def train(cfg: Mapping[str, Any], options: RunOptions | None = None) -> dict[str, Any]:
    """Fit one composed configuration; writes checkpoints/, adapter/, logs and metrics.json under its output_dir.

    Returns the metrics.json payload; `objective` is the best value of the monitored metric (what a
    sweeper optimises). `options` are the config's typed options (`validate_config(cfg)`), read here
    when not given.
    """
    # validates the whole config (what validate_config does), once: the builders read these options
    run = build_run(cfg, options if options is not None else run_options(cfg))
    output_dir, monitor = run.output_dir, run.task.monitor
    finished = completed_run(output_dir, run.defining) if run.auto_resume else None
    if finished is not None:
        log.info("%s already completed with this configuration; skipped (resume.auto)", output_dir)
        return finished
    payload = _start_payload(run)
    # before anything is written: a refused resume (changed configuration, damaged checkpoint) leaves the
    # run's metrics.json as it was, since its checkpoint is still resumable with its own configuration
    ckpt_path = _checkpoint_to_resume(run, payload)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(run.seed, workers=True)
    history = MetricsHistory()
    adapter_callback = AdapterCallback(run.adapter, output_dir / "adapter", base_model_name=run.base_model)
    tracking = build_tracking(run)
    start = time.perf_counter()
    group_opened_before = torch.distributed.is_available() and torch.distributed.is_initialized()
    launcher_environment = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    try:
        _fit(run, ckpt_path, adapter_callback, history, tracking, payload)
        payload["status"] = "completed"
    except RunInterrupted as interruption:
        payload["status"] = "requeued" if interruption.requeued else "interrupted"
        payload["error"] = str(interruption)
        raise
    except BaseException as error:
        payload["status"] = "failed"
        payload["error"] = f"{type(error).__name__}: {error}"
        payload["traceback"] = traceback.format_exc()
        raise
    finally:
        best = history.best
        payload.update(
            best=best, final=history.final, time_s=round(time.perf_counter() - start, 2), objective=best.get(monitor)
        )
        payload.update(history.steps)  # start_step, steps_run: a resume that restarted from 0 shows it
        if adapter_callback.parameter_counts:
            payload["params"] = adapter_callback.parameter_counts
        # Every DDP/SLURM rank runs train(); one file per run, from global rank 0 (Lightning sets the
        # rank when the strategy starts; before that it comes from the launcher's environment).
        if rank_zero_only.rank == 0:
            _write_metrics(output_dir / "metrics.json", payload)
            log.info("Wrote %s", output_dir / "metrics.json")
        _end_distributed(group_opened_before, launcher_environment)
        if rank_zero_only.rank == 0:  # after the cleanup above: a tracker error must not skip it
            tracking.finish(payload)  # metrics.json values and artifacts to the trackers; ends their runs
    if rank_zero_only.rank == 0:
        log.info(
            "Finished: %s = %s (best epoch %s); outputs in %s",
            monitor,
            payload["objective"],
            best.get("epoch"),
            output_dir,
        )
    return payload
