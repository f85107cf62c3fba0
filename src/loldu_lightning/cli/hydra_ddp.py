"""Hydra multirun x Lightning DDP: each sweep job runs once, with all its ranks.

Lightning's DDP/FSDP launcher (`_SubprocessScriptLauncher`) starts ranks 1..N-1 by re-running the
current command: `sys.argv` plus `hydra.run.dir=<run dir>` (`_hydra_subprocess_cmd` in
`lightning/fabric/strategies/launchers/subprocess_script.py`, Lightning 2.6). Under `-m` that command
is the whole sweep, so every child process runs every job of the sweep again, in a second sweep
folder (measured: `-m adapter.init=uniform,normal trainer=ddp trainer.devices=2` made a second sweep
folder). A fix in Lightning (pull request 18175) is still open.

The launcher copies the environment into the children, so the parent job leaves its own overrides
and output folder there, and a child (LOCAL_RANK > 0) replaces the inherited sweep command line by
exactly that one job. The children join the parent's process group as before; nothing else about
Lightning's launcher changes. A single run works the same way (the rewrite is then equivalent to
Lightning's own command).
"""

from __future__ import annotations

import json
import os

from hydra.core.hydra_config import HydraConfig

JOB_ENV = "LOLDU_HYDRA_JOB"


def export_current_job() -> None:
    """Record the running Hydra job (its overrides and output folder) for DDP child processes."""
    hydra_cfg = HydraConfig.get()
    os.environ[JOB_ENV] = json.dumps(
        {"overrides": list(hydra_cfg.overrides.task), "output_dir": hydra_cfg.runtime.output_dir}
    )


def child_arguments(argv: list[str]) -> list[str]:
    """The command-line arguments this process should run: `argv`, or the parent's one job in a DDP child."""
    local_rank = os.environ.get("LOCAL_RANK", "0")
    job = os.environ.get(JOB_ENV)
    if local_rank == "0" or job is None:
        return argv
    job = json.loads(job)
    # output_subdir=null: the parent job already wrote .hydra/; the child logs to train_ddp_process_<rank>.log
    return [
        *config_options(argv),
        *job["overrides"],
        f'hydra.run.dir="{job["output_dir"]}"',
        "hydra.output_subdir=null",
        f"hydra.job.name=train_ddp_process_{local_rank}",
    ]


_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def config_options(argv: list[str]) -> list[str]:
    """Hydra's options that choose the config (`-cn name`, `--config-dir=dir`, ...): the child needs them too."""
    kept: list[str] = []
    for index, arg in enumerate(argv):
        flag = arg.split("=", 1)[0]
        if flag in _CONFIG_FLAGS:
            kept += [arg] if "=" in arg or index + 1 == len(argv) else [arg, argv[index + 1]]
    return kept
