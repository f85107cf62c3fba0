"""Config helpers shared by the CLI and `train(cfg)`: resolvers and early validation.

Validation runs before any model or dataset loads, so a typo costs a second, not a download.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
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


def auto_precision(accelerator: str, gpu_precision: str) -> str:
    """trainer=auto's precision: `gpu_precision` on a CUDA GPU (16-mixed where bf16 is missing), else float32.

    Decided when the config is resolved, on the machine that trains, so one config serves both.
    """
    import torch

    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return "32-true"
    if gpu_precision.startswith("bf16") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "16-mixed"
    return gpu_precision


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("glue_dir"):
        OmegaConf.register_new_resolver("glue_dir", glue_dir)
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    if not OmegaConf.has_resolver("help_config_groups"):
        from .help_text import config_groups

        OmegaConf.register_new_resolver("help_config_groups", config_groups)


register_resolvers()

_TRAINER_KEYS = frozenset(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


@dataclass(frozen=True)
class Bounds:
    """The allowed values of one numeric option: its type, a lower (and upper) bound, whether null is allowed."""

    integer: bool
    minimum: float | None = None
    above: bool = False  # strictly greater than `minimum`
    maximum: float | None = None
    nullable: bool = False
    example: str = ""

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        limits = []
        if self.minimum is not None:
            limits.append(f"{'>' if self.above else '>='} {self.minimum:g}")
        if self.maximum is not None:
            limits.append(f"<= {self.maximum:g}")
        return f"{kind} {' and '.join(limits)}".strip() + (" (or null)" if self.nullable else "")

    def allows(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum


# Each numeric option the app reads, declared once: composition refuses a wrong type or an out-of-range
# value naming the key, before anything loads. A key the composed config lacks (another family's
# option, or a trainer key left to Lightning's default) is not checked.
VALUE_BOUNDS: dict[str, Bounds] = {
    "seed": Bounds(integer=True, minimum=0, example="42"),
    "optimizer.lr": Bounds(integer=False, minimum=0, above=True, example="1e-3"),
    "optimizer.head_lr": Bounds(integer=False, minimum=0, above=True, nullable=True, example="1e-3"),
    "optimizer.weight_decay": Bounds(integer=False, minimum=0, example="0.01"),
    "scheduler.warmup_ratio": Bounds(integer=False, minimum=0, maximum=1, example="0.06"),
    "scheduler.warmup_steps": Bounds(integer=True, minimum=0, nullable=True, example="100"),
    "data.batch_size": Bounds(integer=True, minimum=1, example="32"),
    "data.eval_batch_size": Bounds(integer=True, minimum=1, example="64"),
    "data.max_length": Bounds(integer=True, minimum=1, example="128"),
    "data.num_workers": Bounds(integer=True, minimum=0, example="4"),
    "data.train_limit": Bounds(integer=True, minimum=1, nullable=True, example="1000"),
    "data.val_limit": Bounds(integer=True, minimum=1, nullable=True, example="500"),
    "trainer.max_epochs": Bounds(integer=True, minimum=-1, nullable=True, example="3 (-1: no limit)"),
    "trainer.max_steps": Bounds(integer=True, minimum=-1, example="1000 (-1: no limit)"),
    "trainer.accumulate_grad_batches": Bounds(integer=True, minimum=1, example="4"),
    "trainer.gradient_clip_val": Bounds(integer=False, minimum=0, nullable=True, example="1.0"),
    "trainer.log_every_n_steps": Bounds(integer=True, minimum=1, example="10"),
    "checkpoint.save_top_k": Bounds(integer=True, minimum=-1, example="1 (-1: all)"),
}
_ABSENT = object()


def check_values(cfg: DictConfig) -> None:
    """Refuse the first value of VALUE_BOUNDS that has the wrong type or lies out of range."""
    for key, bounds in VALUE_BOUNDS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or bounds.allows(value):
            continue
        raise ValueError(
            f"{key}={value!r} is not allowed: it must be {bounds.describe()}. Set e.g. {key}={bounds.example}"
        )


# Paths the user gives, checked before anything loads: key -> (a folder or a file, what it must hold).
# Paths that a run may create (vision's data.root with data.download=true) are not listed.
PATH_OPTIONS: dict[str, tuple[str, str]] = {
    "data.data_dir": (
        "folder",
        "the task's GLUE files (train.tsv, dev.tsv), e.g. data.data_dir=../shared/data/glue/SST-2",
    ),
    "data.path": ("file", "an Alpaca-style JSON or JSONL file, e.g. data.path=../shared/data/alpaca/alpaca_5000.json"),
}


def check_paths(cfg: DictConfig) -> None:
    """Refuse a path of PATH_OPTIONS that is set but missing (null means the option is not used)."""
    for key, (kind, holds) in PATH_OPTIONS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value in (None, ""):
            continue
        path = Path(str(value)).expanduser()
        if not (path.is_dir() if kind == "folder" else path.is_file()):
            found = (
                f"{path} is a {'file' if path.is_file() else 'folder'}" if path.exists() else f"{path} does not exist"
            )
            raise FileNotFoundError(f"{key}={value} is not a {kind}: {found}. Point {key} at {holds}.")


def _choice(value: Any, allowed, key: str) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not allowed; choose one of {sorted(allowed)}.")


def adapter_options(cfg: DictConfig) -> dict[str, Any]:
    """The adapter's options as plain values, module names translated by the model's aliases."""
    from .models import alias_target_modules

    return alias_target_modules(
        OmegaConf.to_container(cfg.adapter, resolve=True), cfg.model.get("target_module_aliases")
    )


def validate_config(cfg: DictConfig) -> Adapter:
    """Check the values that Hydra's composition cannot (registry names, value bounds, Trainer options,
    adapter options) and return the adapter the config describes, so a run validates and builds it once.

    Only the config is read here; what the config points at (paths, the hub, the model's shapes) is
    checked by preflight.preflight, which the CLI runs next.
    """
    from .adapters import build_adapter
    from .builders import TASK_FAMILIES
    from .tasks.base import OPTIMIZERS, SCHEDULES

    _choice(cfg.task.family, TASK_FAMILIES, "task.family")
    _choice(cfg.optimizer.name, OPTIMIZERS, "optimizer.name")
    _choice(cfg.scheduler.name, set(SCHEDULES) | {"none"}, "scheduler.name")
    _choice(cfg.task.mode, {"max", "min"}, "task.mode")
    check_values(cfg)
    unknown = set(cfg.trainer) - _TRAINER_KEYS
    if unknown:
        raise ValueError(
            f"Unknown trainer option(s) {sorted(unknown)}; lightning.Trainer accepts: "
            f"{', '.join(sorted(_TRAINER_KEYS))}."
        )
    return build_adapter(adapter_options(cfg))
