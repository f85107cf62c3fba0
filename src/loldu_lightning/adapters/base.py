"""The one interface the app uses for every fine-tuning method (LoLDU and the baselines)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

from peft import PeftModel
from torch import nn

from loldu_lightning.adapters.heads import (
    head_parameters,
    load_head_state,
    mark_heads_trainable,
    resolve_head_modules,
    save_head_state,
)
from loldu_lightning.loldu.manifest import LAYOUTS, AdapterManifest


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside a PEFT wrapper (adapter layers still injected), or `model` itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def count_parameters(model: nn.Module, head_modules: Sequence[str]) -> dict[str, int]:
    """Adapter, head, trainable and total parameter counts, each parameter counted once.

    The one parameter count of the app (train(), the callback's table and metrics.json use it);
    `head_modules` may be names or patterns, as in the task configs.

    `adapter` is every trainable parameter outside the heads, which is how the LoLDU paper (and
    PEFT papers generally) report an adapter's size; heads are reported separately. (The LoLDU
    library's `loldu.parameter_counts` calls its narrower count, z and sigma only, `loldu`.)
    """
    base = unwrap_model(model)
    head_ids = {id(parameter) for parameter in head_parameters(base, resolve_head_modules(base, head_modules))}
    counts = {"adapter": 0, "head": 0, "trainable": 0, "total": 0}
    for parameter in base.parameters():  # parameters() already skips tied duplicates
        size = parameter.numel()
        counts["total"] += size
        if parameter.requires_grad:
            counts["trainable"] += size
        if id(parameter) in head_ids:
            counts["head"] += size
        elif parameter.requires_grad:
            counts["adapter"] += size
    return counts


class Adapter(abc.ABC):
    """Makes a model trainable one way, and saves, loads and merges what was trained.

    Subclasses implement the method-specific hooks (`_inject`, `_save_adapter`, `_load_adapter`,
    `merge`, `_is_adapter_layer`); this class handles the task heads, which every method trains
    fully and stores beside its adapter files. An adapter holds only its options: the heads are
    passed to `apply` and `save` (and read back from the files by `load`), never remembered.
    Every saved folder carries an `adapter_manifest.json` naming the adapter and `layout`; `load`
    reads it (or, for older folders, what stands for it) before anything else.
    """

    name: ClassVar[str]
    options_type: ClassVar[type]
    layout: ClassVar[str]  # the manifest layout of the files `_save_adapter` writes (a key of LAYOUTS)

    def __init__(self, options: Any) -> None:
        self.options = options

    # -- the public interface -------------------------------------------------------------
    def apply(self, model: nn.Module, head_modules: Sequence[str]) -> nn.Module:
        """Make `model` trainable this adapter's way, heads always fully trainable; return the model to train."""
        head_names = resolve_head_modules(unwrap_model(model), head_modules)
        adapted = self._inject(model)
        base = unwrap_model(adapted)
        self._check_heads_not_adapted(base, head_names)
        mark_heads_trainable(base, head_names)
        return adapted

    def save(
        self,
        model: nn.Module,
        directory: str | PathLike[str],
        head_modules: Sequence[str],
        base_model_name: str | None = None,
    ) -> None:
        """Write the adapter's own files plus the weights of `head_modules` into `directory` (created if needed)."""
        head_names = resolve_head_modules(unwrap_model(model), head_modules)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_adapter(model, directory, base_model_name, head_names)
        self._save_heads(unwrap_model(model), directory, head_names)

    def load(self, model: nn.Module, directory: str | PathLike[str]) -> nn.Module:
        """Inverse of `save`: put the saved adapter and heads into a fresh base model; return the model."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter directory {directory} does not exist; pass the directory given to save()")
        self._check_manifest(AdapterManifest.read(directory), directory)
        loaded = self._load_adapter(model, directory)
        base = unwrap_model(loaded)
        mark_heads_trainable(base, self._load_heads(base, directory))
        return loaded

    @abc.abstractmethod
    def merge(self, model: nn.Module) -> nn.Module:
        """A plain model with the adapter folded into its weights (same outputs, no inference overhead)."""

    @classmethod
    def saved_options(cls, directory: Path) -> dict[str, Any]:
        """The options an adapter folder fixes for loading it (LoLDU: its decomposition), so that a
        folder loaded on its own is read as it was trained, not with a config's defaults."""
        return {}

    def lr_scale(self) -> float:
        """The multiplier of the run's learning rate for this adapter's own parameters (heads keep the rate)."""
        return 1.0

    # -- hooks for the methods ------------------------------------------------------------
    @abc.abstractmethod
    def _inject(self, model: nn.Module) -> nn.Module:
        """Set which base parameters train and add adapter layers; heads are handled by the caller."""

    @abc.abstractmethod
    def _save_adapter(
        self, model: nn.Module, directory: Path, base_model_name: str | None, head_names: Sequence[str]
    ) -> None:
        """Write the method's own files (adapter_model.safetensors and its config) and the manifest."""

    @abc.abstractmethod
    def _load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        """Read the method's own files into a fresh base model."""

    def _check_manifest(self, manifest: AdapterManifest, directory: Path) -> None:
        """Refuse a folder that this adapter cannot load, before anything is read into the model."""
        if manifest.adapter != self.name:
            raise ValueError(
                f"{directory} holds a {manifest.adapter!r} adapter, not {self.name!r}; select the adapter it was "
                "trained with"
            )
        if manifest.layout != self.layout:
            raise ValueError(
                f"{directory} holds a {manifest.adapter!r} adapter in the {manifest.layout!r} layout "
                f"({LAYOUTS[manifest.layout]}); adapter {self.name!r} loads the {self.layout!r} layout"
            )

    def _is_adapter_layer(self, module: nn.Module) -> bool:
        """Whether `module` is a layer this method injected (used to keep adapters out of heads)."""
        return False

    def _save_heads(self, model: nn.Module, directory: Path, head_names: Sequence[str]) -> None:
        save_head_state(model, head_names, directory)

    def _load_heads(self, model: nn.Module, directory: Path) -> tuple[str, ...]:
        return load_head_state(model, directory)

    # -- helpers ----------------------------------------------------------------------------
    def _check_heads_not_adapted(self, model: nn.Module, head_names: Sequence[str]) -> None:
        for head in head_names:
            for name, module in model.get_submodule(head).named_modules():
                if self._is_adapter_layer(module):
                    where = f"{head}.{name}" if name else head
                    raise ValueError(
                        f"adapter {self.name!r} injected a layer into head module {where!r}; heads are trained "
                        "fully, so narrow target_modules to exclude them"
                    )

    def has_adapter_layers(self, model: nn.Module) -> bool:
        """Whether any layer of `model` is still one of this adapter's (False after `merge`)."""
        return any(self._is_adapter_layer(module) for module in model.modules())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"
