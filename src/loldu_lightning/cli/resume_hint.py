"""The command that resumes an interrupted run or sweep, printed when a signal stops it."""

from __future__ import annotations

import shlex
import sys

from hydra.core.hydra_config import HydraConfig

# Overrides the resume command sets itself.
_REPLACED = ("hydra.run.dir=", "hydra.sweep.dir=", "ckpt_path=", "-m", "--multirun")


def resume_command(multirun: bool, argv: list[str] | None = None) -> str:
    """`python -m loldu_lightning ...` that continues this job (inside a Hydra job only).

    A single run resumes its own folder with `ckpt_path=last`; a sweep is started again over its
    sweep folder, where finished jobs are skipped and interrupted ones resume (`resume.auto`).
    """
    hydra_cfg = HydraConfig.get()
    args = [arg for arg in (sys.argv[1:] if argv is None else argv) if not arg.startswith(_REPLACED)]
    if multirun:
        tail = ["-m", *args, f"hydra.sweep.dir={hydra_cfg.sweep.dir}"]
    else:
        tail = [*args, f"hydra.run.dir={hydra_cfg.runtime.output_dir}", "ckpt_path=last"]
    return shlex.join(["python", "-m", "loldu_lightning", *tail])
