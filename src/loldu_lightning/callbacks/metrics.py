"""Per-epoch validation history, from which metrics.json takes the final and the best epoch."""

from __future__ import annotations

import math

import lightning as L


class MetricsHistory(L.Callback):
    def __init__(self, monitor: str, mode: str = "max"):
        self.monitor = monitor
        self.mode = mode
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        row["epoch"] = trainer.current_epoch
        row["step"] = trainer.global_step
        self.history.append(row)

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    @property
    def best(self) -> dict[str, float]:
        scored = [r for r in self.history if math.isfinite(r.get(self.monitor, math.nan))]
        if not scored:
            return {}
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda r: r[self.monitor])

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
