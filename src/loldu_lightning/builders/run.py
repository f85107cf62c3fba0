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
from .adapter import build_run_adapter
from .loggers import RunContext, check_logger_packages, run_context
from .plain import plain


@dataclass(frozen=True)
class Run:
    """One run as plain values: the composed config (resolved, dicts and lists), where it writes, how
    it resumes, and its adapter."""

    config: dict[str, Any]
    output_dir: Path
    seed: int
    task: Mapping[str, Any]
    ckpt_path: str | None  # as requested (null, `last` or a file); train.py resolves it
    auto_resume: bool
    allow_changes: list[str]  # +resume.allow_changes: keys a resume may change on purpose
    adapter: Adapter
    base_model: str  # the base model's name in adapter files
    context: RunContext  # alone, or a job of a sweep (Hydra's runtime)

    @cached_property
    def defining(self) -> dict[str, Any]:
        """The flattened keys that define the run (checkpoints.DEFINING): what a resume must match."""
        return defining_config(self.config)


def in_sweep_or_requeued() -> bool:
    """A job of a `-m` sweep, or a SLURM job that was requeued."""
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return in_sweep or int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0


def auto_resume(config: Mapping[str, Any]) -> bool:
    """`resume.auto`: null means on for the jobs of a sweep (-m) and for a SLURM job that was requeued."""
    auto = (config.get("resume") or {}).get("auto")
    return bool(auto) if auto is not None else in_sweep_or_requeued()


def build_run(cfg: Mapping[str, Any]) -> Run:
    """The composed config converted once, the adapter built, and a configured tracker's package
    checked (a missing one fails here, before any model loads)."""
    config = plain(cfg)
    adapter = build_run_adapter(config)
    check_logger_packages(config.get("logger"))
    return Run(
        config=config,
        output_dir=Path(config["output_dir"]),
        seed=config["seed"],
        task=config["task"],
        ckpt_path=config.get("ckpt_path"),
        auto_resume=auto_resume(config),
        allow_changes=list((config.get("resume") or {}).get("allow_changes") or []),
        adapter=adapter,
        base_model=model_label(config["model"]),
        context=run_context(config["output_dir"]),
    )
