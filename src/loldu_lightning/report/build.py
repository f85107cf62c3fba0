"""build_report: a Hydra multirun directory -> tables, CSVs, figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from loldu_lightning.report.decision import decide, decision_section, parse_selector
from loldu_lightning.report.defaults import default_value
from loldu_lightning.report.figures import axis_vs_metric, categorical_vs_metric, params_vs_metric, short_labels
from loldu_lightning.report.jobs import Job, config_notes, load_jobs
from loldu_lightning.report.layout import Layout, pivot_layout
from loldu_lightning.report.markdown import render
from loldu_lightning.report.paper import PaperTable, paper_table, table_for_experiments
from loldu_lightning.report.table import (
    AXIS_KEYS,
    COMPLETED,
    OWN_COLUMN_KEYS,
    aggregate,
    override_keys,
    runs_frame,
    varying_keys,
)
from loldu_lightning.report.unstarted import find_unstarted

SEED_KEY = "seed"
TASK_KEY = "task"
# (figure file, candidate config keys, log base of the x axis)
AXIS_FIGURES = (("rank_vs_metric.png", ("adapter.rank",), 2), ("lr_vs_metric.png", ("optimizer.lr",), 10))
NUMERIC_AXES = {key for _, keys, _ in AXIS_FIGURES for key in keys}
# Config keys read for every run (beside the swept ones): the setup a comparison with the paper names.
SETUP_KEYS = ("adapter.name", "model.name_or_path", "adapter.decomposition", "trainer.max_epochs", "data.train_limit")
RUNS_CSV = "runs.csv"


@dataclass
class Report:
    """Everything build_report computed; `files` is empty when nothing was written."""

    sweep_dir: Path
    by: list[str]
    metric: str | None
    runs: pd.DataFrame
    groups: pd.DataFrame
    markdown: str
    figures: dict[str, Figure]
    unstarted: list[list[str]]
    notes: list[str]
    layout: Layout | None = None
    files: list[Path] = field(default_factory=list)

    def write(self, out: str | Path) -> list[Path]:
        """Write results.md, results.csv, runs.csv and the PNG figures into `out`."""
        out_dir = Path(out).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / "results.md", out_dir / "results.csv", out_dir / "runs.csv"]
        paths[0].write_text(self.markdown)
        self.groups.to_csv(paths[1], index=False)
        self.runs.to_csv(paths[2], index=False)
        if self.layout is not None:
            paths.append(out_dir / "layout.csv")
            self.layout.frame.to_csv(paths[-1], index=False)
        for name, figure in self.figures.items():
            path = out_dir / name
            figure.savefig(path, dpi=150)
            paths.append(path)
        self.files = paths
        return paths


def _split_keys(by: str | Sequence[str] | None) -> list[str] | None:
    if by is None:
        return None
    keys = by.split(",") if isinstance(by, str) else list(by)
    return [key.strip() for key in keys if key.strip()]


def _check_metric(runs: pd.DataFrame, metric: str | None, available: set[str]) -> None:
    completed = runs[runs["status"] == COMPLETED]
    if metric is not None and len(completed) and completed["metric"].isna().all():
        raise ValueError(
            f"metric {metric!r} is in no completed run's `best` metrics; "
            f"available: {', '.join(sorted(available)) or 'none'}"
        )


def _check_by(runs: pd.DataFrame, by: list[str], known: list[str]) -> None:
    for key in by:
        if key not in runs or runs[key].isna().all():
            raise ValueError(
                f"--by key {key!r} is neither overridden nor set in any job's .hydra/config.yaml; "
                f"overridden keys: {', '.join(known) or 'none'}"
            )


def _read_runs_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A committed report's runs.csv as the runs frame, and its swept keys (the columns between seed and metric_name)."""
    runs = pd.read_csv(path)
    missing = [column for column in ("status", "task", "metric", "metric_name", "mode") if column not in runs]
    if missing:
        raise ValueError(f"{path} has no column(s) {', '.join(missing)}; pass a runs.csv written by this report")
    columns = list(runs.columns)
    start = columns.index("seed") + 1 if "seed" in columns else 0
    swept = [c for c in columns[start : columns.index("metric_name")] if c not in OWN_COLUMN_KEYS]
    runs = runs.astype(object).where(runs.notna(), None)
    runs["metric"] = pd.to_numeric(runs["metric"], errors="coerce")
    for column in [c for c in runs.columns if c.startswith("params.")]:
        runs[column] = pd.to_numeric(runs[column], errors="coerce").round().astype("Int64")
    runs["time_s"] = pd.to_numeric(runs.get("time_s"), errors="coerce")
    return runs, swept


def _group_choice(runs: pd.DataFrame) -> str | None:
    names = set(runs["adapter.name"].dropna()) if "adapter.name" in runs else set()
    return str(names.pop()) if len(names) == 1 else None


def _reference_value(key: str, runs: pd.DataFrame, reference: str | None, keys: list[str]) -> Any:
    """The arm a categorical figure marks: --reference's value of `key`, else the run defaults'."""
    if reference is not None:
        selector = parse_selector(reference, keys, "--reference")
        if key in selector:
            return selector[key][0]
    return default_value(key, _group_choice(runs) if key.startswith("adapter.") else None)


def sweep_figures(
    runs: pd.DataFrame, groups: pd.DataFrame, keys: list[str], notes: list[str], reference: str | None = None
) -> dict[str, Figure]:
    """A figure for every swept key, by its kind: rank (log2) and lr (log10) curves, a dot-and-error-bar
    chart for the others (init, scaling, residual, decomposition, adapter), and metric vs adapter size
    when that size varies within a task."""
    figures: dict[str, Figure] = {}
    sizes = groups[groups["n"] > 0].groupby(TASK_KEY)["params.adapter"].nunique(dropna=True)
    if (sizes > 1).any():
        params_figure = params_vs_metric(groups, keys, notes)
        if params_figure is not None:
            figures["params_vs_metric.png"] = params_figure
    for name, axis_keys, base in AXIS_FIGURES:
        axis = next((key for key in axis_keys if key in runs and varying_keys(runs, [key])), None)
        if axis is not None:
            figure = axis_vs_metric(runs, axis, keys, base, notes, name)
            if figure is not None:
                figures[name] = figure
    labels = short_labels(keys)
    for key in keys:
        if key in NUMERIC_AXES or not varying_keys(runs, [key]):
            continue
        label = key.split(".")[0] if labels[key] == "name" else labels[key]  # adapter.name -> adapter
        name = f"{label.replace('/', '_').replace('.', '_')}_vs_metric.png"
        figure = categorical_vs_metric(runs, key, keys, _reference_value(key, runs, reference, keys), notes, name)
        if figure is not None:
            figures[name] = figure
    return figures


def _experiments(jobs: list[Job]) -> set[str]:
    return {str(value) for job in jobs if isinstance(value := job.resolve("experiment"), str)}


def _paper_for(paper: str | None, jobs: list[Job]) -> PaperTable | None:
    """--paper TABLE, `none`, or (None) the table an experiment=paper/* sweep reproduces."""
    if paper is None:
        return table_for_experiments(_experiments(jobs))
    if paper.strip().lower() == "none":
        return None
    return paper_table(paper)


def build_report(
    sweep_dir: str | Path,
    by: str | Sequence[str] | None = None,
    metric: str | None = None,
    out: str | Path | None = None,
    write: bool = True,
    epoch: str = "auto",
    reference: str | None = None,
    candidates: str | None = None,
    min_seeds: int = 1,
    rows: str | Sequence[str] | None = None,
    cols: str = TASK_KEY,
    cell: str = "median",
    paper: str | None = None,
) -> Report:
    """Collect a multirun's jobs, aggregate over seeds per group, render tables and figures.

    `sweep_dir`: the multirun directory, or a runs.csv this report wrote (re-rendered without the jobs;
    `out` is then required). `by`: config keys to group by (list or comma-separated); default: the
    override keys that vary across jobs, seed excluded. Groups are always split by task as well.
    `metric`: a key of each run's metrics; default: each run's own monitored metric. `epoch`: which
    epoch of each run is reported: `best`, `final`, `test` (metrics.json's `test`: the test split with
    the selected checkpoint), or `auto` (test where a run has it, else final for runs that validate on
    the test split, best for the others). `rows`/`cols`/`cell`: a table in the paper's layout
    (report/layout.py); `paper`: a published table beside it (`V`, ...; `none` for none; default: the
    table of the sweep's experiment=paper/* config, if any, which also turns the layout on with the
    --by keys as rows). `out`: where files go (default the sweep directory); `write=False` only computes.
    """
    root = Path(sweep_dir).expanduser()
    keys = _split_keys(by)
    row_keys = _split_keys(rows) or []
    layout_keys = [*row_keys, *([cols] if cols != TASK_KEY else [])]
    extra = [*(keys or []), *layout_keys, *AXIS_KEYS, *SETUP_KEYS]
    from_csv = root.is_file() and root.suffix == ".csv"
    if from_csv:
        if write and out is None:
            raise ValueError(f"{root} is a runs.csv: pass --out DIR (writing beside it would overwrite that report)")
        jobs: list[Job] = []
        runs, overridden = _read_runs_csv(root)
        table = _paper_for(paper, jobs)
    else:
        jobs = load_jobs(root)
        table = _paper_for(paper, jobs)
        extra += [*table.match_keys(), *table.settings] if table is not None else []
        runs = runs_frame(jobs, metric, extra_keys=list(dict.fromkeys(extra)), epoch=epoch)
        overridden = override_keys(jobs)
    if keys is None:
        keys = varying_keys(runs, [key for key in overridden if key not in (SEED_KEY, TASK_KEY)])
    keys = [key for key in keys if key != TASK_KEY]
    _check_by(runs, keys, overridden)
    if not from_csv:
        _check_metric(runs, metric, {name for job in jobs for name in ((job.metrics or {}).get("best") or {})})

    notes: list[str] = []
    unstarted: list[list[str]] = []
    if from_csv:
        notes.append(f"read from {root}: the runs as that report recorded them (no job directories)")
    else:
        unstarted, note = find_unstarted(root, [job.overrides for job in jobs])
        if note:
            notes.append(note)
    groups = aggregate(runs, [TASK_KEY, *keys])
    figures = sweep_figures(runs, groups, keys, notes, reference)
    notes.extend(config_notes(jobs))
    markdown = render(str(root), runs, groups, keys, metric, unstarted, notes)
    layout = None
    if row_keys or table is not None:
        layout = pivot_layout(runs, row_keys or keys or ["adapter.name"], cols, cell, table)
        markdown += "\n## Layout\n\n" + layout.markdown
    if reference is not None:
        chosen = parse_selector(candidates, keys, "--candidates") if candidates else None
        reference_label, verdicts = decide(
            groups, keys, parse_selector(reference, keys, "--reference"), chosen, min_seeds
        )
        markdown += "\n" + decision_section(keys, reference_label, verdicts, min_seeds) + "\n"
    report = Report(root, keys, metric, runs, groups, markdown, figures, unstarted, notes, layout)
    if write:
        report.write(out if out is not None else root)
    return report
