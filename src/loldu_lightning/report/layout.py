"""A sweep in the paper's table layouts: `--rows KEY[,KEY] --cols KEY` pivots, with the paper's numbers.

- `cols="task"` (the default): methods x tasks, an `Avg.` column and the parameter counts (Tables I
  and IV; rows `adapter.rank` give Table XII, rows `optimizer.lr` Table XI);
- `cols=<config key>`: one table per task, e.g. rows `adapter.init` x cols `adapter.scaling` (Table V's
  "with / without" cells), and an average over the tasks when there are several.

Each cell is the median over seeds (the paper's statistic) or, with `cell="mean"`, the mean ± std,
times `scale` (100 when the metric lies in [-1, 1], as the paper prints accuracy and correlations).
With a `PaperTable`, a cell also shows the paper's number for the same row and task and the difference
(ours - paper); a task the paper's table has no column for is compared with the table's printed Avg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from loldu_lightning.report.figures import short_labels
from loldu_lightning.report.markdown import markdown_table
from loldu_lightning.report.paper import AVG_COLUMN, PAPER, PaperTable
from loldu_lightning.report.table import aggregate, sort_key

TASK = "task"
CELLS = ("median", "mean")
AVG = "Avg."
# Config keys that say whether a sweep ran the paper's setup (read into the runs by build_report).
SETUP_KEYS = ("model.name_or_path", "adapter.decomposition", "trainer.max_epochs", "data.train_limit")


@dataclass
class Layout:
    """The long frame of cells (one row per row-key combination x column x task) and its Markdown."""

    rows: list[str]
    cols: str
    cell: str
    scale: float
    frame: pd.DataFrame
    markdown: str
    notes: list[str] = field(default_factory=list)


def _scale_for(runs: pd.DataFrame, paper: PaperTable | None) -> float:
    if paper is not None:
        return paper.scale
    values = pd.to_numeric(runs["metric"], errors="coerce").dropna()
    return 100.0 if len(values) and values.abs().max() <= 1.0 else 1.0


def _number(value: float, digits: int = 2) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _params(values: Sequence[Any]) -> str:
    counts = sorted({int(v) for v in values if v is not None and v is not pd.NA and not pd.isna(v)})
    if not counts:
        return "—"
    return f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"


def _cell_text(record: dict[str, Any], cell: str, digits: int) -> str:
    if record is None or record["n"] == 0:
        return "—"
    text = _number(record["value"], digits)
    if cell == "mean" and not math.isnan(record["std"]):
        text += f" ± {_number(record['std'], digits)}"
    if record.get("paper") is not None and not math.isnan(record["paper"]):
        text += f" (paper {_number(record['paper'], digits)}, {record['diff']:+.{digits}f})"
    return text


def _avg(values: list[float]) -> float:
    return sum(values) / len(values) if values and not any(math.isnan(v) for v in values) else math.nan


def _check_keys(runs: pd.DataFrame, rows: list[str], cols: str) -> None:
    if not rows:
        raise ValueError("--rows needs at least one config key, e.g. --rows adapter.name")
    if cols in rows:
        raise ValueError(f"--cols {cols!r} is also a --rows key; a key is either rows or columns")
    for key in [*rows, *([cols] if cols != TASK else [])]:
        if key not in runs or runs[key].isna().all():
            raise ValueError(
                f"layout key {key!r} is neither overridden nor set in any job's config; "
                "pass a config key such as adapter.name, adapter.init or optimizer.lr"
            )


def build_cells(
    runs: pd.DataFrame, rows: list[str], cols: str, cell: str, scale: float, paper: PaperTable | None
) -> tuple[pd.DataFrame, list[str]]:
    """One record per (row keys, column, task): n, value, std (scaled), params, the paper's number."""
    keys = [*rows, *([cols] if cols != TASK else [])]
    groups = aggregate(runs, [TASK, *keys])
    notes: list[str] = []
    records = []
    for _, group in groups.iterrows():
        identity = {key: group[key] for key in keys} | {TASK: group[TASK]}
        if paper is not None:
            identity |= _fixed_values(runs, identity, paper.match_keys())
        record = {
            **identity,
            "column": group[TASK] if cols == TASK else group[cols],
            "n": int(group["n"]),
            "value": float(group[cell]) * scale if group["n"] else math.nan,
            "std": float(group["std"]) * scale if group["n"] > 1 else math.nan,
            "params.adapter": group["params.adapter"],
            "params.trainable": group["params.trainable"],
            "paper": math.nan,
            "paper_cite": None,
            "paper_params": None,
            "diff": math.nan,
        }
        if paper is not None:
            found, why = paper.lookup(identity, str(group[TASK]))
            if why and why not in notes:
                notes.append(why)
            if found is not None:
                record.update(paper=found.value, paper_cite=found.cite, diff=record["value"] - found.value)
                row = next(r for r in paper.rows if r.row == found.row)
                record["paper_params"] = row.params
        records.append(record)
    return pd.DataFrame(records), notes


def _fixed_values(runs: pd.DataFrame, identity: dict[str, Any], wanted: Sequence[str]) -> dict[str, Any]:
    """Keys a paper row matches on that the layout does not group by, where all of the cell's runs share
    one value (a sweep of adapter.init at scaling=none is Table V's "without" column)."""
    members = runs
    for key, value in identity.items():
        members = members[members[key].map(lambda v, value=value: sort_key(v) == sort_key(value))]
    fixed = {}
    for key in wanted:
        if key in identity or key not in members:
            continue
        values = {sort_key(v): v for v in members[key] if sort_key(v)[0] != 2}
        if len(values) == 1:
            fixed[key] = next(iter(values.values()))
    return fixed


def _ordered(values: Sequence[Any]) -> list[Any]:
    return sorted(dict.fromkeys(values), key=sort_key)


def _task_order(tasks: Sequence[str], paper: PaperTable | None) -> list[str]:
    tasks = list(dict.fromkeys(tasks))
    first = [task for task in (paper.columns if paper else []) if task in tasks]
    return first + sorted(task for task in tasks if task not in first)


def _row_labels(frame: pd.DataFrame, rows: list[str]) -> list[tuple]:
    combos = {tuple(record[key] for key in rows) for _, record in frame.iterrows()}
    return sorted(combos, key=lambda combo: [sort_key(value) for value in combo])


def _select(frame: pd.DataFrame, rows: list[str], combo: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for key, value in zip(rows, combo, strict=True):
        mask &= frame[key].map(lambda v, value=value: sort_key(v) == sort_key(value))
    return frame[mask]


def _by_task_table(frame: pd.DataFrame, rows: list[str], cell: str, paper: PaperTable | None, digits: int) -> str:
    tasks = _task_order(frame[TASK], paper)
    labels = short_labels(rows)
    task_header = [paper.column_label(task) if paper and task in paper.columns else task for task in tasks]
    header = [*(labels[key] for key in rows), *task_header, AVG, "adapter params", "trainable params"]
    if paper is not None:
        header.append(f"paper params (Table {paper.name})")
    lines = []
    for combo in _row_labels(frame, rows):
        members = _select(frame, rows, combo)
        by_task = {record[TASK]: record for _, record in members.iterrows()}
        cells = [_cell_text(by_task.get(task), cell, digits) for task in tasks]
        complete = all(task in by_task and by_task[task]["n"] > 0 for task in tasks)
        avg = {"n": 0}
        if complete:
            ours = [by_task[task]["value"] for task in tasks]
            avg = {"n": 1, "value": _avg(ours), "std": math.nan, "paper": math.nan, "diff": math.nan}
            theirs = [by_task[task]["paper"] for task in tasks]
            if paper is not None and not any(math.isnan(v) for v in theirs):
                avg.update(paper=_avg(theirs), diff=avg["value"] - _avg(theirs))
        row_params = next((p for p in members["paper_params"] if p), None)
        line = [
            *combo,
            *cells,
            _cell_text(avg, "median", digits),
            _params(members["params.adapter"]),
            _params(members["params.trainable"]),
        ]
        if paper is not None:
            line.append(row_params or "—")
        lines.append(line)
    return markdown_table(header, lines)


def _by_key_tables(
    frame: pd.DataFrame, rows: list[str], cols: str, cell: str, paper: PaperTable | None, digits: int
) -> str:
    labels = short_labels([*rows, cols])
    columns = _ordered(frame["column"])
    header = [*(labels[key] for key in rows), *(f"{labels[cols]}={value}" for value in columns)]
    parts = []
    tasks = _task_order(frame[TASK], paper)
    for task in tasks:
        task_frame = frame[frame[TASK] == task]
        lines = []
        for combo in _row_labels(task_frame, rows):
            members = _select(task_frame, rows, combo)
            by_column = {sort_key(record["column"]): record for _, record in members.iterrows()}
            lines.append([*combo, *(_cell_text(by_column.get(sort_key(c)), cell, digits) for c in columns)])
        parts.append(f"#### {task}\n\n{markdown_table(header, lines)}")
    if len(tasks) > 1:
        lines = []
        for combo in _row_labels(frame, rows):
            members = _select(frame, rows, combo)
            line = list(combo)
            for column in columns:
                at = members[members["column"].map(lambda v, c=column: sort_key(v) == sort_key(c))]
                ours = [
                    at[at[TASK] == task]["value"].iloc[0] if (at[TASK] == task).any() else math.nan for task in tasks
                ]
                avg = {"n": 0}
                if not any(math.isnan(v) for v in ours):
                    avg = {"n": 1, "value": _avg(ours), "std": math.nan, "paper": math.nan, "diff": math.nan}
                    theirs = [at[at[TASK] == task]["paper"].iloc[0] for task in tasks]
                    if paper is not None and not any(math.isnan(v) for v in theirs):
                        avg.update(paper=_avg(theirs), diff=avg["value"] - _avg(theirs))
                line.append(_cell_text(avg, "median", digits))
            lines.append(line)
        parts.append(f"#### {AVG} over {', '.join(tasks)}\n\n{markdown_table(header, lines)}")
    return "\n\n".join(parts)


def _sweep_setup(runs: pd.DataFrame, keys: Sequence[str]) -> dict[str, list[Any]]:
    """The values the sweep's runs recorded for `keys` (those it recorded)."""
    return {key: _ordered(runs[key].dropna()) for key in keys if key in runs and runs[key].notna().any()}


def _differences(frame: pd.DataFrame, runs: pd.DataFrame, paper: PaperTable, layout_keys: list[str]) -> list[str]:
    """How this sweep's setup differs from the paper's, one phrase per difference."""
    setup = _sweep_setup(runs, [*SETUP_KEYS, *paper.settings])
    differ = []
    models = [str(value) for value in setup.get("model.name_or_path", [])]
    if models and not any(paper.model.lower() in model.lower() for model in models):
        differ.append(f"the model ({', '.join(models)}; the paper: {paper.model})")
    if setup.get("data.train_limit"):
        differ.append(f"the training data (subsets of {', '.join(map(str, setup['data.train_limit']))} examples)")
    for key, wanted in paper.settings.items():
        values = setup.get(key, [])
        if key not in layout_keys and any(str(value) != str(wanted) for value in values):
            differ.append(f"{key} ({', '.join(map(str, values))}; the paper: {wanted})")
    unmatched = [task for task in _ordered(frame[TASK]) if paper.column_for(str(task)) == AVG_COLUMN]
    if unmatched:
        differ.append(
            f"the tasks ({', '.join(map(str, unmatched))} are no column of Table {paper.name}: "
            f"their cells are compared with its printed Avg. over {', '.join(paper.columns.values())})"
        )
    seeds = runs.loc[runs["status"] == "completed", "seed"].nunique() if "seed" in runs else 0
    if seeds and seeds != paper.seeds:
        differ.append(f"the seeds ({seeds} here; the paper: {paper.seeds})")
    return differ


def paper_caption(frame: pd.DataFrame, runs: pd.DataFrame, paper: PaperTable, cell: str, layout_keys: list[str]) -> str:
    """Where the paper's numbers come from, what this sweep ran, and how the two setups differ."""
    setup = _sweep_setup(runs, [*SETUP_KEYS, *(key for key in paper.settings if key not in SETUP_KEYS)])
    seeds = runs.loc[runs["status"] == "completed", "seed"].nunique() if "seed" in runs else 0
    statistic = "median over seeds" if cell == "median" else "mean ± std over seeds"
    lines = [
        f"Paper: {paper.title}, {PAPER}: {paper.setup}. Metric: {paper.metric}.",
        f"Each cell: this sweep's {statistic} (x {paper.scale:g}), then the paper's number for the same row "
        f"and the difference (ours - paper); `Avg.` compares the means over the same columns.",
    ]
    if setup:
        ours = "; ".join(f"{key} = {', '.join(map(str, values))}" for key, values in setup.items())
        lines.append(f"This sweep: {ours}; {seeds} seed(s).")
    if "model.name_or_path" not in setup:
        lines.append(
            "Not recorded in these runs: model.name_or_path, data.train_limit (a runs.csv from before the report "
            "recorded them); compare the model and budget with the paper's by hand."
        )
    differ = _differences(frame, runs, paper, layout_keys)
    if differ:
        lines.append(
            f"The setups differ in {'; '.join(differ)}: read the differences as a comparison, not a reproduction."
        )
    lines.extend(f"Paper note: {note}" for note in paper.notes)
    return "  \n".join(lines)


def pivot_layout(
    runs: pd.DataFrame,
    rows: str | Sequence[str],
    cols: str = TASK,
    cell: str = "median",
    paper: PaperTable | None = None,
) -> Layout:
    """The sweep's runs as a paper-style table (see the module docstring); `runs` as `Report.runs`."""
    rows = [key.strip() for key in (rows.split(",") if isinstance(rows, str) else rows) if key.strip()]
    cols = (cols or TASK).strip()
    if cell not in CELLS:
        raise ValueError(f"--cell must be one of {', '.join(CELLS)}, got {cell!r}")
    _check_keys(runs, rows, cols)
    scale = _scale_for(runs, paper)
    frame, notes = build_cells(runs, rows, cols, cell, scale, paper)
    digits = 2 if scale == 100 else 4
    statistic = "median over seeds" if cell == "median" else "mean ± std over seeds"
    unit = " x 100" if scale == 100 else ""
    title = f"### Layout: {', '.join(rows)} x {cols} ({statistic}{unit})"
    if cols == TASK:
        body = _by_task_table(frame, rows, cell, paper, digits)
        body += "\n\n`Avg.`: the mean of the row's task cells, where the row has every task."
    else:
        body = _by_key_tables(frame, rows, cols, cell, paper, digits)
    parts = [title]
    if paper is not None:
        parts.append(paper_caption(frame, runs, paper, cell, [*rows, cols]))
    parts.append(body)
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes))
    return Layout(rows, cols, cell, scale, frame, "\n\n".join(parts) + "\n", notes)
