"""Helpers shared by the application tests: compose the packaged configs like the CLI does."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from loldu_lightning.config import config_dir

# tiny model, a few batches: a full train() on 2 CPU cores in seconds
TINY_GLUE = [
    "model=tiny-roberta",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "data.train_limit=64",
    "data.val_limit=32",
    "data.batch_size=16",
    "data.max_length=64",
    "adapter.rank=8",
    "adapter.alpha=8",
    "callbacks.lr_monitor=false",
    "trainer.log_every_n_steps=1",
]


def compose_config(overrides: list[str], output_dir: Path | None = None):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=unused"]
        return compose("config", overrides=[*overrides, *extra])


def list_config_options(group: str) -> list[str]:
    root = Path(config_dir()) / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


class StopAfterFirstEpoch(L.Callback):
    """Simulates an interrupted run: stops cleanly after epoch 0, as a killed job would leave it."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True
