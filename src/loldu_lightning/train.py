"""`train(cfg) -> dict`: the whole experiment as one plain function (CLI, tests and notebooks call it)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from .adapters import build_adapter
from .callbacks.adapter import AdapterCallback, CheckpointOnException, RNGStateCallback
from .callbacks.metrics import MetricsHistory
from .callbacks.throughput import ThroughputCallback
from .config import validate_config
from .models import model_label
from .tasks import build_task

log = logging.getLogger(__name__)


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> str | None:
    """`last` means this run directory's checkpoints/last.ckpt; anything else is a file path."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = checkpoint_dir / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {last} does not exist. To resume an earlier run, run in its directory "
                "(hydra.run.dir=<that run's folder> ckpt_path=last) or give the file: ckpt_path=<path>/last.ckpt.")
        return str(last)
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} is not a checkpoint file.")
    return str(path)


def _callbacks(cfg: DictConfig, output_dir: Path, adapter, history: MetricsHistory) -> list[L.Callback]:
    task = cfg.task
    callbacks: list[L.Callback] = [
        AdapterCallback(adapter, output_dir / "adapter", task.monitor, task.mode, base_model_name=model_label(cfg.model)),
        history,
        RNGStateCallback(),
        ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best-{epoch}", monitor=task.monitor,
                        mode=task.mode, save_last=True, save_top_k=cfg.checkpoint.save_top_k),
        CheckpointOnException(output_dir / "checkpoints"),
    ]
    if cfg.callbacks.throughput:
        callbacks.append(ThroughputCallback(window_size=int(cfg.callbacks.throughput)))
    if cfg.callbacks.lr_monitor and cfg.logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [instantiate(c) for c in (cfg.callbacks.extra or {}).values()]
    return callbacks


def _write_metrics(path: Path, payload: dict[str, Any]) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    path.write_text(json.dumps(clean(payload), indent=2) + "\n")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit one configuration; writes checkpoints/, adapter/, logs and metrics.json under cfg.output_dir.

    Returns the metrics.json payload; `objective` is the best value of the monitored metric (what a
    sweeper optimises).
    """
    validate_config(cfg)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
    task = cfg.task
    history = MetricsHistory(task.monitor, task.mode)
    payload: dict[str, Any] = {
        "status": "running", "error": None, "task": f"{task.family}/{task.name}", "adapter": adapter.name,
        "seed": cfg.seed, "monitor": task.monitor, "mode": task.mode, "objective": None, "best": {},
        "final": {}, "params": {}, "time_s": None, "output_dir": str(output_dir)}
    start = time.perf_counter()
    adapter_callback = None
    try:
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir / "checkpoints")
        module, datamodule = build_task(cfg)
        callbacks = _callbacks(cfg, output_dir, adapter, history)
        adapter_callback = callbacks[0]
        loggers = [instantiate(c) for c in (cfg.logger or {}).values()]
        trainer = L.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), callbacks=callbacks,
                            logger=loggers or False, default_root_dir=str(output_dir))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted; the last checkpoint is in checkpoints/")
        payload["status"] = "completed"
    except BaseException as error:
        payload["status"] = "failed"
        payload["error"] = f"{type(error).__name__}: {error}"
        payload["traceback"] = traceback.format_exc()
        raise
    finally:
        best = history.best
        payload.update(best=best, final=history.final, time_s=round(time.perf_counter() - start, 2),
                       objective=best.get(task.monitor))
        if adapter_callback is not None and adapter_callback.parameter_counts:
            payload["params"] = adapter_callback.parameter_counts
        _write_metrics(output_dir / "metrics.json", payload)
    log.info("Finished: %s = %s (best epoch %s); outputs in %s", task.monitor, payload["objective"],
             best.get("epoch"), output_dir)
    return payload
