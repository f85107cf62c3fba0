"""The optimizer and learning-rate schedule, as the tasks' `configure_optimizers` takes them."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..adapters import ADAPTERS
from ..options import RunOptions, SchedulerOptions


def optimizer_config(options: RunOptions) -> dict[str, Any]:
    """`name`, `head_lr` and `adapter_lr_scale` (read by the task), then the torch optimizer's keyword
    arguments: `lr`, `weight_decay` and the keys passed on as written (`+optimizer.betas=[0.9,0.98]`).

    `adapter_lr_scale` multiplies `lr` for every trainable parameter outside the heads: LoLDU's
    `adapter.lr_scale` (by default its decomposition's, so one rate fits lu, svd and qr); 1 for the
    other adapters."""
    optimizer = options.optimizer
    return {
        "name": optimizer.name,
        "lr": optimizer.lr,
        "weight_decay": optimizer.weight_decay,
        "head_lr": optimizer.head_lr,
        "adapter_lr_scale": ADAPTERS[options.adapter_name](options.adapter).lr_scale(),
        **optimizer.torch_options,
    }


def scheduler_config(scheduler: SchedulerOptions) -> dict[str, Any]:
    return dataclasses.asdict(scheduler)
