"""Baselines that add no layers and only choose which base parameters train.

`full` trains everything, `bitfit` the biases, `linear_probe` nothing but the heads. Their folders
hold `adapter_manifest.json` (the method and base model, layout `parameters`),
`adapter_model.safetensors` with the trained non-head parameters (empty for a linear probe) and
`head.safetensors` with the heads. Buffers are not saved: the transformer models used here have no
buffers that training changes. Folders saved before the manifest existed name the method in an
`adapter_config.json` (key `adapter_type`), which `AdapterManifest.read` still understands.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from loldu_lightning.adapters.base import Adapter
from loldu_lightning.loldu.manifest import AdapterManifest
from loldu_lightning.loldu.targeting import is_or_ends_with

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True)
class NoOptions:
    """These methods take no options; the dataclass exists so that typos are still rejected."""


class SubsetAdapter(Adapter):
    """Trains a fixed subset of the base parameters chosen by `_trains`; merging is a no-op."""

    options_type = NoOptions
    layout = "parameters"

    @abc.abstractmethod
    def _trains(self, parameter_name: str) -> bool:
        """Whether the base parameter with this qualified name is trained (heads aside)."""

    def _inject(self, model: nn.Module) -> nn.Module:
        for parameter_name, parameter in model.named_parameters():
            parameter.requires_grad_(self._trains(parameter_name))
        return model

    def _save_adapter(
        self, model: nn.Module, directory: Path, base_model_name: str | None, head_names: Sequence[str]
    ) -> None:
        head_prefixes = tuple(f"{head}." for head in head_names)
        # named_parameters() skips tied duplicates, which safetensors could not store twice.
        state = {
            name: parameter.detach().contiguous()
            for name, parameter in model.named_parameters()
            if self._trains(name) and not name.startswith(head_prefixes)
        }
        save_file(state, str(directory / ADAPTER_WEIGHTS_FILE), metadata={"format": "pt"})
        AdapterManifest(self.name, self.layout, base_model_name).write(directory)

    def _load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        weights_path = directory / ADAPTER_WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(
                f"{weights_path} is missing; {directory} does not hold a saved {self.name!r} adapter"
            )
        state = load_file(str(weights_path))
        unexpected = sorted(set(state) - set(model.state_dict()))
        if unexpected:
            raise ValueError(
                f"{weights_path} holds weights {unexpected[:5]} that {type(model).__name__} does not have; "
                "load into the architecture the adapter was trained on"
            )
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise ValueError(f"weights in {weights_path} do not fit {type(model).__name__}: {error}") from error
        return self._inject(model)

    def merge(self, model: nn.Module) -> nn.Module:
        return model


class FullAdapter(SubsetAdapter):
    """Full fine-tuning: every parameter trains."""

    name = "full"

    def _trains(self, parameter_name: str) -> bool:
        return True


class LinearProbeAdapter(SubsetAdapter):
    """Linear probing: the backbone is frozen, only the heads train."""

    name = "linear_probe"

    def _trains(self, parameter_name: str) -> bool:
        return False


class BitFitAdapter(SubsetAdapter):
    """BitFit (Ben Zaken et al. 2022): only bias terms train, plus the heads."""

    name = "bitfit"

    def _trains(self, parameter_name: str) -> bool:
        return is_or_ends_with(parameter_name, "bias")
