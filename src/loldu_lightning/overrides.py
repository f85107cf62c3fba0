"""Name the allowed keys when a command-line override has a typo (`adapter.rnak=8`).

Hydra already refuses unknown keys; this check runs first so the message also lists what exists.
"""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .config import config_dir

_ABSENT = object()


def _groups() -> set[str]:
    from pathlib import Path

    return {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}


def check_override_keys(args: list[str]) -> None:
    """Raise ValueError naming the allowed keys when an override sets a key the config lacks."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:
        return  # a syntax error: Hydra reports it with its own message
    groups = _groups()
    selections, value_keys = [], []
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_add() or override.is_force_add() or override.is_delete():
            continue
        if key.split("/")[0] in groups and "." not in key:
            if override.is_sweep_override():
                return  # keys depend on which group option each job picks; Hydra checks each job
            selections.append(override.input_line)
        else:
            value_keys.append(key)
    if not value_keys:
        return
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=selections)
    for key in value_keys:
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
            allowed = sorted(parent.keys()) if isinstance(parent, DictConfig) else []
            where = f"under '{parent_key}'" if parent_key else "at the top level"
            raise ValueError(
                f"Unknown config key '{key}'. Keys {where}: {', '.join(map(str, allowed))}. "
                f"(To add a new key on purpose use +{key}=...)"
            )
