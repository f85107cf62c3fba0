"""Aggregates and run lists -> results.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from loldu_lightning.report.table import COMPLETED, MISSING


def _cell(value: Any) -> str:
    """Markdown-safe text of one table cell."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_metric(value: float) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def _count(value: Any) -> str:
    return "—" if value is None or value is pd.NA else f"{int(value):,}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _best_rows(groups: pd.DataFrame) -> set[Any]:
    """Rows tied for the best median when every run of the task agrees on the metric's direction."""
    modes = set(groups["mode"].dropna())
    medians = groups["median"].astype(float)
    if len(modes) != 1 or medians.isna().all():
        return set()
    best = medians.max() if modes == {"max"} else medians.min()
    return set(medians.index[medians == best])


def _n_cell(group: pd.Series) -> str:
    extra = [f"{group[k]} {label}" for k, label in (("n_failed", "failed"), ("n_missing", "missing")) if group[k]]
    return f"{group['n']}" + (f" ({', '.join(extra)})" if extra else "")


def task_table(groups: pd.DataFrame, by: list[str]) -> str:
    """One task's groups: keys, n, median, mean ± std, min–max, parameter counts, time."""
    best = _best_rows(groups)
    header = [*by, "n", "median", "mean ± std", "min – max", "adapter params", "trainable params", "time (s)"]
    rows = []
    for index, group in groups.iterrows():
        median = format_metric(group["median"])
        if index in best:
            median = f"**{median}**"
        spread = format_metric(group["mean"])
        if not math.isnan(group["std"]):
            spread += f" ± {format_metric(group['std'])}"
        span = "—" if group["n"] == 0 else f"{format_metric(group['min'])} – {format_metric(group['max'])}"
        time_s = "—" if math.isnan(group["time_s"]) else f"{group['time_s']:.1f}"
        rows.append(
            [
                *(group[key] for key in by),
                _n_cell(group),
                median,
                spread,
                span,
                _count(group["params.adapter"]),
                _count(group["params.trainable"]),
                time_s,
            ]
        )
    return markdown_table(header, rows)


def tables_section(groups: pd.DataFrame, by: list[str]) -> str:
    """A `## task — metric` heading and table per task."""
    parts = []
    for task, task_groups in groups.groupby("task", sort=True):
        names = ", ".join(dict.fromkeys(task_groups["metric_name"].dropna())) or "no metric"
        parts.append(f"## {task} — {names}\n\n{task_table(task_groups.reset_index(drop=True), by)}")
    return "\n\n".join(parts)


def problems_section(runs: pd.DataFrame, unstarted: list[list[str]], metric_label: str) -> str:
    """Failed, missing, metric-less and never-started runs, each named so none is silently dropped."""
    parts = []
    failed = runs[~runs["status"].isin([COMPLETED, MISSING])]
    if len(failed):
        rows = [[r.job, f"`{r.overrides}`" if r.overrides else "", r.status, r.error] for r in failed.itertuples()]
        table = markdown_table(["job", "overrides", "status", "error"], rows)
        parts.append(f"## Failed runs ({len(failed)})\n\n{table}")
    missing = runs[runs["status"] == MISSING]
    if len(missing):
        rows = [[r.job, f"`{r.overrides}`" if r.overrides else ""] for r in missing.itertuples()]
        parts.append(
            f"## Missing runs ({len(missing)})\n\nJob directories without metrics.json "
            "(killed, still running, or never finished).\n\n" + markdown_table(["job", "overrides"], rows)
        )
    no_metric = runs[(runs["status"] == COMPLETED) & runs["metric"].isna()]
    if len(no_metric):
        rows = [[r.job, f"`{r.overrides}`" if r.overrides else ""] for r in no_metric.itertuples()]
        parts.append(
            f"## Completed runs without {metric_label} ({len(no_metric)})\n\n"
            + markdown_table(["job", "overrides"], rows)
        )
    if unstarted:
        rows = [[f"`{' '.join(overrides)}`"] for overrides in unstarted]
        parts.append(
            f"## Not started ({len(unstarted)})\n\nPlanned by the sweep in multirun.yaml, no job directory.\n\n"
            + markdown_table(["overrides"], rows)
        )
    return "\n\n".join(parts)


def _epoch_label(runs: pd.DataFrame) -> str:
    """Which epoch the table reports, in words (runs may differ: see table.epoch_of)."""
    epochs = set(runs["epoch"].dropna()) if "epoch" in runs else {"best"}
    if epochs == {"final"}:
        return "after each run's last epoch (the runs validate on the test split, or --epoch final)"
    if epochs == {"best"} or not epochs:
        return "at each run's best epoch"
    if epochs == {"test"}:
        return "on the test split, evaluated once with each run's checkpoint selected on held-out data"
    if "test" in epochs:
        return (
            "per run as its column epoch of runs.csv says: test (the test split with the checkpoint "
            "selected on held-out data), final (runs that validate on the test split) or best"
        )
    return (
        "at the best epoch, or after the last epoch for runs that validate on the test split (column epoch of runs.csv)"
    )


def render(
    title: str,
    runs: pd.DataFrame,
    groups: pd.DataFrame,
    by: list[str],
    metric: str | None,
    unstarted: list[list[str]],
    notes: list[str],
) -> str:
    """The whole results.md."""
    metric_label = metric or "each run's monitored metric"
    counts = runs["status"].value_counts()
    summary = ", ".join(f"{count} {status}" for status, count in counts.items())
    if unstarted:
        summary += f", {len(unstarted)} not started"
    header = (
        f"# Results: {title}\n\n"
        f"Metric: {metric_label}, {_epoch_label(runs)}. Per group: n usable runs, "
        f"their median, mean ± std (sample std) and min – max over seeds.  \n"
        f"Grouped by: {', '.join(by) if by else '(nothing varies but the seed)'}.  \n"
        f"Jobs: {len(runs)} ({summary})."
    )
    sections = [header, tables_section(groups, by), problems_section(runs, unstarted, metric_label)]
    if notes:
        sections.append("## Notes\n\n" + "\n".join(f"- {note}" for note in notes))
    return "\n\n".join(section for section in sections if section) + "\n"
