"""build_report: a Hydra multirun directory -> tables, CSVs, figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from loldu_lightning.report.decision import decide, decision_section, parse_selector
from loldu_lightning.report.figures import axis_vs_metric, params_vs_metric
from loldu_lightning.report.jobs import config_notes, load_jobs
from loldu_lightning.report.markdown import render
from loldu_lightning.report.table import (
    AXIS_KEYS,
    COMPLETED,
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
    files: list[Path] = field(default_factory=list)

    def write(self, out: str | Path) -> list[Path]:
        """Write results.md, results.csv, runs.csv and the PNG figures into `out`."""
        out_dir = Path(out).expanduser()
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / "results.md", out_dir / "results.csv", out_dir / "runs.csv"]
        paths[0].write_text(self.markdown)
        self.groups.to_csv(paths[1], index=False)
        self.runs.to_csv(paths[2], index=False)
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
) -> Report:
    """Collect a multirun's jobs, aggregate over seeds per group, render tables and figures.

    `by`: config keys to group by (list or comma-separated); default: the override keys that vary
    across jobs, seed excluded. Groups are always split by task as well. `metric`: a key of each
    run's metrics; default: each run's own monitored metric. `epoch`: which epoch of each run is
    reported: `best`, `final`, `test` (metrics.json's `test`: the test split with the selected
    checkpoint), or `auto` (test where a run has it, else final for runs that validate on the test
    split, best for the others). `out`: where files go (default the sweep directory); `write=False` only computes.
    """
    root = Path(sweep_dir).expanduser()
    jobs = load_jobs(root)
    keys = _split_keys(by)
    runs = runs_frame(jobs, metric, extra_keys=[*(keys or []), *AXIS_KEYS], epoch=epoch)
    overridden = override_keys(jobs)
    if keys is None:
        keys = varying_keys(runs, [key for key in overridden if key not in (SEED_KEY, TASK_KEY)])
    keys = [key for key in keys if key != TASK_KEY]
    _check_by(runs, keys, overridden)
    _check_metric(runs, metric, {name for job in jobs for name in ((job.metrics or {}).get("best") or {})})

    notes: list[str] = []
    unstarted, note = find_unstarted(root, [job.overrides for job in jobs])
    if note:
        notes.append(note)
    groups = aggregate(runs, [TASK_KEY, *keys])
    figures: dict[str, Figure] = {}
    params_figure = params_vs_metric(groups, keys, notes)
    if params_figure is not None:
        figures["params_vs_metric.png"] = params_figure
    for name, axis_keys, base in AXIS_FIGURES:
        axis = next((key for key in axis_keys if key in runs and varying_keys(runs, [key])), None)
        if axis is not None:
            figure = axis_vs_metric(runs, axis, keys, base, notes, name)
            if figure is not None:
                figures[name] = figure
    notes.extend(config_notes(jobs))
    markdown = render(str(root), runs, groups, keys, metric, unstarted, notes)
    if reference is not None:
        chosen = parse_selector(candidates, keys, "--candidates") if candidates else None
        reference_label, verdicts = decide(
            groups, keys, parse_selector(reference, keys, "--reference"), chosen, min_seeds
        )
        markdown += "\n" + decision_section(keys, reference_label, verdicts, min_seeds) + "\n"
    report = Report(root, keys, metric, runs, groups, markdown, figures, unstarted, notes)
    if write:
        report.write(out if out is not None else root)
    return report
