"""The config groups that `--help` lists: the choices a user makes, without the research-study arms.

Hydra's own list (`$APP_CONFIG_GROUPS`) shows every folder of the config tree. The arms of a study
(`experiment/studies/...`) are selected by that study's sweep, not by hand, so they are left out;
the listing keeps Hydra's `group: option, option` lines.
"""

from __future__ import annotations

from pathlib import Path

# folders under conf/ that hold no user choices
HIDDEN_GROUPS = ("hydra", "experiment/studies")


def _hidden(group: str) -> bool:
    return any(group == hidden or group.startswith(hidden + "/") for hidden in HIDDEN_GROUPS)


def config_groups() -> str:
    """`group: options` per folder of the config tree that holds options, sorted, one per line."""
    from .config import config_dir

    root = Path(config_dir())
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and not _hidden(group):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)
