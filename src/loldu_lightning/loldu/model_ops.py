"""Model-level LoLDU operations: inject, merge, unmerge, unload, enable, disable."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

from torch import nn

from .config import LoLDUConfig
from .layer import LoLDULinear
from .targeting import resolve_target_modules


def loldu_modules(model: nn.Module) -> Iterator[tuple[str, LoLDULinear]]:
    """``(qualified name, layer)`` for every LoLDU layer of the model, in model order."""
    for name, module in model.named_modules():
        if isinstance(module, LoLDULinear):
            yield name, module


def _require_adapters(model: nn.Module, action: str) -> list[tuple[str, LoLDULinear]]:
    layers = list(loldu_modules(model))
    if not layers:
        raise ValueError(f"LoLDU: cannot {action}: the model has no LoLDU layers; call inject(model, config) first")
    return layers


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, module)


def _refuse_existing_adapters(model: nn.Module) -> None:
    existing = [name for name, _ in loldu_modules(model)]
    if existing:
        raise ValueError(
            f"LoLDU: the model already has {len(existing)} LoLDU layer(s) (e.g. {existing[0]!r}); injecting twice "
            "would stack adapters. Call unload(model) first to start over."
        )


def base_weights(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    """The weight Parameter of each named (not yet wrapped) module."""
    return {name: model.get_submodule(name).weight for name in names}


def restore_base_weights(model: nn.Module, weights: dict[str, nn.Parameter]) -> None:
    """Put the original weight Parameters back (``storage: lu`` releases them when a layer is built)."""
    for name, weight in weights.items():
        module = model.get_submodule(name)
        if module.weight is not weight:
            module.weight = weight


def wrap_modules(model: nn.Module, config: LoLDUConfig, names: Sequence[str]) -> nn.Module:
    """Replace each named module by a ``LoLDULinear``, then freeze everything but z (and sigma)."""
    _refuse_existing_adapters(model)
    # Build every layer before touching the model, so a bad module leaves the model unchanged
    # (layers freeze their base layer when built, hence the saved flags; storage "lu" also
    # releases the base weight, hence the saved weights).
    requires_grad = {parameter: parameter.requires_grad for parameter in model.parameters()}
    originals = base_weights(model, [name for name in names if hasattr(model.get_submodule(name), "weight")])
    try:
        wrapped = [(name, LoLDULinear(model.get_submodule(name), config, name)) for name in names]
    except Exception:
        restore_base_weights(model, originals)
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)
        raise
    model.requires_grad_(False)
    for name, layer in wrapped:
        _set_submodule(model, name, layer)
        layer.z.requires_grad_(True)
        if isinstance(layer.sigma, nn.Parameter):
            layer.sigma.requires_grad_(True)
    return model


def inject(model: nn.Module, config: LoLDUConfig) -> nn.Module:
    """Wrap every module targeted by ``config`` in place and freeze all base parameters.

    Only the LoLDU vectors stay trainable; unfreeze a head (e.g. ``model.classifier``) afterwards.
    Inject after the pretrained weights are loaded: the decomposition is taken from them.
    """
    _refuse_existing_adapters(model)
    names = resolve_target_modules(model, config.target_modules, config.exclude_modules)
    return wrap_modules(model, config, names)


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter's update into its base weight (the wrappers stay, marked merged)."""
    layers = _require_adapters(model, "merge")
    already = [name for name, layer in layers if layer.merged]
    if already:
        warnings.warn(
            f"LoLDU: {len(already)} layer(s) already merged (e.g. {already[0]!r}); leaving them unchanged", stacklevel=2
        )
    for _, layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge``: subtract each update from its base weight again."""
    for _, layer in _require_adapters(model, "unmerge"):
        layer.unmerge()
    return model


def unload(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every LoLDU wrapper by its plain base layer, with the update folded in (merge=True)
    or with the original weights (merge=False). Parameters keep their requires_grad flags."""
    for name, layer in _require_adapters(model, "unload"):
        if merge:
            layer.merge()
        else:
            layer.unmerge()
            layer.restore_base_weight()
        _set_submodule(model, name, layer.base_layer)
    return model


def enable(model: nn.Module) -> nn.Module:
    """Let every adapter act again after ``disable``."""
    for _, layer in _require_adapters(model, "enable"):
        layer.disabled = False
    return model


def disable(model: nn.Module) -> nn.Module:
    """Make the model compute exactly its base output; merged layers are unmerged first (with a warning)."""
    layers = _require_adapters(model, "disable")
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        warnings.warn(f"LoLDU: disabling merged adapters unmerges them first (e.g. {merged[0]!r})", stacklevel=2)
    for _, layer in layers:
        layer.unmerge()
        layer.disabled = True
    return model
