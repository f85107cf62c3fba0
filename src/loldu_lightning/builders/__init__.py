"""The composition root: the only code that reads the composed Hydra config.

`train(cfg)` hands the composed config here; it is read once into typed options
(`schema.run_options`: every option with its type, default and range) and converted once to plain
dicts and lists (`plain.py`) for the nodes that pass on whole (`logger`, `_target_` nodes, the adapter,
the run's record); each module turns its part into plain objects:

- `run.py`: the `Run` (output folder, seed, resume settings, the adapter, Hydra's runtime)
- `adapter.py`: the adapter's options, module names translated by the model's aliases
- `glue.py`, `vision.py`, `instruct.py`, `diffusion.py`: one task family each, (LightningModule, DataModule)
- `callbacks.py`: the run's callbacks and the in-epoch step checkpoints
- `trainer.py`: Trainer keyword arguments
- `loggers.py`: experiment trackers and the tracking callback
- `schema.py`: the typed option schemas (validation, `--help`)

The family builders are imported when a run of that family is built, so that a GLUE run imports
neither torchvision's datasets nor diffusers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def _family(module: str, function: str) -> Callable:
    def build(cfg: Mapping[str, Any], options: Any = None):
        return getattr(importlib.import_module(f".{module}", __name__), function)(cfg, options)

    build.__name__ = function
    return build


TASK_FAMILIES: dict[str, Callable] = {
    "glue": _family("glue", "build_glue"),
    "vision": _family("vision", "build_vision"),
    "instruct": _family("instruct", "build_instruct"),
    "diffusion": _family("diffusion", "build_diffusion"),
}


def build_task(cfg: Mapping[str, Any], options: Any = None):
    """(LightningModule, LightningDataModule) of the config's `task.family`.

    `options` are the config's typed options (`schema.run_options(cfg)`), read here when not given."""
    if options is None:
        from .schema import run_options

        options = run_options(cfg)
    return TASK_FAMILIES[options.task.family](cfg, options)
