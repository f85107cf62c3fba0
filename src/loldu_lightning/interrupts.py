"""`RunInterrupted`: how a run stopped by a signal reports itself (kept free of heavy imports for the CLI)."""

from __future__ import annotations

import signal
from pathlib import Path


class RunInterrupted(BaseException):
    """A run stopped by a signal after saving a resumable checkpoint.

    A BaseException, like KeyboardInterrupt: a sweep must stop with its job instead of treating
    the interruption as one failed job and starting the next.
    """

    def __init__(self, signum: int, checkpoint: Path | None, requeued: bool):
        self.signum = signum
        self.checkpoint = checkpoint
        self.requeued = requeued
        self.resume_command: str | None = None  # set by the CLI, which knows how the run was started
        name = signal.Signals(signum).name
        where = f"; resumable checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"{name} received{where}{'; the SLURM job was requeued' if requeued else ''}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)
