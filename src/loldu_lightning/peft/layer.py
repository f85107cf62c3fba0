"""``LoLDULayer``: PEFT's tuner layer for LoLDU, one ``loldu.LoLDULinear`` per named adapter.

The layer owns the base layer. Each adapter is a ``LoLDULinear`` built on that base layer (so the
decomposition, inits, residual modes, scaling, storage and forward paths are the library's own)
whose reference to the base layer is kept out of the module tree: the base weights then appear
once in the state dict, under ``base_layer``, and the adapter's state is exactly z, sigma and c
(plus the factors with ``save_factors``). Saved keys read ``<module>.loldu_adapter.z`` etc.,
PEFT's ``<module>.<prefix><name>.<key>`` layout.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import Tensor, nn

from loldu_lightning.loldu import LoLDULinear
from loldu_lightning.loldu.base_layers import is_conv1d, out_in_weight

from .config import LoLDUPeftConfig
from .mixed_batch import mixed_batch_forward


def _share_base_layer(adapter: LoLDULinear, base_layer: nn.Module) -> None:
    """Keep ``adapter.base_layer`` usable while removing it from the adapter's submodules."""
    del adapter._modules["base_layer"]
    object.__setattr__(adapter, "base_layer", base_layer)


def _persist_factors(adapter: LoLDULinear) -> None:
    """Make the factor buffers part of the adapter's state dict (``save_factors``)."""
    factors = adapter.factor_tensors()
    for module in adapter.modules():
        for name, tensor in list(module.named_buffers(recurse=False)):
            if name in factors and tensor is factors[name]:
                module.register_buffer(name, tensor, persistent=True)


class LoLDULayer(nn.Module, BaseTunerLayer):
    """A Linear/Conv1D base layer plus any number of named LoLDU adapters."""

    adapter_layer_names = ("loldu_adapter",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoLDUPeftConfig, module_name: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name
        self.loldu_adapter = nn.ModuleDict()
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        weight = out_in_weight(base_layer)
        self.out_features, self.in_features = weight.shape
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.update_layer(adapter_name, config)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def update_layer(self, adapter_name: str, config: LoLDUPeftConfig) -> None:
        """Add adapter ``adapter_name`` (decomposing the base weight as ``config`` says)."""
        if adapter_name in self.loldu_adapter:
            raise ValueError(f"LoLDU: module {self.module_name!r} already has an adapter named {adapter_name!r}")
        loldu_config = config.to_loldu_config()
        if self.loldu_adapter and (loldu_config.storage == "lu" or self._lu_adapter() is not None):
            raise ValueError(
                f"LoLDU: module {self.module_name!r} cannot hold several adapters when one uses storage 'lu' (its factors "
                "replace W0, which the other adapters need); use storage 'dense' or 'packed' for multiple adapters"
            )
        if self.merged:
            raise ValueError(
                f"LoLDU: module {self.module_name!r} has merged adapters {self.merged_adapters}; unmerge before adding "
                f"adapter {adapter_name!r} (its decomposition must be taken from the unmerged W0)"
            )
        adapter = LoLDULinear(self.base_layer, loldu_config, self.module_name)
        _share_base_layer(adapter, self.base_layer)
        if loldu_config.save_factors:
            _persist_factors(adapter)
        self.loldu_adapter[adapter_name] = adapter
        self.set_adapter(self.active_adapters)

    def _lu_adapter(self) -> LoLDULinear | None:
        return next((adapter for adapter in self.loldu_adapter.values() if adapter.storage == "lu"), None)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        # PEFT's version would also cast to the base weight's dtype; LoLDU keeps z, sigma and c in
        # float32 and the factors in their configured dtype, so only the device follows.
        if adapter_name not in self.loldu_adapter:
            return
        if device is None:
            tensors = [*self.base_layer.parameters(), *self.loldu_adapter[adapter_name].buffers()]
            device = tensors[0].device if tensors else None
        if device is not None and device.type != "meta":
            self.loldu_adapter[adapter_name].to(device)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        adapter_names = kwargs.pop("adapter_names", None)  # one per example: PEFT's mixed adapter batches
        if adapter_names is not None and not self.disable_adapters:
            return mixed_batch_forward(self, x, adapter_names, *args, **kwargs)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self._base_forward(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.loldu_adapter]
        if not active:
            return self._base_forward(x, *args, **kwargs)
        first, *others = active
        result = self.loldu_adapter[first](x)  # W0 x plus the first update, exactly as loldu.inject computes it
        for name in others:
            result = result + _update(self.loldu_adapter[name], x).to(result.dtype)
        return result

    def _base_forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        lu_adapter = self._lu_adapter()
        if lu_adapter is None:
            return self.base_layer(x, *args, **kwargs)
        # storage 'lu' released W0: the base output is its factors with a zero update.
        lu_adapter.disabled = True
        try:
            return lu_adapter(x)
        finally:
            lu_adapter.disabled = False

    # -- merging -----------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the updates of ``adapter_names`` (default: the active ones) into the base weight."""
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.loldu_adapter:
                continue
            adapter = self.loldu_adapter[name]
            if safe_merge:
                merged = adapter.base_weight().float() + adapter.delta_weight()
                if not torch.isfinite(merged).all():
                    raise ValueError(
                        f"LoLDU: merging adapter {name!r} into module {self.module_name!r} gives non-finite weights "
                        "(NaN/inf in z or sigma); nothing was merged into this module"
                    )
            adapter.merge()
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract the merged updates again, last merged first."""
        if not self.merged:
            warnings.warn(f"LoLDU: module {self.module_name!r} has no merged adapter to unmerge", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.loldu_adapter:
                self.loldu_adapter[name].unmerge()

    def get_delta_weight(self, adapter_name: str) -> Tensor:
        """The update of ``adapter_name`` in the base weight's layout and dtype."""
        delta = self.loldu_adapter[adapter_name].delta_weight()
        delta = delta.t() if self.fan_in_fan_out else delta
        return delta.to(self.base_layer.weight.dtype if self.base_layer.weight is not None else torch.float32)

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.Module:
        """The plain base layer: with the updates folded in (merge) or with its original weight."""
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        else:
            if self.merged:
                self.unmerge()
            lu_adapter = self._lu_adapter()
            if lu_adapter is not None:
                lu_adapter.restore_base_weight()
        return self.base_layer

    def extra_repr(self) -> str:
        return f"module={self.module_name!r}, adapters={list(self.loldu_adapter)}"


def _update(adapter: LoLDULinear, x: Tensor) -> Tensor:
    """``P L_r diag(sigma z - c) U_r x`` alone (for a second, third... active adapter)."""
    lower, upper = adapter.dense_factors()
    hidden = F.linear(x, upper.to(x.dtype)) * adapter.scale_vector().to(x.dtype)
    return F.linear(hidden, lower.to(hidden.dtype))


def _refresh_after_load(module: LoLDULayer, incompatible_keys: Any) -> None:
    # Loaded factors (save_factors) replace the decomposed ones; derived buffers follow them.
    for adapter in module.loldu_adapter.values():
        adapter.refresh_derived_buffers()
