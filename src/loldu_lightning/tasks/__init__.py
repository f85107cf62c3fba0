"""Task families: each builder turns the composed config into (LightningModule, LightningDataModule)."""

from __future__ import annotations

from collections.abc import Callable

from .glue import build_glue


def _build_vision(cfg):
    from .vision import build_vision  # torchvision datasets are only imported for vision runs

    return build_vision(cfg)


def _build_diffusion(cfg):
    from .diffusion import build_diffusion  # diffusers is only imported for diffusion runs

    return build_diffusion(cfg)


def _build_instruct(cfg):
    from .instruct import build_instruct  # causal-LM instruction tuning (Alpaca)

    return build_instruct(cfg)


TASK_FAMILIES: dict[str, Callable] = {
    "glue": build_glue,
    "vision": _build_vision,
    "instruct": _build_instruct,
    "diffusion": _build_diffusion,
}


def build_task(cfg):
    family = cfg.task.family
    if family not in TASK_FAMILIES:
        raise ValueError(f"Unknown task family {family!r} (task.family); choose one of {sorted(TASK_FAMILIES)}.")
    return TASK_FAMILIES[family](cfg)
