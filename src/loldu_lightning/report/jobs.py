"""Find the jobs of a Hydra multirun directory and read what each one left behind."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf

HYDRA_DIR = ".hydra"
METRICS_FILE = "metrics.json"
# Hydra's default layout puts jobs directly under the sweep dir; a custom `hydra.sweep.subdir`
# such as `${adapter.name}/${hydra.job.num}` adds one level.
MAX_JOB_DEPTH = 2

_PARSER = OverridesParser.create()


@dataclass(frozen=True)
class Job:
    """One job directory: its overrides, its composed config and its metrics (if it finished)."""

    path: Path
    name: str
    overrides: tuple[str, ...]
    values: dict[str, Any] = field(default_factory=dict)
    config: DictConfig | None = None
    metrics: dict[str, Any] | None = None
    metrics_error: str | None = None

    def resolve(self, key: str) -> Any:
        """Value of a config key for this job: the override when given, else the composed config."""
        if key in self.values:
            return self.values[key]
        if self.config is None:
            return None
        value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
        return plain_value(value)


def natural_key(name: str) -> list[Any]:
    """Sort key that puts job `10` after job `9`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def plain_value(value: Any) -> Any:
    """A hashable, comparable scalar for a config value (groups collapse to their `name`)."""
    if isinstance(value, DictConfig):
        if "name" in value:
            return plain_value(OmegaConf.select(value, "name", throw_on_resolution_failure=False))
        return json.dumps(OmegaConf.to_container(value, resolve=False), sort_keys=True)
    if isinstance(value, ListConfig):
        return json.dumps(OmegaConf.to_container(value, resolve=False))
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Every directory up to MAX_JOB_DEPTH below `sweep_dir` that holds a `.hydra/` folder."""
    found: list[Path] = []
    frontier = [sweep_dir]
    for _ in range(MAX_JOB_DEPTH):
        next_frontier: list[Path] = []
        for parent in frontier:
            for child in sorted(parent.iterdir(), key=lambda p: natural_key(p.name)):
                if not child.is_dir() or child.name.startswith("."):
                    continue
                if (child / HYDRA_DIR).is_dir():
                    found.append(child)
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found, key=lambda p: natural_key(p.relative_to(sweep_dir).as_posix()))


def parse_overrides(overrides: list[str], source: Path) -> dict[str, Any]:
    """Map `key -> typed value` for Hydra override strings (`+k=v`, `k@pkg=v`, `~k` included)."""
    values: dict[str, Any] = {}
    for text in overrides:
        try:
            override = _PARSER.parse_override(text)
        except Exception as exc:  # Hydra raises its own OverrideParseException subclasses
            raise ValueError(f"{source}: cannot parse override {text!r}: {exc}") from exc
        key = override.key_or_group if override.package is None else f"{override.key_or_group}@{override.package}"
        values[key] = None if override.is_delete() else plain_value(override.value())
    return values


def _read_overrides(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return ()
    loaded = yaml.safe_load(path.read_text()) or []
    if not isinstance(loaded, list) or not all(isinstance(item, str) for item in loaded):
        raise ValueError(f"{path}: expected a YAML list of override strings like 'adapter.init=uniform'")
    return tuple(loaded)


def _read_metrics(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """Parsed metrics.json, or why it could not be read (a job killed while writing it)."""
    if not path.is_file():
        return None, None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"unreadable {METRICS_FILE}: {exc}"
    if not isinstance(metrics, dict):
        return None, f"unreadable {METRICS_FILE}: expected a JSON object, got {type(metrics).__name__}"
    return metrics, None


def read_job(sweep_dir: Path, job_dir: Path) -> Job:
    """Load one job directory; a missing metrics.json is recorded, not an error."""
    overrides_path = job_dir / HYDRA_DIR / "overrides.yaml"
    overrides = _read_overrides(overrides_path)
    config_path = job_dir / HYDRA_DIR / "config.yaml"
    config = OmegaConf.load(config_path) if config_path.is_file() else None
    if config is not None and not isinstance(config, DictConfig):
        raise ValueError(f"{config_path}: expected a mapping (Hydra's composed job config)")
    metrics, metrics_error = _read_metrics(job_dir / METRICS_FILE)
    return Job(
        path=job_dir,
        name=job_dir.relative_to(sweep_dir).as_posix(),
        overrides=overrides,
        values=parse_overrides(list(overrides), overrides_path),
        config=config,
        metrics=metrics,
        metrics_error=metrics_error,
    )


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """All jobs of a multirun directory, in job order."""
    from ..cli.config_tree import register_value_resolvers

    register_value_resolvers()  # the jobs' configs hold the tree's own interpolations (${glue_dir:...})
    root = Path(sweep_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"sweep directory {root} does not exist; pass the Hydra multirun directory "
            "(the one holding multirun.yaml and one sub-directory per job)"
        )
    if not root.is_dir():
        raise ValueError(f"{root} is a file; pass the Hydra multirun directory that holds the job sub-directories")
    job_dirs = find_job_dirs(root)
    if not job_dirs and (root / HYDRA_DIR).is_dir():
        job_dirs = [root]  # a single (non-multirun) Hydra run directory
    if not job_dirs:
        raise FileNotFoundError(
            f"no job directories in {root}: expected sub-directories (up to {MAX_JOB_DEPTH} levels deep) "
            f"holding a {HYDRA_DIR}/ folder, as written by `python -m loldu_lightning -m ...`"
        )
    return [read_job(root, job_dir) for job_dir in job_dirs]


def config_notes(jobs: list[Job]) -> list[str]:
    """The distinct `report_note` values of the jobs' configs, in first-seen order.

    An experiment config sets `report_note` to say what a reader of its table must know (e.g.
    that Table I's baselines were re-run under another schedule than the paper's sources).
    """
    notes: dict[str, None] = {}
    for job in jobs:
        note = job.resolve("report_note")
        if isinstance(note, str) and note.strip():
            notes.setdefault(" ".join(note.split()), None)
    return list(notes)
