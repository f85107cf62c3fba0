"""The optimizer and learning-rate schedule, as the tasks' `configure_optimizers` takes them."""

from __future__ import annotations

import dataclasses
from typing import Any

from .schema import OptimizerOptions, SchedulerOptions


def optimizer_config(optimizer: OptimizerOptions) -> dict[str, Any]:
    """`name` and `head_lr` (read by the task), then the torch optimizer's keyword arguments: `lr`,
    `weight_decay` and the keys passed on as written (`+optimizer.betas=[0.9,0.98]`)."""
    return {
        "name": optimizer.name,
        "lr": optimizer.lr,
        "weight_decay": optimizer.weight_decay,
        "head_lr": optimizer.head_lr,
        **optimizer.torch_options,
    }


def scheduler_config(scheduler: SchedulerOptions) -> dict[str, Any]:
    return dataclasses.asdict(scheduler)
