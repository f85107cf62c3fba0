"""The run defaults of a swept key, read from the config tree: the reference arm a figure marks.

`adapter.init` -> conf/adapter/<the sweep's adapter>.yaml's `init`; `adapter` / `adapter.name` -> the
group config.yaml chooses. Only plain group options are looked up; anything else has no reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from loldu_lightning.cli.config_tree import config_dir


def _default_choice(group: str) -> str | None:
    """The option config.yaml's defaults list picks for a group (`adapter` -> `loldu`)."""
    root = OmegaConf.load(Path(config_dir()) / "config.yaml")
    for entry in root.get("defaults") or []:
        if isinstance(entry, str) or not hasattr(entry, "items"):
            continue
        for name, choice in entry.items():
            if name == group:
                return None if choice is None else str(choice)
    return None


def default_value(key: str, group_choice: str | None = None) -> Any:
    """The value a run gets for `key` when nothing overrides it; None when the tree does not say.

    `group_choice`: the group option the sweep used (its runs' `adapter.name`), when it is one.
    """
    group, _, option = key.partition(".")
    if not option or option == "name":
        return _default_choice(group)
    choice = group_choice or _default_choice(group)
    path = Path(config_dir()) / group / f"{choice}.yaml"
    if choice is None or not path.is_file():
        return None
    value = OmegaConf.select(OmegaConf.load(path), option, default=None, throw_on_resolution_failure=False)
    return value if isinstance(value, (str, int, float, bool)) else None
