"""``LoLDUModel``: PEFT's tuner for LoLDU (what ``get_peft_model`` builds for a ``LoLDUPeftConfig``).

PEFT's ``BaseTuner`` does the target matching, adapter bookkeeping, ``set_adapter``,
``delete_adapter`` and ``modules_to_save``; this class creates the layers, records the base model's
fingerprints in the config when an adapter is created and checks them when one is loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_target_module_exists
from torch import nn

from .config import LoLDUPeftConfig
from .fingerprints import BaseModelMismatch, check_or_record
from .layer import LoLDULayer
from .mixed_batch import adapter_names_hooks

PREFIX = "loldu_"

# Used when target_modules is None: the attention projections the paper adapts.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "vit": ["query", "value"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}


class LoLDUModel(BaseTuner):
    """Injects ``LoLDULayer``s into a model as a ``LoLDUPeftConfig`` says."""

    prefix: str = PREFIX
    tuner_layer_cls = LoLDULayer
    target_module_mapping = DEFAULT_TARGET_MODULES

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        config = self.peft_config[adapter_name]
        expected = set(config.fingerprints or ())
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        adapted = {
            name
            for name, module in model.named_modules()
            if isinstance(module, LoLDULayer) and adapter_name in module.loldu_adapter
        }
        if expected and adapted != expected:
            missing, extra = sorted(expected - adapted), sorted(adapted - expected)
            raise BaseModelMismatch(
                f"LoLDU adapter {adapter_name!r} does not fit this base model: it was made for modules this model "
                f"lacks or does not target ({missing or 'none'}), and this model adds targets it has no fingerprint "
                f"for ({extra or 'none'}). Load it onto the base model it was trained on."
            )

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # Saved factors sit one level deeper (``loldu_adapter.<name>.factor_storage.lower``) than
        # PEFT's default rule expects; drop the adapter name wherever it follows the container.
        head, found, tail = key.rpartition(f".{PREFIX}adapter.{adapter_name}.")
        if found:
            return f"{head}.{PREFIX}adapter.{tail}"
        return super()._remove_adapter_name_from_key(key, adapter_name)

    def _prepare_adapter_config(self, peft_config: LoLDUPeftConfig, model_config: dict) -> LoLDUPeftConfig:
        if peft_config.target_modules is None:
            model_type = model_config.get("model_type")
            if model_type not in self.target_module_mapping:
                raise ValueError(
                    f"LoLDUPeftConfig: target_modules is None and there is no default for model type {model_type!r}; "
                    "name the Linear layers to adapt, e.g. target_modules=['q_proj', 'v_proj'] or 'all-linear'"
                )
            peft_config.target_modules = set(self.target_module_mapping[model_type])
        return peft_config

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        # adapter_names=[...] in forward/generate: each example its own adapter (mixed_batch.py).
        with adapter_names_hooks(self, LoLDULayer, kwargs.get("adapter_names"), kwargs.get("num_beams")):
            yield

    @staticmethod
    def _check_target_module_exists(peft_config: LoLDUPeftConfig, key: str) -> Any:
        return check_target_module_exists(peft_config, key)

    def _create_and_replace(
        self,
        peft_config: LoLDUPeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if isinstance(target, LoLDULayer):
            target.update_layer(adapter_name, peft_config)
            layer = target
        else:
            if isinstance(target, BaseTunerLayer):
                raise ValueError(
                    f"LoLDU: module {current_key!r} already carries a {type(target).__name__} adapter of another PEFT "
                    "method; LoLDU adapts plain Linear/Conv1D layers"
                )
            layer = LoLDULayer(target, adapter_name, peft_config, current_key)
            if adapter_name not in self.active_adapters:
                layer.requires_grad_(False)
            self._replace_module(parent, target_name, layer, target)
        check_or_record(peft_config, current_key, layer.loldu_adapter[adapter_name])

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        # The LoLDU adapter already sits on the base weight's device (it is computed from it).
        setattr(parent, child_name, new_module)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        # PEFT's convention: with autocast_adapter_dtype (its default) the adapter's own tensors are float32 whatever
        # the base model's dtype (how LoLDU creates z, sigma and c); without it they take the base weight's dtype.
        # The frozen factors keep the dtype the config gives them either way.
        for module in self.model.modules():
            if isinstance(module, LoLDULayer) and adapter_name in module.loldu_adapter:
                weight = module.base_layer.weight
                if autocast_adapter_dtype:
                    dtype = torch.float32
                elif weight is not None and weight.is_floating_point():
                    dtype = weight.dtype
                else:  # storage 'lu' released W0: nothing to follow
                    continue
                cast_adapter_vectors(module.loldu_adapter[adapter_name], dtype)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            self._check_merge_allowed()
        for name, module in list(self.model.named_modules()):
            if not isinstance(module, LoLDULayer):
                continue
            parent_name, _, child_name = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(
                parent,
                child_name,
                module.unload_and_optionally_merge_module(
                    merge=merge, safe_merge=safe_merge, adapter_names=adapter_names
                ),
            )
        # modules_to_save wrappers give back the trained copy of their module.
        for name, module in list(self.model.named_modules()):
            if hasattr(module, "unload_and_optionally_merge_module") and not isinstance(module, LoLDULayer):
                parent_name, _, child_name = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(
                    parent,
                    child_name,
                    module.unload_and_optionally_merge_module(
                        merge=merge, safe_merge=safe_merge, adapter_names=adapter_names
                    ),
                )
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model


def cast_adapter_vectors(adapter: nn.Module, dtype: torch.dtype) -> None:
    """Give ``z``, ``sigma`` and ``c`` the dtype ``dtype`` (parameters stay parameters, with their requires_grad)."""
    for name in ("z", "sigma", "c"):
        tensor = getattr(adapter, name)
        if tensor.dtype == dtype:
            continue
        if isinstance(tensor, nn.Parameter):
            setattr(adapter, name, nn.Parameter(tensor.detach().to(dtype), requires_grad=tensor.requires_grad))
        else:
            adapter._buffers[name] = tensor.to(dtype)
