"""The paper's published numbers (package data paper_tables.yaml) and how a sweep cell finds its own.

Shi et al. 2024, arXiv 2410.13618: Tables I, III, IV, V, VI, XI and XII as printed, each row cited by
its table and row name. A sweep cell (its group keys and task) takes the number of the one row whose
`match` keys agree with the cell, in the column of the cell's task; see `PaperTable.lookup`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from loldu_lightning.report.decision import same_value

DATA_FILE = "paper_tables.yaml"
PAPER = "Shi et al. 2024 (arXiv 2410.13618)"
AVG_COLUMN = "avg"
# A key the paper's rows use, and the other names a sweep may group the same setting by.
ALIASES = {"adapter.name": ("adapter",)}


@dataclass(frozen=True)
class PaperRow:
    """One printed row: its name in the paper, the runs it stands for, its numbers by column."""

    row: str
    match: dict[str, Any] | None
    values: dict[str, float]
    avg: float | None = None
    params: str | None = None


@dataclass(frozen=True)
class PaperValue:
    """A published number and where it is printed."""

    value: float
    table: str
    row: str
    column: str

    @property
    def cite(self) -> str:
        return f"Table {self.table}, row {self.row}, column {self.column}"


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    setup: str
    model: str
    scale: float
    metric: str
    experiments: tuple[str, ...]
    columns: dict[str, str]
    rows: tuple[PaperRow, ...]
    seeds: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def match_keys(self) -> list[str]:
        """Every config key a row of this table matches on."""
        return list(dict.fromkeys(key for row in self.rows for key in (row.match or {})))

    def column_for(self, task: str) -> str:
        """The paper's column of a task, or `avg` when the paper has no such column (setups differ)."""
        return task if task in self.columns else AVG_COLUMN

    def column_label(self, column: str) -> str:
        return "Avg." if column == AVG_COLUMN else self.columns.get(column, column)

    def matching_rows(self, identity: dict[str, Any]) -> list[PaperRow]:
        """Rows whose `match` agrees with every key the cell knows; the most specific rows first.

        A row must compare at least one key. Rows comparing more keys win (a sweep grouped by
        adapter.name and adapter.rank picks LoLDU r=64, not r=768); a tie is returned as such.
        """
        scored: list[tuple[int, PaperRow]] = []
        for row in self.rows:
            if not row.match:
                continue
            compared = 0
            agrees = True
            for key, wanted in row.match.items():
                found = next((name for name in (key, *ALIASES.get(key, ())) if name in identity), None)
                if found is None:
                    continue
                compared += 1
                if not same_value(identity[found], str(wanted)):
                    agrees = False
                    break
            if agrees and compared:
                scored.append((compared, row))
        if not scored:
            return []
        best = max(score for score, _ in scored)
        return [row for score, row in scored if score == best]

    def lookup(self, identity: dict[str, Any], task: str) -> tuple[PaperValue | None, str | None]:
        """(the published number for this cell, None) or (None, why there is none)."""
        rows = self.matching_rows(identity)
        if not rows:
            return None, None
        if len(rows) > 1:
            keys = sorted({key for row in rows for key in (row.match or {}) if key not in identity})
            return None, (
                f"Table {self.name}: rows {', '.join(row.row for row in rows)} all match; "
                f"group by {', '.join(keys) or 'more keys'} to pick one"
            )
        row = rows[0]
        column = self.column_for(task)
        value = row.avg if column == AVG_COLUMN else row.values.get(column)
        if value is None:
            return None, None
        return PaperValue(float(value), self.name, row.row, self.column_label(column)), None


def _row(table: str, raw: dict[str, Any], columns: dict[str, str]) -> PaperRow:
    values = raw.get("values") or {}
    unknown = set(values) - set(columns)
    if unknown:
        raise ValueError(f"{DATA_FILE}: Table {table}, row {raw.get('row')}: columns {sorted(unknown)} not declared")
    return PaperRow(
        row=str(raw["row"]),
        match=dict(raw["match"]) if raw.get("match") else None,
        values={str(key): float(value) for key, value in values.items()},
        avg=float(raw["avg"]) if raw.get("avg") is not None else None,
        params=str(raw["params"]) if raw.get("params") is not None else None,
    )


@cache
def paper_tables() -> dict[str, PaperTable]:
    """Every published table of the package data, by its Roman numeral."""
    text = resources.files("loldu_lightning.report").joinpath(DATA_FILE).read_text()
    tables = {}
    for name, raw in yaml.safe_load(text).items():
        columns = {str(key): str(label) for key, label in raw["columns"].items()}
        tables[str(name)] = PaperTable(
            name=str(name),
            title=raw["title"],
            setup=" ".join(str(raw["setup"]).split()),
            model=raw["model"],
            scale=float(raw["scale"]),
            metric=raw["metric"],
            experiments=tuple(raw.get("experiments") or ()),
            columns=columns,
            rows=tuple(_row(str(name), row, columns) for row in raw["rows"]),
            seeds=int(raw.get("seeds") or 1),
            settings=dict(raw.get("settings") or {}),
            notes=tuple(raw.get("notes") or ()),
        )
    return tables


def paper_table(name: str) -> PaperTable:
    """A table by its numeral (`V`, `v`, `Table V` all work); a one-line error names the choices."""
    key = name.strip().upper().removeprefix("TABLE").strip()
    tables = paper_tables()
    if key not in tables:
        raise ValueError(f"--paper {name!r}: the package has the paper's Tables {', '.join(tables)}; pass one of them")
    return tables[key]


def table_for_experiments(experiments: set[str]) -> PaperTable | None:
    """The table an `experiment=paper/*` sweep reproduces, when its jobs name exactly one."""
    found = {
        table.name
        for table in paper_tables().values()
        for experiment in experiments
        if any(fnmatch.fnmatchcase(experiment, pattern) for pattern in table.experiments)
    }
    return paper_tables()[found.pop()] if len(found) == 1 else None
