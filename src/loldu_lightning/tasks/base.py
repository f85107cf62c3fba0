"""The LightningModule every task family builds on: optimisation, schedules and lean checkpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

SCHEDULES = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "constant": lambda optimizer, num_warmup_steps, num_training_steps: get_constant_schedule_with_warmup(
        optimizer, num_warmup_steps
    ),
}
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def match_state_shapes(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimizer state the shape of its parameter when only the shape changed.

    LoLDU's sigma became a length-1 vector (it was 0-d); a checkpoint written before holds 0-d
    moments for it, which the next step could not update in place. Same numbers, new shape.
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():
                if key != "step" and torch.is_tensor(value) and value.shape != parameter.shape:
                    if value.numel() == parameter.numel():
                        state[key] = value.reshape(parameter.shape)


class AdaptedTask(L.LightningModule):
    """Holds `self.model` (a transformers model) that the adapter callback adapts at `setup()`.

    Checkpoints hold only what training changes (trainable parameters and buffers); the frozen base
    weights come back from the base model on restore, so a checkpoint of roberta-base with LoLDU is
    megabytes, not half a gigabyte.
    """

    # Read by Lightning's ThroughputMonitor: None = report samples/s and tokens/s but no FLOP utilisation.
    flops_per_batch: int | None = None

    def __init__(
        self, model: nn.Module, head_modules: Sequence[str], optimizer: Mapping[str, Any], scheduler: Mapping[str, Any]
    ):
        super().__init__()
        # from_pretrained returns eval mode; Lightning keeps module modes as given, so dropout would stay off
        self.model = model.train()
        self.head_modules = tuple(head_modules)
        self.optimizer_cfg = dict(optimizer)
        self.scheduler_cfg = dict(scheduler)

    def forward(self, **batch):
        return self.model(**batch)

    def check_finite(self, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # Decided together: a rank that stopped alone would leave the others waiting in the
            # gradient all-reduce (a hang, not an error). One boolean all-reduce per step.
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            where = (
                "" if trainer is None or trainer.world_size == 1 else f", on one of {trainer.world_size} ranks at least"
            )
            raise FloatingPointError(
                f"Training loss became {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}"
                f"{where}). "
                "The run stopped; the last checkpoint is kept in checkpoints/. Lower optimizer.lr, set "
                "trainer.gradient_clip_val, or use trainer.precision=32-true."
            )

    def configure_optimizers(self):
        options = dict(self.optimizer_cfg)
        name = options.pop("name")
        head_lr = options.pop("head_lr", None)
        adapter_lr_scale = float(options.pop("adapter_lr_scale", 1.0))
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not params:
            raise ValueError("No trainable parameters: the adapter froze everything (check adapter and head_modules).")
        if head_lr is None and adapter_lr_scale == 1.0:
            # One group, as before rates could differ: checkpoints of such runs keep their optimizer layout.
            groups = [{"params": [p for _, p in params]}]
        else:

            def is_head(name: str) -> bool:
                return any(f".{head}." in f".{name}" for head in self.head_modules)

            lr = options["lr"]
            groups = [
                {"params": [p for n, p in params if not is_head(n)], "lr": lr * adapter_lr_scale},
                {"params": [p for n, p in params if is_head(n)], "lr": lr if head_lr is None else head_lr},
            ]
            groups = [g for g in groups if g["params"]]
        optimizer = OPTIMIZERS[name](groups, **options)
        optimizer.register_load_state_dict_post_hook(match_state_shapes)
        schedule = dict(self.scheduler_cfg)
        kind = schedule.pop("name")
        if kind == "none":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        warmup = schedule.get("warmup_steps")
        if warmup is None:
            warmup = int(round(float(schedule.get("warmup_ratio") or 0.0) * total))
        lr_scheduler = SCHEDULES[kind](optimizer, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    # lean checkpoints ---------------------------------------------------------------------------
    def _frozen_keys(self) -> set[str]:
        return {name for name, param in self.named_parameters() if not param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = self._frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        checkpoint["frozen_weights_omitted"] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("frozen_weights_omitted"):
            # strict loading stays on: every frozen key is filled from the freshly built base model
            current = self.state_dict()
            checkpoint["state_dict"] = {**{k: current[k] for k in self._frozen_keys()}, **checkpoint["state_dict"]}
