"""The composition root: the only code that reads the composed Hydra config.

`train(cfg)` hands the composed config here; it is converted once to plain dicts and lists
(`plain.py`) and each module turns its part into plain objects:

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
    def build(cfg: Mapping[str, Any]):
        return getattr(importlib.import_module(f".{module}", __name__), function)(cfg)

    build.__name__ = function
    return build


TASK_FAMILIES: dict[str, Callable] = {
    "glue": _family("glue", "build_glue"),
    "vision": _family("vision", "build_vision"),
    "instruct": _family("instruct", "build_instruct"),
    "diffusion": _family("diffusion", "build_diffusion"),
}


def build_task(cfg: Mapping[str, Any]):
    """(LightningModule, LightningDataModule) of the config's `task.family`."""
    family = cfg["task"]["family"]
    if family not in TASK_FAMILIES:
        raise ValueError(f"Unknown task family {family!r} (task.family); choose one of {sorted(TASK_FAMILIES)}.")
    return TASK_FAMILIES[family](cfg)
