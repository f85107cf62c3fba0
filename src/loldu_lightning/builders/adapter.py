"""The run's adapter: its options from `adapter`, module names translated by the model's aliases, and
the one way a run's adapter is built from its typed options."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..adapters import ADAPTERS, Adapter
from ..models import alias_target_modules
from ..options import ModelOptions, RunOptions
from .plain import plain


def adapter_options(config: Mapping[str, Any], model: ModelOptions) -> dict[str, Any]:
    """`config.adapter` as plain values, its target/exclude module names translated by
    `model.target_module_aliases` (one experiment file serves models that name layers differently)."""
    return alias_target_modules(plain(config["adapter"]), model.target_module_aliases)


def run_adapter(options: RunOptions) -> Adapter:
    """The run's adapter from its typed options (`run_options(cfg)`, which read `adapter_options`)."""
    return ADAPTERS[options.adapter_name](options.adapter)
