"""The run defaults of a swept key, read from the config tree: the reference arm a figure marks.

`adapter.init` -> `init` of conf/adapter/<the sweep's adapter>.yaml, or of the generated defaults it
composes first (conf/schema/adapter/<adapter>.yaml); `optimizer.lr` -> conf/schema/common.yaml's unless
the group file changes it; `adapter` / `adapter.name` -> the group config.yaml chooses. Only plain group options are looked up; anything else has no reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from loldu_lightning.cli.config_tree import config_dir

_ABSENT = object()


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
    if choice is None:
        return None
    root = Path(config_dir())
    # the group file holds what it changes; the rest is the generated base it composes first
    # (conf/schema/<group>/<choice>.yaml for an adapter, conf/schema/common.yaml for the common groups)
    candidates = [(root / group / f"{choice}.yaml", option), (root / "schema" / group / f"{choice}.yaml", option)]
    candidates.append((root / "schema" / "common.yaml", key))
    for path, selected in candidates:
        if not path.is_file():
            continue
        value = OmegaConf.select(OmegaConf.load(path), selected, default=_ABSENT, throw_on_resolution_failure=False)
        if value is not _ABSENT:
            return value if isinstance(value, (str, int, float, bool)) else None
    return None
