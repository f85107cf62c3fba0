"""Columns from a run's eval.json (written by `python -m loldu_lightning.evaluate ...`) for the runs table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

EVAL_FILE = "eval.json"  # the same name as loldu_lightning.evaluate.EVAL_FILE (not imported: evaluate pulls torch)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else math.nan


def eval_columns(run_dir: Path) -> dict[str, float]:
    """`eval.<evaluation>.<metric>` (and `eval.<evaluation>.<task>.<metric>` for lm-eval's per-task results)
    for every number in `<run_dir>/eval.json`; {} when the run was not evaluated or the file is unreadable."""
    path = Path(run_dir) / EVAL_FILE
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    columns: dict[str, float] = {}
    for evaluation, results in document.items() if isinstance(document, dict) else ():
        if not isinstance(results, dict):
            continue
        for key, value in results.items():
            if key == "tasks" and isinstance(value, dict):
                for task, metrics in value.items():
                    for metric, number in (metrics or {}).items():
                        if _number(number) is not None:
                            columns[f"eval.{evaluation}.{task}.{metric}"] = _number(number)
            elif _number(value) is not None:
                columns[f"eval.{evaluation}.{key}"] = _number(value)
    return columns
