"""PEFT's mixed adapter batches for LoLDU: ``model(..., adapter_names=[...])`` and ``generate``.

PEFT passes ``adapter_names`` (one adapter name per example, ``"__base__"`` for the base model) to
every tuner layer through forward pre-hooks that the tuner installs for the duration of the call
(``adapter_names_hooks``, LoRA's mechanism). In a ``LoLDULayer`` every adapter built with the same
decomposition and rank has the same factors, so one factored product with a per-example update
vector serves all of them (``loldu.mixed_batch``); adapters of different layouts take one product
per layout. ``modules_to_save`` heads are PEFT's own wrappers, which handle ``adapter_names`` themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import Tensor, nn

from loldu_lightning.loldu import LoLDULinear
from loldu_lightning.loldu.mixed_batch import per_example_scales, per_example_update

if TYPE_CHECKING:
    from .layer import LoLDULayer

BASE = "__base__"


def _layout(adapter: LoLDULinear) -> tuple[Any, ...]:
    """Adapters with equal layouts have identical factors (both are computed from the same W0)."""
    config = adapter.loldu_config
    return (adapter.decomposition, adapter.rank, config.decompose_dtype, config.dtype)


def mixed_batch_forward(
    layer: LoLDULayer, x: Tensor, adapter_names: Sequence[str], *args: Any, **kwargs: Any
) -> Tensor:
    """``W0 x`` plus, for each example, the update of its own adapter."""
    if layer.merged:
        raise ValueError(
            "Cannot pass `adapter_names` when there are merged adapters, please call `unmerge_adapter` first "
            f"(LoLDU module {layer.module_name!r} has {layer.merged_adapters} merged)"
        )
    names = list(adapter_names)
    if len(names) != len(x):  # beam search arrives here with the names already repeated per beam
        raise ValueError(
            "Length of `adapter_names` should be the same as the number of inputs, but got "
            f"{len(names)} and {len(x)} respectively."
        )
    result = layer._base_forward(x, *args, **kwargs)
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name in dict.fromkeys(names):
        if name != BASE and name in layer.loldu_adapter:  # an adapter that skips this module acts as the base here
            groups.setdefault(_layout(layer.loldu_adapter[name]), []).append(name)
    for members in groups.values():
        first = layer.loldu_adapter[members[0]]
        # Row 0 is zero: examples of other layouts (or of the base) get no update from this product.
        table = torch.stack(
            [torch.zeros_like(first.scale_vector())] + [layer.loldu_adapter[n].scale_vector() for n in members]
        )
        row = {name: i + 1 for i, name in enumerate(members)}
        index = torch.tensor([row.get(name, 0) for name in names], device=table.device)
        lower, upper = first.dense_factors()
        scales = per_example_scales(table.index_select(0, index), x.shape[0])
        result = result + per_example_update(x, lower, upper, scales).to(result.dtype)
    return result


def _adapter_names_pre_hook(module: nn.Module, args: Any, kwargs: dict[str, Any], adapter_names: list[str]) -> Any:
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextlib.contextmanager
def adapter_names_hooks(
    model: nn.Module, layer_type: type, adapter_names: Sequence[str] | None, num_beams: Any = None
) -> Iterator[None]:
    """Give every LoLDU layer and ``modules_to_save`` wrapper of ``model`` the ``adapter_names`` of
    this call (repeated per beam for beam search), then take the hooks off again."""
    if adapter_names is None:
        yield
        return
    if model.training:
        raise ValueError("Cannot pass `adapter_names` when the model is in training mode. Call model.eval() first.")
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"LoLDU: adapter_names must be a list of adapter names, one per example, got {adapter_names!r}")
    known = {name for module in model.modules() if isinstance(module, layer_type) for name in module.loldu_adapter}
    unknown = sorted({name for name in adapter_names if name != BASE} - known)
    if unknown:
        raise ValueError(
            f"Trying to infer with non-existing adapter(s): {', '.join(unknown)}. LoLDU adapters: {sorted(known)}, "
            f"or {BASE!r} for the base model"
        )
    names = list(adapter_names)
    if isinstance(num_beams, int) and num_beams > 1:
        names = [name for name in names for _ in range(num_beams)]
    handles = []
    try:
        for module in model.modules():
            if isinstance(module, (layer_type, AuxiliaryTrainingWrapper)):
                hook = partial(_adapter_names_pre_hook, adapter_names=names)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
