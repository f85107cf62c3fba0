"""Test-only pieces for killing runs at a known point (tests/test_fault_tolerance.py).

`SlowFrom` is added to a CLI run with `+callbacks.extra.slow={_target_:tests.fault_helpers.SlowFrom,...}`
(the repository root on PYTHONPATH, helpers.cli_env): from global step `step` on it writes `marker` and
slows each batch down, so a test can send a signal while the run is known to be inside an epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class SlowFrom(L.Callback):
    def __init__(self, step: int, marker: str, delay_s: float = 0.5):
        self.step = step
        self.marker = Path(marker)
        self.delay_s = delay_s

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            self.marker.write_text(str(trainer.global_step))
            time.sleep(self.delay_s)


class RecordStart(L.Callback):
    """Appends the global step each training start begins at to `path`, one line per process: a resumed
    run that silently started over would still end equal to the uninterrupted one, this tells them apart."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module) -> None:
        with self.path.open("a") as file:
            file.write(f"{trainer.global_step}\n")
