"""Jobs -> one row per run, and runs -> per-group aggregates over seeds."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from loldu_lightning.report.evaluations import eval_columns
from loldu_lightning.report.jobs import Job

COMPLETED = "completed"
MISSING = "missing"  # job directory without metrics.json: killed, still running, or never finished
UNREADABLE = "unreadable"
# Keys with a column of their own: every job knows its task and seed even without an override.
OWN_COLUMN_KEYS = ("task", "seed")
PARAM_KEYS = ("adapter", "head", "trainable", "total")
# Which epoch of a run the tables report (see epoch_of).
EPOCHS = ("auto", "best", "final", "test")
# Ablation axes plotted when they vary, whether swept by override or by experiment config.
AXIS_KEYS = ("adapter.rank", "optimizer.lr")


def _number(value: Any) -> float:
    """A float, NaN for anything absent or non-numeric."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _first_line(text: Any) -> str:
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _status(job: Job) -> str:
    if job.metrics_error is not None:
        return UNREADABLE
    if job.metrics is None:
        return MISSING
    return str(job.metrics.get("status") or "unknown")


def _test_name(name: str | None) -> str | None:
    """A validation metric's name in metrics.json's `test` (`val/accuracy` -> `test/accuracy`)."""
    if name is not None and name.startswith("val/"):
        return "test/" + name[len("val/") :]
    return name


def _metric(metrics: dict[str, Any], metric: str | None, epoch: str = "best") -> tuple[str | None, float, str | None]:
    """(metric name, value, mode) of a run at `epoch` ("best", "final" or "test"): its own monitor
    by default, else `<epoch>[metric]`. For `test`, a `val/` name reads the same metric's `test/`
    value (the test split evaluated once with the best checkpoint, see train.evaluate_test_split)."""
    values = metrics.get(epoch) or {}
    monitor = metrics.get("monitor")
    if epoch == "test":
        name = _test_name(metric if metric is not None else monitor)
        return name, _number(values.get(name)), metrics.get("mode")
    if metric is None or metric == monitor:
        value = metrics.get("objective") if metric is None and epoch == "best" else None
        if value is None and monitor is not None:
            value = values.get(monitor)
        return monitor, _number(value), metrics.get("mode")
    return metric, _number(values.get(metric)), None


def validates_on_test(job: Job) -> bool:
    """Whether the run's validation split is the test split (task.val_split names `test`).

    Such a run's best epoch is chosen on the split it reports, so the paper's protocol (and an
    honest number) is the metric after the last epoch.
    """
    split = job.resolve("task.val_split")
    if isinstance(split, str) and split.startswith("["):
        split = json.loads(split)
    return "test" in (split if isinstance(split, list) else [split])


def epoch_of(job: Job, epoch: str) -> str:
    """The epoch whose metrics a run reports: `best`, `final` or `test`; `auto` picks test for runs
    that evaluated a test split after model selection (metrics.json's `test`, `task.test_split`),
    else final for runs that validate on the test split (vision's standard splits) and best for
    the others (GLUE dev)."""
    if epoch not in EPOCHS:
        raise ValueError(f"epoch must be one of {', '.join(EPOCHS)}, got {epoch!r}")
    if epoch == "auto":
        if (job.metrics or {}).get("test"):
            return "test"
        return "final" if validates_on_test(job) else "best"
    return epoch


def _task(job: Job) -> str:
    """metrics.json's `family/name`; for runs that wrote none, the same from the job's config."""
    metrics_task = (job.metrics or {}).get("task")
    if metrics_task:
        return str(metrics_task)
    family, name = job.resolve("task.family"), job.resolve("task.name")
    if name is not None:
        return f"{family}/{name}" if family is not None else str(name)
    return str(job.values.get("task") or "unknown")


def _seed(job: Job) -> Any:
    seed = (job.metrics or {}).get("seed")
    return seed if seed is not None else job.resolve("seed")


def override_keys(jobs: Iterable[Job]) -> list[str]:
    """Override keys of all jobs in first-seen order, without the keys that have their own column."""
    keys: dict[str, None] = {}
    for job in jobs:
        for key in job.values:
            if key not in OWN_COLUMN_KEYS:
                keys.setdefault(key, None)
    return list(keys)


def runs_frame(
    jobs: list[Job], metric: str | None, extra_keys: Sequence[str] = (), epoch: str = "auto"
) -> pd.DataFrame:
    """One row per job: identity, status, resolved override keys, metric at the run's reported
    epoch (`epoch_of`), parameter counts, time."""
    keys = override_keys(jobs)
    keys += [key for key in extra_keys if key not in keys and key not in OWN_COLUMN_KEYS]
    rows = []
    for job in jobs:
        metrics = job.metrics or {}
        reported = epoch_of(job, epoch)
        name, value, mode = _metric(metrics, metric, reported) if job.metrics is not None else (metric, math.nan, None)
        params = metrics.get("params") or {}
        row: dict[str, Any] = {"job": job.name, "status": _status(job), "task": _task(job), "seed": _seed(job)}
        row.update({key: job.resolve(key) for key in keys})
        row.update({"metric_name": name, "metric": value, "mode": mode, "epoch": reported})
        row.update({f"params.{key}": _number(params.get(key)) for key in PARAM_KEYS})
        row["time_s"] = _number(metrics.get("time_s"))
        row["error"] = job.metrics_error or _first_line(metrics.get("error"))
        row["overrides"] = " ".join(job.overrides)
        row.update(eval_columns(job.path))  # eval.<evaluation>.<metric> from eval.json, when the run was evaluated
        rows.append(row)
    frame = pd.DataFrame(rows)
    for key in PARAM_KEYS:
        frame[f"params.{key}"] = frame[f"params.{key}"].round().astype("Int64")
    # Extra keys that no job overrides and no job's config defines are noise in runs.csv.
    overridden = {key for job in jobs for key in job.values}
    empty = [key for key in extra_keys if key in frame and key not in overridden and frame[key].isna().all()]
    return frame.drop(columns=empty)


def varying_keys(runs: pd.DataFrame, keys: Iterable[str]) -> list[str]:
    """Keys whose value differs between runs (None counts as a value)."""
    return [key for key in keys if key in runs and len({_hashable(v) for v in runs[key]}) > 1]


def _hashable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, then strings, then missing values."""
    value = _hashable(value)
    if value is None:
        return (2, "")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def _median_int(values: pd.Series) -> Any:
    values = values.dropna()
    if values.empty:
        return pd.NA
    return int(round(float(values.median())))


def aggregate(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`: n usable runs, median/mean/std/min/max of the metric, failures, params.

    Groups whose runs all failed stay in the table with n = 0, so a broken configuration shows.
    """
    records = []
    # dropna=False keeps runs whose key is unset (None/NaN) as a group of their own
    for group_values, members in runs.groupby(keys, dropna=False, sort=False):
        group_values = tuple(_hashable(value) for value in group_values)
        usable = members[(members["status"] == COMPLETED) & members["metric"].notna()]
        metric = usable["metric"].astype(float)
        names = [name for name in dict.fromkeys(members["metric_name"].dropna())]
        modes = list(dict.fromkeys(members["mode"].dropna()))
        records.append(
            {
                **dict(zip(keys, group_values, strict=True)),
                "metric_name": ", ".join(map(str, names)) or None,
                "mode": modes[0] if len(modes) == 1 else None,
                "n": len(usable),
                "n_failed": int((~members["status"].isin([COMPLETED, MISSING])).sum()),
                "n_missing": int((members["status"] == MISSING).sum()),
                "median": metric.median() if len(metric) else math.nan,
                "mean": metric.mean() if len(metric) else math.nan,
                "std": metric.std(ddof=1) if len(metric) > 1 else math.nan,
                "min": metric.min() if len(metric) else math.nan,
                "max": metric.max() if len(metric) else math.nan,
                **{f"params.{key}": _median_int(members[f"params.{key}"]) for key in PARAM_KEYS},
                "time_s": usable["time_s"].mean() if len(usable) else math.nan,
            }
        )
    frame = pd.DataFrame(records)
    order = sorted(range(len(frame)), key=lambda i: [sort_key(frame.iloc[i][key]) for key in keys])
    frame = frame.iloc[order].reset_index(drop=True)
    for key in (f"params.{key}" for key in PARAM_KEYS):
        frame[key] = frame[key].astype("Int64")
    return frame
