"""Matplotlib figures of a sweep: metric vs adapter size (the paper's Figure 1), vs rank, vs lr, and a
dot-and-error-bar chart per categorical key (init, scaling, adapter, ...).

Figures are built with the object-oriented API on an Agg canvas, so they neither depend on nor
change the global pyplot backend: saving works headless and notebooks display them inline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator, ScalarFormatter

from loldu_lightning.report.table import aggregate, sort_key

MAX_COLUMNS = 3


def short_labels(keys: Sequence[str]) -> dict[str, str]:
    """`adapter.init` -> `init` unless two keys would share a short name."""
    shorts = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if shorts.count(short) == 1 else key for key, short in zip(keys, shorts, strict=True)}


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def group_label(group: pd.Series, keys: Sequence[str]) -> str:
    """`init=uniform, scaling=learned`; a key the group leaves unset (e.g. LoRA's decomposition) is left out."""
    names = short_labels(keys)
    return ", ".join(f"{names[key]}={group[key]}" for key in keys if not _unset(group[key]))


def _task_axes(tasks: Sequence[str]) -> tuple[Figure, list[Axes]]:
    """One panel per task: tasks have different metrics, so they never share a y axis."""
    columns = min(MAX_COLUMNS, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure = Figure(figsize=(5.5 * columns, 4.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(rows, columns, i + 1) for i in range(len(tasks))]
    for ax, task in zip(axes, tasks, strict=True):
        ax.set_title(str(task))
        ax.grid(True, which="major", alpha=0.3)
    return figure, axes


def _errorbar(ax: Axes, x: np.ndarray, groups: pd.DataFrame, **style: Any) -> None:
    """Median markers with min–max bars across seeds."""
    median = groups["median"].to_numpy(float)
    spread = np.vstack([median - groups["min"].to_numpy(float), groups["max"].to_numpy(float) - median])
    ax.errorbar(x, median, yerr=spread, capsize=3, **style)


def _metric_label(groups: pd.DataFrame) -> str:
    return ", ".join(dict.fromkeys(groups["metric_name"].dropna())) or "metric"


def params_vs_metric(groups: pd.DataFrame, by: list[str], notes: list[str]) -> Figure | None:
    """Metric against trainable adapter parameters (log x), one labelled point per group."""
    usable = groups[(groups["n"] > 0) & (groups["params.adapter"].fillna(0).astype(float) > 0)]
    dropped = int((groups["n"] > 0).sum()) - len(usable)
    if dropped:
        notes.append(
            f"params_vs_metric.png: {dropped} group(s) without a positive adapter parameter count left out (log axis)"
        )
    if usable.empty:
        return None
    tasks = sorted(usable["task"].unique())
    figure, axes = _task_axes(tasks)
    for ax, task in zip(axes, tasks, strict=True):
        task_groups = usable[usable["task"] == task]
        # One series per group, named in a legend: groups often share an x (same adapter size), where
        # text beside the points would overlap.
        labels = [group_label(group, by) for _, group in task_groups.iterrows()]
        for row, label in enumerate(labels):
            group = task_groups.iloc[row : row + 1]
            _errorbar(ax, group["params.adapter"].to_numpy(float), group, fmt="o", markersize=6, label=label or None)
        if any(labels):
            ax.legend(fontsize=7, loc="best")
        ax.set_xscale("log")
        ax.set_xlabel("trainable adapter parameters")
        ax.set_ylabel(_metric_label(task_groups))
    return figure


def axis_vs_metric(
    runs: pd.DataFrame, axis: str, by: list[str], log_base: float, notes: list[str], figure_name: str
) -> Figure | None:
    """Metric against one swept hyperparameter, one line per combination of the other keys."""
    series_keys = [key for key in by if key != axis]
    groups = aggregate(runs, ["task", *series_keys, axis])
    x_all = pd.to_numeric(groups[axis], errors="coerce")
    usable_mask = (groups["n"] > 0) & (x_all > 0)
    dropped = int((groups["n"] > 0).sum() - usable_mask.sum())
    if dropped:
        notes.append(f"{figure_name}: {dropped} group(s) with a non-numeric or non-positive {axis} left out (log axis)")
    usable = groups[usable_mask].assign(_x=x_all[usable_mask])
    if usable.empty:
        return None
    tasks = sorted(usable["task"].unique())
    figure, axes = _task_axes(tasks)
    for ax, task in zip(axes, tasks, strict=True):
        task_groups = usable[usable["task"] == task]
        series = task_groups.groupby(series_keys, sort=False, dropna=False) if series_keys else [((), task_groups)]
        for _, line in series:
            line = line.sort_values("_x")
            label = group_label(line.iloc[0], series_keys) or None
            _errorbar(ax, line["_x"].to_numpy(float), line, fmt="o-", markersize=5, label=label)
        ax.set_xscale("log", base=log_base)
        if log_base == 2:
            # Ranks read better as the swept integers (1, 4, 768) than as powers of two.
            ax.set_xticks(sorted(task_groups["_x"].unique()))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(axis)
        ax.set_ylabel(_metric_label(task_groups))
        if series_keys:
            ax.legend(fontsize=8)
    return figure


def _dodge(count: int, width: float = 0.6) -> np.ndarray:
    """x offsets of `count` series side by side within one category."""
    if count == 1:
        return np.zeros(1)
    return np.linspace(-width / 2, width / 2, count)


def categorical_vs_metric(
    runs: pd.DataFrame, key: str, by: list[str], reference: Any, notes: list[str], figure_name: str
) -> Figure | None:
    """A dot-and-error-bar chart of a categorical key (init, scaling, adapter, ...): per category the mean
    over seeds with a ± std bar, every seed as a point; one panel per task, one series per combination
    of the other --by keys; the reference arm (the defaults' value, or --reference's) shaded."""
    usable = runs[(runs["status"] == "completed") & runs["metric"].notna() & runs[key].notna()]
    if usable.empty:
        notes.append(f"{figure_name}: no completed run with a metric and a {key}")
        return None
    categories = sorted(dict.fromkeys(usable[key]), key=sort_key)
    position = {sort_key(value): index for index, value in enumerate(categories)}
    series_keys = [other for other in by if other != key and other in usable]
    tasks = sorted(usable["task"].unique())
    figure, axes = _task_axes(tasks)
    for ax, task in zip(axes, tasks, strict=True):
        task_runs = usable[usable["task"] == task]
        series = list(task_runs.groupby(series_keys, sort=False, dropna=False)) if series_keys else [((), task_runs)]
        offsets = _dodge(len(series))
        for (_, members), offset in zip(series, offsets, strict=True):
            label = group_label(members.iloc[0], series_keys) or None
            xs, means, stds = [], [], []
            seed_x, seed_y = [], []
            for value, arm in members.groupby(key, sort=False):
                metric = arm["metric"].astype(float).to_numpy()
                x = position[sort_key(value)] + offset
                xs.append(x)
                means.append(metric.mean())
                stds.append(metric.std(ddof=1) if len(metric) > 1 else 0.0)
                # seeds spread a little around the arm so equal values stay visible
                seed_x.extend(x + np.linspace(-0.06, 0.06, len(metric)) if len(metric) > 1 else [x])
                seed_y.extend(metric)
            order = np.argsort(xs)
            line = ax.errorbar(
                np.asarray(xs)[order],
                np.asarray(means)[order],
                yerr=np.asarray(stds)[order],
                fmt="o",
                markersize=7,
                capsize=4,
                label=label,
            )
            ax.scatter(seed_x, seed_y, s=14, alpha=0.45, color=line[0].get_color(), zorder=3)
        if reference is not None and sort_key(reference) in position:
            at = position[sort_key(reference)]
            ax.axvspan(at - 0.45, at + 0.45, color="0.88", zorder=0, label=f"reference ({key}={reference})")
        ax.set_xticks(range(len(categories)))
        ax.set_xticklabels([str(value) for value in categories], rotation=20 if len(categories) > 4 else 0)
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.set_xlabel(key)
        ax.set_ylabel(f"{_metric_label(task_runs)} (mean ± std over seeds; dots: seeds)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return figure
