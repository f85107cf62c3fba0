"""The config tree: where it is, and the resolvers its own values use (`${glue_dir:...}`,
`${package_path:...}`, `${auto_precision:...}`).

A leaf of the package's import graph: the schema and converters of builders/, the command line and
evaluate/ (which resolves a run folder's config without the composition root) all read it, and it
imports none of them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf


def package_path(relative: str) -> str:
    """Absolute path of a file shipped inside the package (the quickstart data)."""
    return str(resources.files("loldu_lightning").joinpath(relative))


def config_dir() -> str:
    """Absolute path of the Hydra config tree.

    The tree lives at the repository root (`conf/`). A wheel carries it as the `loldu_lightning.conf`
    package directory; an editable install has no copy inside the package, so it reads the root folder.
    """
    package = Path(__file__).resolve().parents[1]  # cli/ -> loldu_lightning/
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


def register_value_resolvers() -> None:
    """Make the config tree's own value interpolations resolvable; calling it again does nothing."""
    if not OmegaConf.has_resolver("glue_dir"):
        OmegaConf.register_new_resolver("glue_dir", glue_dir)
    if not OmegaConf.has_resolver("package_path"):
        OmegaConf.register_new_resolver("package_path", package_path)
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
