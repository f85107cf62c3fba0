"""Adapter registry: configs name a key of ADAPTERS, never a class path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loldu_lightning.adapters.base import Adapter
from loldu_lightning.adapters.loldu_adapter import LoLDUAdapter
from loldu_lightning.adapters.options import parse_options
from loldu_lightning.adapters.peft_adapters import (
    FourierFTAdapter,
    LoraAdapter,
    PissaAdapter,
    TinyLoraAdapter,
    VeraAdapter,
)
from loldu_lightning.adapters.subset import BitFitAdapter, FullAdapter, LinearProbeAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    adapter_type.name: adapter_type
    for adapter_type in (
        LoLDUAdapter,
        LoraAdapter,
        PissaAdapter,
        VeraAdapter,
        FourierFTAdapter,
        TinyLoraAdapter,
        FullAdapter,
        LinearProbeAdapter,
        BitFitAdapter,
    )
}


def build_adapter(cfg: Mapping[str, Any]) -> Adapter:
    """The adapter that `cfg["name"]` selects, configured by the other keys of `cfg`.

    Needs no model and loads none, so the app can call it first and fail fast on a bad config:
    an unknown name lists ADAPTERS, an unknown option lists that adapter's options, and a bad
    value raises the ValueError of the check that rejects it (naming the allowed values).
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"adapter config must be a mapping with a 'name' key, got {type(cfg).__name__}")
    if "name" not in cfg:
        raise ValueError(f"adapter config has no 'name'; choose one of {sorted(ADAPTERS)}")
    name = cfg["name"]
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; choose one of {sorted(ADAPTERS)}")
    adapter_type = ADAPTERS[name]
    options = parse_options(
        adapter_type.options_type, {key: value for key, value in cfg.items() if key != "name"}, name
    )
    return adapter_type(options)
