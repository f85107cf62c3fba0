"""Trainer keyword arguments from the typed `trainer` options."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate

from ..options import TrainerOptions


def trainer_options(trainer: TrainerOptions) -> dict[str, Any]:
    """The typed numeric options (their defaults are Lightning's) and the keys passed on to
    `lightning.Trainer` as written; a `strategy` given as a `_target_` node (a Lightning strategy with
    options, e.g. DDPStrategy(broadcast_buffers=False)) is instantiated."""
    numeric = {field.name: getattr(trainer, field.name) for field in dataclasses.fields(trainer)}
    passed_on = dict(numeric.pop("lightning"))  # a copy: the instantiated strategy does not go back
    options = {**numeric, **passed_on}
    if isinstance(options.get("strategy"), Mapping):
        options["strategy"] = instantiate(options["strategy"])
    return options
