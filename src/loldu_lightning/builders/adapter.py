"""The run's adapter: its options from `adapter`, module names translated by the model's aliases."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..adapters import Adapter, build_adapter
from ..models import alias_target_modules
from .plain import plain


def adapter_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config.adapter` as plain values, its target/exclude module names translated by
    `model.target_module_aliases` (one experiment file serves models that name layers differently)."""
    return alias_target_modules(plain(config["adapter"]), plain(config["model"].get("target_module_aliases")))


def build_run_adapter(config: Mapping[str, Any]) -> Adapter:
    return build_adapter(adapter_options(config))
