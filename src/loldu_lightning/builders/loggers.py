"""Experiment trackers from `logger`: package check, sweep-aware defaults, the tracking callback.

It reads the `Run` (typed options, the plain `logger` node) and Hydra's runtime (`run_context`: a sweep job or not);
`callbacks/tracking.py` does the logging itself with plain values. A value left `null` in `conf/logger/*.yaml` is filled here:

- MLflow: `tracking_uri` -> `sqlite:///<group folder>/mlflow.db` with artifacts in
  `<group folder>/mlartifacts`; `experiment_name` -> the sweep folder in a `-m` sweep (one MLflow
  experiment per sweep), else `<task family>/<task name>`; `run_name` -> `<task>-<adapter>[-<job>]`.
- W&B: `group` -> the sweep folder in a `-m` sweep (every job of a sweep in one W&B group); `name`
  as MLflow's run name.

The group folder is the sweep folder (`hydra.sweep.dir`) in a sweep, else the run folder, so one
store holds every job of a sweep and `mlflow ui` on it compares them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger

from ..callbacks.tracking import TrackingCallback
from ..cli.errors import UserError

if TYPE_CHECKING:
    from .run import Run


class MissingTrackerPackage(UserError, ModuleNotFoundError):
    """A configured logger's package is not installed (the CLI prints it as one `error:` line)."""


# Logger class name (the end of `_target_`) -> modules of which one must import, and the extra that installs it.
REQUIRED_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "tracking"),
    "MLFlowLogger": (("mlflow",), "tracking"),
    "WandbLogger": (("wandb",), "tracking"),
}


def check_logger_packages(logger_cfg: Mapping[str, Any] | None) -> None:
    """Fail in a second, before any model loads, when a configured logger's package is not installed."""
    for key, node in (logger_cfg or {}).items():
        target = str(node.get("_target_", "")) if isinstance(node, Mapping) else ""
        modules, extra = REQUIRED_PACKAGES.get(target.rsplit(".", 1)[-1], ((), ""))
        if modules and not any(importlib.util.find_spec(module) is not None for module in modules):
            raise MissingTrackerPackage(
                f"logger={key} needs the `{modules[0]}` package, which is not installed: "
                f"pip install 'loldu-lightning[{extra}]' (or choose another logger, e.g. logger=csv)."
            )


@dataclass(frozen=True)
class RunContext:
    """Where this job stands: alone, or job `job_num` of the sweep in `sweep_dir`."""

    group_dir: Path  # the folder that holds every job's tracking store: sweep folder, else run folder
    sweep_dir: str | None
    job_num: int | None
    overrides: tuple[str, ...]


def run_context(output_dir: str | Path) -> RunContext:
    """Read once per run from Hydra's runtime config (the only reader of it besides the CLI)."""
    output_dir = Path(output_dir).resolve()
    if not HydraConfig.initialized():  # train(cfg) from a test or notebook: the run folder alone
        return RunContext(output_dir, None, None, ())
    hydra_cfg = HydraConfig.get()
    overrides = tuple(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return RunContext(output_dir, None, None, overrides)
    return RunContext(Path(hydra_cfg.sweep.dir).resolve(), str(hydra_cfg.sweep.dir), int(hydra_cfg.job.num), overrides)


def _run_name(run: Run) -> str:
    name = f"{run.task.name}-{run.options.adapter_name}"
    return name if run.context.job_num is None else f"{name}-{run.context.job_num}"


def _tags(run: Run) -> dict[str, str]:
    context = run.context
    tags = {"task": f"{run.task.family}/{run.task.name}", "adapter": run.options.adapter_name}
    tags["output_dir"] = str(run.output_dir.resolve())
    if context.sweep_dir is not None:
        tags.update(sweep=context.sweep_dir, job_num=str(context.job_num))
    return tags


def logger_options(run: Run) -> dict[str, dict[str, Any]]:
    """`logger` with the `null` values this module owns filled in (see the module docstring).

    `logger` is untyped (each tracker takes its own keys): its nodes are read as plain `_target_`
    mappings from the run's converted config and passed on to Hydra's instantiate."""
    context = run.context
    # a copy: the filled-in values belong to the trackers, not to the run's config
    options: dict[str, dict[str, Any]] = copy.deepcopy(dict(run.config.get("logger") or {}))
    for node in options.values():
        kind = str(node.get("_target_", "")).rsplit(".", 1)[-1]
        if kind == "MLFlowLogger":
            if not node.get("tracking_uri"):
                node["tracking_uri"] = f"sqlite:///{context.group_dir / 'mlflow.db'}"
                # the database holds metadata only; without this, artifacts go to ./mlruns of the working folder
                if not node.get("artifact_location"):
                    node["artifact_location"] = (context.group_dir / "mlartifacts").as_uri()
            if not node.get("experiment_name"):
                node["experiment_name"] = context.sweep_dir or f"{run.task.family}/{run.task.name}"
            node["run_name"] = node.get("run_name") or _run_name(run)
            node["tags"] = {**_tags(run), **(node.get("tags") or {})}
        elif kind == "WandbLogger":
            node["name"] = node.get("name") or _run_name(run)
            if not node.get("group") and context.sweep_dir is not None:
                node["group"] = context.sweep_dir
            node["job_type"] = node.get("job_type") or "train"
    return options


def build_loggers(run: Run) -> list[Logger]:
    return [instantiate(node) for node in logger_options(run).values()]


def _flatten(value: Any, prefix: str, into: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), into)
    elif isinstance(value, (list, tuple)):
        # one value per list: trackers compare runs by parameter, and a list is one setting (target modules)
        into[prefix] = json.dumps(value)
    else:
        into[prefix] = value
    return into


def config_hyperparameters(run: Run) -> dict[str, Any]:
    """The composed config (the run's plain record, every node) flattened with the override syntax's
    dotted keys (`adapter.rank`), plus the job's command-line overrides and sweep, so a tracker's
    table reads like the command."""
    context = run.context
    params = _flatten(run.config, "", {})
    params["job.overrides"] = " ".join(context.overrides)
    if context.sweep_dir is not None:
        params.update({"job.sweep_dir": context.sweep_dir, "job.num": context.job_num})
    return params


def build_tracking(run: Run) -> TrackingCallback:
    return TrackingCallback(config_hyperparameters(run))
