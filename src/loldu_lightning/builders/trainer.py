"""Trainer keyword arguments from `trainer`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate

from .plain import plain


def trainer_options(trainer_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """`trainer` as Trainer keyword arguments; a `strategy` given as a `_target_` node (a Lightning
    strategy with options, e.g. DDPStrategy(broadcast_buffers=False)) is instantiated."""
    options = dict(plain(trainer_cfg))  # a copy: the instantiated strategy does not go back into the config
    if isinstance(options.get("strategy"), Mapping):
        options["strategy"] = instantiate(options["strategy"])
    return options
