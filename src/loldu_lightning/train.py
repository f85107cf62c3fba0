"""`train(cfg) -> dict`: the whole experiment as one plain function (CLI, tests and notebooks call it)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .callbacks.adapter import AdapterCallback, CheckpointOnException, RNGStateCallback
from .callbacks.fault_tolerance import (
    GracefulStop,
    RestoreLoaderPosition,
    RunRecord,
    StepCheckpoint,
)
from .callbacks.metrics import MetricsHistory
from .callbacks.throughput import Throughput
from .checkpoints import (
    AtomicCheckpointIO,
    check_resume,
    config_fingerprint,
    defining_config,
    resolve_ckpt_path,
    resumable_checkpoints,
)
from .config import validate_config
from .interrupts import RunInterrupted
from .loggers import build_loggers, build_tracking, check_logger_packages
from .models import model_label
from .tasks import build_task

log = logging.getLogger(__name__)


def step_checkpoints(checkpoint_cfg: DictConfig, checkpoint_dir: Path) -> list[StepCheckpoint]:
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


def _callbacks(
    cfg: DictConfig,
    output_dir: Path,
    adapter_callback: AdapterCallback,
    history: MetricsHistory,
    run_config: dict[str, Any],
) -> list[L.Callback]:
    task = cfg.task
    checkpoint_dir = output_dir / "checkpoints"
    callbacks: list[L.Callback] = [
        adapter_callback,
        history,
        RNGStateCallback(),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best-{epoch}",
            monitor=task.monitor,
            mode=task.mode,
            save_last=True,
            save_top_k=cfg.checkpoint.save_top_k,
            # one last.ckpt shared with the step checkpoints, overwritten in place (never last-v1.ckpt)
            enable_version_counter=False,
        ),
        *step_checkpoints(cfg.checkpoint, checkpoint_dir),
        CheckpointOnException(checkpoint_dir),
        GracefulStop(checkpoint_dir),
        RestoreLoaderPosition(),
        RunRecord(run_config),
    ]
    if cfg.callbacks.throughput:
        callbacks.append(Throughput(window_size=int(cfg.callbacks.throughput)))
    if cfg.callbacks.lr_monitor and cfg.logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [instantiate(c) for c in (cfg.callbacks.extra or {}).values()]
    return callbacks


def trainer_options(trainer_cfg: DictConfig) -> dict[str, Any]:
    """`cfg.trainer` as Trainer keyword arguments; a `strategy` given as a `_target_` node (a Lightning
    strategy with options, e.g. DDPStrategy(broadcast_buffers=False)) is instantiated."""
    options = OmegaConf.to_container(trainer_cfg, resolve=True)
    if isinstance(options.get("strategy"), dict):
        options["strategy"] = instantiate(trainer_cfg.strategy)
    return options


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


def auto_resume(cfg: DictConfig) -> bool:
    """`resume.auto`: null means on for the jobs of a sweep (-m) and for a SLURM job that was requeued."""
    auto = OmegaConf.select(cfg, "resume.auto", default=None)
    if auto is not None:
        return bool(auto)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return in_sweep or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one configuration; writes checkpoints/, adapter/, logs and metrics.json under cfg.output_dir.

    Returns the metrics.json payload; `objective` is the best value of the monitored metric (what a
    sweeper optimises).
    """
    adapter = validate_config(cfg)
    check_logger_packages(cfg.logger)  # a missing tracker package fails here, before any model loads
    output_dir = Path(cfg.output_dir)
    run_config = defining_config(OmegaConf.to_container(cfg, resolve=True))
    ckpt_request = cfg.ckpt_path
    if auto_resume(cfg):
        finished = completed_run(output_dir, run_config)
        if finished is not None:
            log.info("%s already completed with this configuration; skipped (resume.auto)", output_dir)
            return finished
        if ckpt_request is None and resumable_checkpoints(output_dir / "checkpoints"):
            ckpt_request = "last"  # resolve_ckpt_path picks the newest and checks it is whole
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    task = cfg.task
    history = MetricsHistory()
    adapter_callback = AdapterCallback(adapter, output_dir / "adapter", base_model_name=model_label(cfg.model))
    tracking = build_tracking(cfg)
    payload: dict[str, Any] = {
        "status": "running",
        "error": None,
        "task": f"{task.family}/{task.name}",
        "adapter": adapter.name,
        "seed": cfg.seed,
        "monitor": task.monitor,
        "mode": task.mode,
        "objective": None,
        "best": {},
        "final": {},
        "params": {},
        "time_s": None,
        "output_dir": str(output_dir),
        "run_fingerprint": config_fingerprint(run_config),
    }
    start = time.perf_counter()
    group_opened_before = torch.distributed.is_available() and torch.distributed.is_initialized()
    launcher_environment = {key: os.environ.get(key) for key in _LAUNCHER_ENV}
    try:
        ckpt_path = resolve_ckpt_path(ckpt_request, output_dir / "checkpoints")
        if ckpt_path is not None:
            allowed = OmegaConf.select(cfg, "resume.allow_changes", default=None) or []
            for key, (old, new) in check_resume(ckpt_path, run_config, allowed).items():
                log.warning("Resuming with %s changed on purpose: %r -> %r", key, old, new)
            payload["resumed_from"] = str(ckpt_path)
        module, datamodule = build_task(cfg)
        callbacks = [*_callbacks(cfg, output_dir, adapter_callback, history, run_config), tracking]
        loggers = build_loggers(cfg)
        trainer = L.Trainer(
            **trainer_options(cfg.trainer),
            callbacks=callbacks,
            logger=loggers or False,
            default_root_dir=str(output_dir),
            plugins=[AtomicCheckpointIO()],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted; the last checkpoint is in checkpoints/")
        if task.get("test_split"):
            # loading "best" also restores the callbacks' state as of that checkpoint: keep the full history
            kept = copy.deepcopy(history.state_dict())
            payload["test"] = evaluate_test_split(trainer, module, datamodule, history.best.get("epoch"))
            history.load_state_dict(kept)
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
            best=best,
            final=history.final,
            time_s=round(time.perf_counter() - start, 2),
            objective=best.get(task.monitor),
        )
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
            task.monitor,
            payload["objective"],
            best.get("epoch"),
            output_dir,
        )
    return payload
