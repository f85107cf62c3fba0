"""Per-validation history, from which metrics.json takes the final and the best validation, and the
steps this process ran."""

from __future__ import annotations

import lightning as L

from .adapter import is_new_best


class MetricsHistory(L.Callback):
    """One row per validation; `best` is the row the checkpoint callback judged best (`is_new_best`)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []
        self.best_index: int | None = None
        # this process's own steps, never checkpointed: a resumed run reports where it continued from
        self.start_step: int | None = None
        self.end_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning restored a checkpoint's loops: the global step this process continues from
        self.start_step = self.end_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        self.end_step = trainer.global_step

    @property
    def steps(self) -> dict[str, int]:
        """`start_step` (0 unless resumed) and `steps_run` (optimizer steps in this process); empty
        when training never started."""
        if self.start_step is None:
            return {}
        return {"start_step": self.start_step, "steps_run": self.end_step - self.start_step}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        row["epoch"] = trainer.current_epoch
        row["step"] = trainer.global_step
        self.history.append(row)
        monitor = getattr(trainer.checkpoint_callback, "monitor", None)
        if is_new_best(trainer, trainer.callback_metrics.get(monitor)):
            self.best_index = len(self.history) - 1

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def best(self) -> dict[str, float]:
        return self.history[self.best_index] if self.best_index is not None else {}

    def state_dict(self) -> dict:
        return {"history": self.history, "best_index": self.best_index}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
        self.best_index = state_dict.get("best_index")
