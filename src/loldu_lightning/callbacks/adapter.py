"""The adapter callback: adapts the model at setup(), reports parameters, writes adapter-only files."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..adapters import Adapter, count_parameters
from ..interrupts import RunInterrupted

log = logging.getLogger(__name__)


def format_parameter_table(adapter_name: str, counts: dict[str, int]) -> str:
    total = max(counts["total"], 1)
    rows = [
        ("adapter (" + adapter_name + ")", counts["adapter"]),
        ("head", counts["head"]),
        ("trainable", counts["trainable"]),
        ("total", counts["total"]),
    ]
    lines = [f"{'parameters':<24}{'count':>14}{'% of model':>12}"]
    lines += [f"{label:<24}{value:>14,}{100 * value / total:>11.4f}%" for label, value in rows]
    return "\n".join(lines)


def is_new_best(trainer: L.Trainer, score) -> bool:
    """Whether `score`, just computed, beats the best score of the run's checkpoint callback.

    The checkpoint callback is the one judge of "best": it keeps the best score (and restores it on
    resume), and Lightning runs it after every other callback, so during `on_validation_end` its
    `best_model_score` is still the previous best.
    """
    checkpoint = trainer.checkpoint_callback
    if score is None or checkpoint is None or not math.isfinite(float(score)):
        return False
    best = checkpoint.best_model_score
    if best is None or not math.isfinite(float(best)):
        return True
    return float(score) > float(best) if checkpoint.mode == "max" else float(score) < float(best)


def gathered_parameters(trainer: L.Trainer):
    """A context in which rank 0's modules hold full, unsharded parameters (FSDP); a no-op otherwise.

    Under FSDP each rank holds only a shard of every parameter (z, sigma and the heads included), so
    the adapter files are written from a gather: `summon_full_params` with `rank0_only` and
    `offload_to_cpu` puts the full tensors on rank 0's CPU, one FSDP unit at a time. Every rank
    must enter it (it is a collective).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(
        trainer.strategy.model, writeback=False, rank0_only=True, offload_to_cpu=True
    )


class AdapterCallback(L.Callback):
    """Injects the adapter at `setup()`, before checkpoint restore and `configure_optimizers`.

    Adapting at setup (not at construction) is what lets `ckpt_path=...` find the adapter's
    parameters in the module. After each validation it writes `adapter/last`, and `adapter/best`
    whenever the checkpoint callback's monitored metric improves (`is_new_best`). The parameter
    counts of the adapted model are in `parameter_counts` once setup has run.
    """

    def __init__(self, adapter: Adapter, directory: str | Path, base_model_name: str | None = None):
        self.adapter = adapter
        self.directory = Path(directory)
        self.base_model_name = base_model_name
        self.parameter_counts: dict[str, int] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.parameter_counts is not None:
            return
        pl_module.model = self.adapter.apply(pl_module.model, pl_module.head_modules)
        self.parameter_counts = count_parameters(pl_module.model, pl_module.head_modules)
        if trainer.is_global_zero:  # every DDP rank adapts its own copy; one table in the log
            log.info("Trainable parameters:\n%s", format_parameter_table(self.adapter.name, self.parameter_counts))
        for logger in trainer.loggers:
            logger.log_hyperparams({f"params/{k}": v for k, v in self.parameter_counts.items()})

    def save(self, pl_module: L.LightningModule, kind: str) -> Path:
        """Write the adapter and heads of `pl_module` to `<directory>/<kind>`."""
        self.adapter.save(
            pl_module.model, self.directory / kind, pl_module.head_modules, base_model_name=self.base_model_name
        )
        return self.directory / kind

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        best = is_new_best(trainer, trainer.callback_metrics.get(monitor))  # synced metrics: same on every rank
        with gathered_parameters(trainer):  # a collective under FSDP: every rank enters, rank 0 writes
            if trainer.is_global_zero:
                self.save(pl_module, "last")
                if best:
                    self.save(pl_module, "best")


class RNGStateCallback(L.Callback):
    """Stores the RNG states in checkpoints so a resumed run drops out and draws noise like an uninterrupted one.

    The states are applied when the first training batch after a restore starts, not when the
    checkpoint loads: between the two, Lightning builds loaders and may validate, and whatever they
    draw would otherwise shift every later random number of the resumed run.
    Everything is kept as tensors and plain tuples so the checkpoint loads with `weights_only=True`.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None

    def state_dict(self) -> dict:
        if self._pending is not None:  # restored, not yet applied: the states the run will continue from
            return self._pending
        kind, keys, position, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    @staticmethod
    def _apply(state_dict: dict) -> None:
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
        if isinstance(exception, RunInterrupted):
            return  # it saved interrupted.ckpt at a step boundary already
        if trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
