"""A study's decision rule over the report's groups: may a candidate replace the reference (the defaults)?

The rule (docs/results/defaults_study/): a candidate is adopted only if it raises the mean over the
reference's tasks and loses no task by more than one standard deviation of the reference's seeds on
that task. Per task, a group's value is its mean over seeds; "raise" and "lose" follow the task's
mode (max or min). The verdict is one of:

- ``adopt``: the rule holds, with at least as many seeds as the reference on every task;
- ``reject``: the candidate does not raise the mean, or it loses a task by more than the reference's std;
- ``undecided``: the data cannot settle it (a task not run, fewer seeds than the reference or than the
  study's `min_seeds`, or a reference with one seed on a task, so that its std is unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from loldu_lightning.report.table import sort_key

TASK_KEY = "task"


def parse_selector(text: str, keys: list[str], option: str) -> dict[str, list[str]]:
    """`key=value[|value...],key=value` -> {key: [values]}; each key must be one of the report's --by keys."""
    selector: dict[str, list[str]] = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        key, sep, values = part.partition("=")
        if not sep or not values:
            raise ValueError(f"{option} {text!r}: each part must be key=value (e.g. {keys[0] if keys else 'key'}=...)")
        if key not in keys:
            raise ValueError(f"{option} key {key!r} is not a --by key; group keys: {', '.join(keys) or 'none'}")
        selector[key] = values.split("|")
    if not selector:
        raise ValueError(f"{option} {text!r} selects nothing; give key=value pairs of the --by keys")
    return selector


def same_value(value: Any, wanted: str) -> bool:
    """Whether a config value equals a value written on the command line (`3e-3` equals 0.003; `null` None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return wanted in ("null", "None", "")
    if str(value) == wanted:
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def _matches(row: pd.Series, selector: dict[str, list[str]]) -> bool:
    return all(any(same_value(row[key], wanted) for wanted in values) for key, values in selector.items())


@dataclass(frozen=True)
class Verdict:
    """One candidate against the reference, over the reference's tasks."""

    label: tuple
    verdict: str
    reason: str
    mean: float
    reference_mean: float
    seeds: int
    adapter_params: Any


def _label(row: pd.Series, keys: list[str]) -> tuple:
    return tuple(row[key] for key in keys)


def _per_task(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {row[TASK_KEY]: row for _, row in frame.iterrows() if row["n"] > 0}


def _gain(row: pd.Series, reference: pd.Series) -> float:
    """How far `row` is better than `reference` on its task (positive = better, whatever the mode)."""
    sign = -1.0 if reference["mode"] == "min" else 1.0
    return sign * (float(row["mean"]) - float(reference["mean"]))


def _judge(candidate: dict[str, pd.Series], reference: dict[str, pd.Series], min_seeds: int) -> tuple[str, str, float]:
    tasks = sorted(reference)
    missing = [task for task in tasks if task not in candidate]
    if missing:
        return "undecided", f"not run on {', '.join(missing)}", math.nan
    gains = {task: _gain(candidate[task], reference[task]) for task in tasks}
    mean_gain = sum(gains.values()) / len(gains)
    if mean_gain <= 0:
        return "reject", f"does not raise the mean ({mean_gain * 100:+.2f} points)", mean_gain
    losses = [
        f"{task} by {-gain * 100:.2f} > std {reference[task]['std'] * 100:.2f}"
        for task, gain in gains.items()
        if not math.isnan(reference[task]["std"]) and gain < -reference[task]["std"]
    ]
    if losses:
        return "reject", f"raises the mean ({mean_gain * 100:+.2f}) but loses {'; '.join(losses)}", mean_gain
    one_seed = [task for task in tasks if math.isnan(reference[task]["std"])]
    if one_seed:
        return (
            "undecided",
            f"raises the mean ({mean_gain * 100:+.2f}); the reference has one seed on {', '.join(one_seed)}",
            mean_gain,
        )
    short = [task for task in tasks if min(candidate[task]["n"], reference[task]["n"]) < min_seeds]
    if short:
        return (
            "undecided",
            f"raises the mean ({mean_gain * 100:+.2f}) but has fewer than {min_seeds} seeds (either side) on {', '.join(short)}",
            mean_gain,
        )
    fewer = [task for task in tasks if candidate[task]["n"] < reference[task]["n"]]
    if fewer:
        return (
            "undecided",
            f"raises the mean ({mean_gain * 100:+.2f}) with fewer seeds than the reference on {', '.join(fewer)}",
            mean_gain,
        )
    return "adopt", f"raises the mean by {mean_gain * 100:.2f} points and loses no task by more than one std", mean_gain


def decide(
    groups: pd.DataFrame,
    keys: list[str],
    reference: dict[str, list[str]],
    candidates: dict[str, list[str]] | None,
    min_seeds: int = 1,
) -> tuple[tuple, list[Verdict]]:
    """The reference group's label and a verdict for every candidate group (all other groups by default).

    `min_seeds`: the seeds a study's protocol asks for on every task, on both sides, before it adopts.
    """
    chosen = groups[groups.apply(_matches, axis=1, selector=reference)]
    labels = {_label(row, keys) for _, row in chosen.iterrows()}
    if len(labels) != 1:
        found = "no group" if not labels else f"{len(labels)} groups: {sorted(labels, key=str)}"
        raise ValueError(f"--reference must select exactly one group (over all tasks); it selects {found}")
    (reference_label,) = labels
    reference_tasks = _per_task(chosen)
    if not reference_tasks:
        raise ValueError(f"--reference group {reference_label} has no usable run")
    verdicts = []
    for label, members in groups.groupby(keys, dropna=False, sort=False):
        label = tuple(members.iloc[0][key] for key in keys)
        if label == reference_label or (candidates and not _matches(members.iloc[0], candidates)):
            continue
        per_task = _per_task(members)
        verdict, reason, mean_gain = _judge(per_task, reference_tasks, min_seeds)
        tasks = sorted(reference_tasks)
        reference_mean = sum(float(reference_tasks[t]["mean"]) for t in tasks) / len(tasks)
        mean = reference_mean + mean_gain if not math.isnan(mean_gain) else math.nan
        seeds = min((int(per_task[t]["n"]) for t in tasks if t in per_task), default=0)
        params = members["params.adapter"].dropna()
        verdicts.append(
            Verdict(label, verdict, reason, mean, reference_mean, seeds, int(params.iloc[0]) if len(params) else None)
        )
    verdicts.sort(key=lambda v: [sort_key(value) for value in v.label])
    return reference_label, verdicts


def decision_section(keys: list[str], reference_label: tuple, verdicts: list[Verdict], min_seeds: int = 1) -> str:
    """`## Decision`: the rule, the reference, one row per candidate."""
    reference = ", ".join(f"{key}={value}" for key, value in zip(keys, reference_label, strict=True))
    header = [
        "candidate",
        "adapter params",
        "seeds (min over tasks)",
        "mean over tasks",
        "reference mean",
        "verdict",
        "reason",
    ]
    rows = []
    for v in verdicts:
        name = ", ".join(f"{value}" for value in v.label)
        mean = "—" if math.isnan(v.mean) else f"{v.mean:.4f}"
        params = "—" if v.adapter_params is None else f"{v.adapter_params:,}"
        rows.append([name, params, str(v.seeds), mean, f"{v.reference_mean:.4f}", f"**{v.verdict}**", v.reason])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return (
        "## Decision\n\n"
        f"Reference (the defaults): {reference}. A candidate is adopted only if it raises the mean over the "
        "reference's tasks (each task's mean over seeds) and loses no task by more than one standard "
        "deviation of the reference's seeds; it is undecided where a task was not run, the reference has "
        "one seed, or the candidate has fewer seeds than the reference"
        + (f" or either side fewer than {min_seeds}" if min_seeds > 1 else "")
        + ".\n\n"
        + "\n".join(lines)
    )
