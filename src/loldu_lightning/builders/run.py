"""What `train()` needs from the composed config, read once: the `Run`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from ..adapters import Adapter
from ..checkpoints import defining_config
from ..models import model_label
from ..options import RunOptions, TaskOptions
from .adapter import run_adapter
from .loggers import RunContext, check_logger_packages, run_context
from .plain import plain
from .schema import run_options


@dataclass(frozen=True)
class Run:
    """One run: its options as typed objects, the composed config as plain values (the run's record,
    and the untyped nodes: `model`, `logger`), where it writes, how it resumes, and its adapter."""

    options: RunOptions
    config: dict[str, Any]
    output_dir: Path
    auto_resume: bool
    adapter: Adapter
    base_model: str  # the base model's name in adapter files
    context: RunContext  # alone, or a job of a sweep (Hydra's runtime)

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def task(self) -> TaskOptions:
        return self.options.task

    @property
    def ckpt_path(self) -> str | None:
        """As requested (null, `last` or a file); train.py resolves it."""
        return self.options.ckpt_path

    @property
    def allow_changes(self) -> list[str]:
        """`+resume.allow_changes`: keys a resume may change on purpose."""
        return list(self.options.resume.allow_changes or [])

    @cached_property
    def defining(self) -> dict[str, Any]:
        """The flattened keys that define the run (checkpoints.DEFINING): what a resume must match."""
        return defining_config(self.config)


def in_sweep_or_requeued() -> bool:
    """A job of a `-m` sweep, or a SLURM job that was requeued."""
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return in_sweep or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def auto_resume(auto: bool | None) -> bool:
    """`resume.auto`: null means on for the jobs of a sweep (-m) and for a SLURM job that was requeued."""
    return bool(auto) if auto is not None else in_sweep_or_requeued()


def build_run(cfg: Mapping[str, Any], options: RunOptions | None = None) -> Run:
    """The composed config read once into typed options (unless `options` are given, as `train()`
    does after validating) and converted once to plain values, the adapter built, and a configured
    tracker's package checked (a missing one fails here, before any model loads)."""
    options = options if options is not None else run_options(cfg)
    config = plain(cfg)
    # the untyped `logger` node passes on whole (each tracker has its own keys)
    check_logger_packages(config.get("logger"))
    return Run(
        options=options,
        config=config,
        output_dir=Path(options.output_dir),
        auto_resume=auto_resume(options.resume.auto),
        adapter=run_adapter(options),
        base_model=model_label(options.model),
        context=run_context(options.output_dir),
    )
