"""A one-node SLURM cluster for the tests, started and stopped with scripts/slurm_local_cluster.sh.

`local_slurm()` is a context manager: the cluster is stopped (its jobs cancelled, slurmd, slurmctld
and munged killed) when the block ends, whatever ends it. `skip_reason()` says why a machine cannot
run one, so the tests skip with that reason instead of failing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local_cluster.sh"
TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo")


def skip_reason() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"SLURM and munge not found ({', '.join(missing)} not on PATH): as root, apt-get install -y slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root; these tests need root"
    return None


@dataclass
class LocalSlurm:
    folder: Path

    @property
    def env(self) -> dict[str, str]:
        """What every SLURM command needs; jobs inherit it from sbatch (--export=ALL)."""
        return {"SLURM_CONF": str(self.folder / "slurm.conf")}

    def command(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{shlex.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def sbatch(self, script: Path, *options: str) -> str:
        """Submit `script`; its job id."""
        return self.command("sbatch", "--parsable", *options, str(script)).strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, NodeList...)."""
        text = self.command("scontrol", "show", "job", "--oneliner", job_id)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait(self, job_id: str, states: set[str], timeout_s: float = 300) -> dict[str, str]:
        """Wait until the job is in one of `states`; its record."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.job(job_id)
            if record.get("JobState") in states:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {record.get('JobState')} after {timeout_s} s, not {states}")
            time.sleep(0.5)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


@contextlib.contextmanager
def local_slurm() -> Iterator[LocalSlurm]:
    # /tmp itself: the munge socket's path must stay under the 108 characters of a unix socket name
    folder = Path(tempfile.mkdtemp(prefix="loldu-slurm-", dir="/tmp"))
    # the daemons outlive this process: a SIGTERM (a CI timeout) must unwind through the `finally` below too
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        started = subprocess.run(
            ["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=120
        )
        print(started.stdout + started.stderr, file=sys.stderr)  # shown with -s and on failure
        if started.returncode != 0:
            raise RuntimeError(f"the local SLURM cluster did not start: {started.stderr.strip()[-2000:]}")
        yield LocalSlurm(folder)
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def job_script(folder: Path, args: list[str]) -> Path:
    """A batch script that runs the CLI with this test's Python (the project's venv) in place of the shell,
    so that a signal sent to the batch step (`scancel --batch`) reaches the run itself."""
    script = folder / "job.sh"
    script.write_text(f"#!/bin/sh\nexec {shlex.join([sys.executable, '-m', 'loldu_lightning', *args])}\n")
    script.chmod(0o755)
    return script
