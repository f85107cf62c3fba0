"""`python -m loldu_lightning` / `loldu`: parse the Hydra config and call train(cfg).

A user error (cli/errors.py) is printed as one line, `error: ...`, with exit status 2; a bug keeps its
traceback. A single run's config is checked before Hydra starts the job, so a bad value, a missing
folder, an unreachable hub or a rank the model cannot take is reported within seconds and before
any run folder, weights or data. In a sweep, each job checks its own config; a failed job records
its message in its metrics.json and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .cli.config import config_dir, register_resolvers, validate_config
from .cli.errors import exit_on_user_error, full_error_requested, user_error_message
from .cli.hydra_ddp import child_arguments, export_current_job
from .cli.overrides import add_declared_options, check_override_keys, compose_single_run
from .cli.preflight import preflight
from .cli.resume_hint import resume_command
from .interrupts import RunInterrupted

log = logging.getLogger(__name__)

# main()'s check of a single run: its config without the run folder, and the typed options read from
# it; the job Hydra then starts takes these options rather than reading the same config again
_CHECKED_RUN: dict[str, object] = {}


def _app_config(cfg: DictConfig) -> dict:
    """The config as composed, without `output_dir` (the run folder Hydra decides when the job starts)."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("output_dir", None)
    return config


def _job_options(cfg: DictConfig, multirun: bool):
    """The typed options of this job: main()'s, when it checked this same single run, with the job's run
    folder; else read (and checked before anything loads: paths, hub, model files, rank) here."""
    checked = _CHECKED_RUN.get("options")
    if not multirun and checked is not None and _CHECKED_RUN.get("config") == _app_config(cfg):
        return dataclasses.replace(checked, output_dir=str(cfg.output_dir))
    options = validate_config(cfg)
    preflight(cfg, options)
    return options


def _record_failure(cfg: DictConfig, error: BaseException) -> None:
    """A metrics.json for a job that failed before train() wrote one (its config was refused)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    path = Path(cfg.output_dir) / "metrics.json"
    if path.exists() or rank_zero_only.rank != 0:
        return
    payload = {
        "status": "failed",
        "error": f"{type(error).__name__}: {user_error_message(error)}",
        "task": f"{cfg.task.family}/{cfg.task.name}",
        "adapter": cfg.adapter.get("name"),
        "seed": cfg.get("seed"),
        "monitor": cfg.task.monitor,
        "mode": cfg.task.mode,
        "objective": None,
        "best": {},
        "final": {},
        "params": {},
        "time_s": None,
        "output_dir": str(cfg.output_dir),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from .train import train

    register_resolvers()  # a launcher (submitit, joblib) may run this job in a process that skipped main()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    export_current_job()  # DDP ranks 1..N-1 re-run exactly this job (cli/hydra_ddp.py)
    try:
        # per job: a sweep's jobs differ (a single run's config was checked in main() already)
        result = train(cfg, _job_options(cfg, multirun))
    except RunInterrupted as interruption:
        interruption.resume_command = resume_command(multirun)
        raise
    except Exception as error:
        message = user_error_message(error)
        if message is not None:
            _record_failure(cfg, error)
        if not multirun:
            exit_on_user_error(error)
            raise
        # One failed job must not end a sweep: its metrics.json records the error for the report.
        if message is not None and not full_error_requested():
            log.error("error: %s", message)
        else:
            log.exception("job failed; the sweep goes on (see its metrics.json)")
        return math.nan
    return result["objective"]


def check_command_line(args: list[str]) -> None:
    """Everything about a command line that can be refused before Hydra starts a job."""
    try:
        cfg = compose_single_run(args)
    except Exception:
        check_override_keys(args)  # a misspelt key: name the keys that exist, rather than Hydra's message
        raise
    if cfg is None:  # a sweep: its jobs are checked one by one in _run; a misspelt key fails them all
        check_override_keys(args)
        return
    options = validate_config(cfg)
    preflight(cfg, options)
    _CHECKED_RUN.update(config=_app_config(cfg), options=options)


def main() -> None:
    register_resolvers()
    # a listed option the composed config leaves out (trainer.max_steps) is set as key=value too
    sys.argv[1:] = add_declared_options(child_arguments(sys.argv[1:]))
    try:
        check_command_line(sys.argv[1:])
    except Exception as error:
        exit_on_user_error(error)
        raise
    try:
        _run()
    except RunInterrupted as interruption:
        # a signal, not an error: the checkpoint is saved; say how to continue, exit 128 + signal number
        print(f"interrupted: {interruption}", file=sys.stderr)
        if getattr(interruption, "resume_command", None):
            print(f"resume with: {interruption.resume_command}", file=sys.stderr)
        sys.exit(interruption.exit_code)


if __name__ == "__main__":
    main()
