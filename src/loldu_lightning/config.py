"""Config helpers shared by the CLI and `train(cfg)`: where the config tree is, its resolvers, and
early validation (against the typed schemas of builders/schema.py).

Validation runs before any model or dataset loads, so a typo costs a second, not a download.
Importing this module registers nothing: the CLI entries, `validate_config` and the code that
composes configs call `register_resolvers()` (idempotent) before anything resolves a value.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


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
    """Make the config tree's own interpolations (`${glue_dir:...}`, `${auto_precision:...}`, the help
    text's listings) resolvable; calling it again does nothing."""
    if not OmegaConf.has_resolver("glue_dir"):
        OmegaConf.register_new_resolver("glue_dir", glue_dir)
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    if not OmegaConf.has_resolver("help_config_groups"):
        from .help_text import config_groups

        OmegaConf.register_new_resolver("help_config_groups", config_groups)
    if not OmegaConf.has_resolver("help_options"):
        from .help_text import help_options

        OmegaConf.register_new_resolver("help_options", help_options)


def validate_config(cfg: DictConfig) -> None:
    """Refuse, in one line naming the key, what Hydra's composition lets through: a value of the wrong
    type or out of range, a name no registry knows, a misspelt key inside a typed group, an adapter
    option its adapter does not take (builders/schema.py declares every option).

    Only the config is read here; what the config points at (paths, the hub, the model's shapes) is
    checked by preflight.preflight, which the CLI runs next. Registers the resolvers first, so a config
    composed in a notebook validates (and resolves) without the CLI.
    """
    from .builders.schema import run_options

    run_options(cfg)
