"""Config helpers shared by the CLI and `train(cfg)`: resolvers and early validation.

Validation runs before any model or dataset loads, so a typo costs a second, not a download.
"""

from __future__ import annotations

import inspect
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from .adapters import Adapter


def package_path(relative: str) -> str:
    """Absolute path of a file shipped inside the package (the quickstart data)."""
    return str(resources.files("loldu_lightning").joinpath(relative))


def config_dir() -> str:
    """Absolute path of the Hydra config tree.

    The tree lives at the repository root (`conf/`). A wheel carries it as the `loldu_lightning.conf`
    package directory; an editable install has no copy inside the package, so it reads the root folder.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"The config tree was found neither in {package / 'conf'} (an installed wheel) nor in "
        f"{package.parents[1] / 'conf'} (a source checkout); reinstall with `pip install -e .` or from a wheel."
    )


def glue_dir(root: str | None, task_folder: str) -> str | None:
    """`data.glue_root` + a task's folder name, so one override serves every GLUE task (and task sweeps)."""
    return None if root in (None, "", "null") else str(Path(root).expanduser() / task_folder)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("glue_dir"):
        OmegaConf.register_new_resolver("glue_dir", glue_dir)
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)


register_resolvers()

_TRAINER_KEYS = frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def _choice(value: Any, allowed, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {sorted(allowed)}.")


def validate_config(cfg: DictConfig) -> Adapter:
    """Check the values that Hydra's composition cannot (registry names, Trainer options, adapter
    options) and return the adapter the config describes, so a run validates and builds it once."""
    from .adapters import build_adapter
    from .models import alias_target_modules
    from .tasks import TASK_FAMILIES
    from .tasks.base import OPTIMIZERS, SCHEDULES

    _choice(cfg.task.family, TASK_FAMILIES, "task.family")
    _choice(cfg.optimizer.name, OPTIMIZERS, "optimizer.name")
    _choice(cfg.scheduler.name, set(SCHEDULES) | {"none"}, "scheduler.name")
    _choice(cfg.task.mode, {"max", "min"}, "task.mode")
    unknown = set(cfg.trainer) - _TRAINER_KEYS
    if unknown:
        raise ValueError(
            f"Unknown trainer option(s) {sorted(unknown)}; lightning.Trainer accepts: "
            f"{', '.join(sorted(_TRAINER_KEYS))}."
        )
    adapter_cfg = OmegaConf.to_container(cfg.adapter, resolve=True)
    return build_adapter(alias_target_modules(adapter_cfg, cfg.model.get("target_module_aliases")))
