"""The adapter callback: adapts the model at setup(), reports parameters, writes adapter-only files."""

from __future__ import annotations

import logging
import math
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..adapters import Adapter

log = logging.getLogger(__name__)


def format_parameter_table(adapter_name: str, counts: dict[str, int]) -> str:
    total = max(counts["total"], 1)
    rows = [("adapter (" + adapter_name + ")", counts["adapter"]), ("head", counts["head"]),
            ("trainable", counts["trainable"]), ("total", counts["total"])]
    lines = [f"{'parameters':<24}{'count':>14}{'% of model':>12}"]
    lines += [f"{label:<24}{value:>14,}{100 * value / total:>11.4f}%" for label, value in rows]
    return "\n".join(lines)


class AdapterCallback(L.Callback):
    """Injects the adapter at `setup()`, before checkpoint restore and `configure_optimizers`.

    Adapting at setup (not at construction) is what lets `ckpt_path=...` find the adapter's
    parameters in the module. After each validation it writes `adapter/last`, and `adapter/best`
    whenever the monitored metric improves.
    """

    def __init__(self, adapter: Adapter, directory: str | Path, monitor: str, mode: str = "max",
                 base_model_name: str | None = None):
        self.adapter = adapter
        self.directory = Path(directory)
        self.monitor = monitor
        self.mode = mode
        self.base_model_name = base_model_name
        self.best_score: float | None = None
        self.parameter_counts: dict[str, int] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.parameter_counts is not None:
            return
        pl_module.model = self.adapter.apply(pl_module.model, pl_module.head_modules)
        self.parameter_counts = self.adapter.parameter_counts(pl_module.model, pl_module.head_modules)
        table = format_parameter_table(self.adapter.name, self.parameter_counts)
        log.info("Trainable parameters:\n%s", table)
        for logger in trainer.loggers:
            logger.log_hyperparams({f"params/{k}": v for k, v in self.parameter_counts.items()})

    def _improved(self, score: float) -> bool:
        if not math.isfinite(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.adapter.save(pl_module.model, self.directory / "last", base_model_name=self.base_model_name)
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None and self._improved(float(score)):
            self.best_score = float(score)
            self.adapter.save(pl_module.model, self.directory / "best", base_model_name=self.base_model_name)

    def state_dict(self) -> dict:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_score = state_dict.get("best_score")


class RNGStateCallback(L.Callback):
    """Stores the RNG states in checkpoints so a resumed run shuffles and drops out like an uninterrupted one.

    Everything is kept as tensors and plain tuples so the checkpoint loads with `weights_only=True`.
    """

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, cached = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        kind, keys, position, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        if state_dict.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class CheckpointOnException(L.Callback):
    """Saves `on_exception.ckpt` when a run fails or is interrupted (Ctrl-C, NaN loss).

    Lightning's own OnExceptionCheckpoint also makes every later `fit(ckpt_path=None)` resume
    implicitly from `last`; that would silently continue an unrelated earlier run in the same
    directory, so resuming stays an explicit `ckpt_path=` choice here.
    """

    def __init__(self, dirpath: str | Path):
        self.path = Path(dirpath) / "on_exception.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
