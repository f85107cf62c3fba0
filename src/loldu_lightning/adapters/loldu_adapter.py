"""LoLDU through the adapter interface: a thin layer over `loldu_lightning.loldu`.

Files are the LoLDU library's own (`adapter_config.json` + `adapter_model.safetensors`, and the
manifest `loldu.save_adapter` writes beside them); the
heads travel inside the same safetensors file as `modules_to_save.<head>.<key>`, so a LoLDU
adapter directory has no separate `head.safetensors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from loldu_lightning import loldu
from loldu_lightning.adapters.base import Adapter
from loldu_lightning.loldu import LoLDUConfig


class LoLDUAdapter(Adapter):
    name = "loldu"
    options_type = LoLDUConfig
    options: LoLDUConfig
    layout = "loldu"

    def _inject(self, model: nn.Module) -> nn.Module:
        # A copy, so that nothing the library does to its config leaks back into this adapter's options.
        return loldu.inject(model, dataclasses.replace(self.options))

    def _save_adapter(
        self, model: nn.Module, directory: Path, base_model_name: str | None, head_names: Sequence[str]
    ) -> None:
        loldu.save_adapter(model, directory, base_model_name=base_model_name, modules_to_save=tuple(head_names))

    def _save_heads(self, model: nn.Module, directory: Path, head_names: Sequence[str]) -> None:
        """Nothing to do: `_save_adapter` already stored the heads as modules_to_save."""

    def _load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        # The configured decomposition must be the file's: a z trained on one means nothing in another.
        return loldu.load_adapter(model, directory, decomposition=self.options.decomposition)

    def _load_heads(self, model: nn.Module, directory: Path) -> tuple[str, ...]:
        # load_adapter restored the head weights; only their names are needed to unfreeze them.
        return tuple(loldu.read_adapter_config(directory).get("modules_to_save", []))

    def merge(self, model: nn.Module) -> nn.Module:
        return loldu.unload(model, merge=True)

    @classmethod
    def saved_options(cls, directory: Path) -> dict[str, Any]:
        # files written before the option existed have no key: they are LU (LoLDUConfig's default)
        return {"decomposition": loldu.read_adapter_config(directory).get("decomposition", "lu")}

    def lr_scale(self) -> float:
        return self.options.resolve_lr_scale()

    def _is_adapter_layer(self, module: nn.Module) -> bool:
        return isinstance(module, loldu.LoLDULinear)
