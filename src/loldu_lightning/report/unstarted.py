"""Jobs a basic-sweeper multirun planned but never started (no job directory at all).

A crash or a killed launcher leaves no trace of the jobs that came after it; re-expanding the
sweep recorded in multirun.yaml is the only way to list them.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

MULTIRUN_FILE = "multirun.yaml"
BASIC_SWEEPER = "BasicSweeper"


def _planned_jobs(multirun: DictConfig) -> list[list[str]]:
    """The override lists BasicSweeper generates for this sweep, in launch order.

    BasicSweeper's rule through Hydra's public override API: the sweep's `params` then the command
    line's overrides, a later override of a key replacing an earlier one, every discrete sweep
    expanded, and the cartesian product of the per-key choices in key order (the last key varies
    fastest). Range-style sweeps (interval) cannot be expanded and raise.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(multirun, "hydra.sweeper.params", default=None)
    arguments = [f"{key}={value}" for key, value in (params or {}).items()]
    arguments += list(OmegaConf.select(multirun, "hydra.overrides.task", default=None) or [])
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ValueError(
                f"{override.input_line}: the basic sweeper cannot expand a {override.value_type.name} sweep"
            )
    return [list(job) for job in itertools.product(*choices.values())]


def find_unstarted(sweep_dir: Path, started: list[tuple[str, ...]]) -> tuple[list[list[str]], str | None]:
    """Planned jobs with no matching job directory, and a note when the plan cannot be known."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        return [], f"no {MULTIRUN_FILE} in {sweep_dir}: jobs that never started cannot be listed"
    multirun = OmegaConf.load(path)
    sweeper = str(OmegaConf.select(multirun, "hydra.sweeper._target_", default="") or "")
    if not sweeper.endswith(BASIC_SWEEPER):
        return [], f"sweeper {sweeper or 'unknown'} plans jobs adaptively: jobs that never started cannot be listed"
    try:
        planned = _planned_jobs(multirun)
    except Exception as exc:  # glob()/custom sweeps need Hydra's config loader; say so, do not guess
        return [], f"could not expand the sweep in {path} ({exc}): jobs that never started cannot be listed"
    remaining = Counter(frozenset(overrides) for overrides in started)
    unstarted: list[list[str]] = []
    for overrides in planned:
        key = frozenset(overrides)
        if remaining[key] > 0:
            remaining[key] -= 1
        else:
            unstarted.append(overrides)
    return unstarted, None
