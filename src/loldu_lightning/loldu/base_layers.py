"""The base layer types LoLDU can wrap, and their weights seen as ``out x in`` matrices.

``nn.Linear`` stores its weight as (out, in). GPT-2's ``transformers.pytorch_utils.Conv1D``
stores it as (in, out), so its ``W0`` is the transposed view. transformers is not imported here:
a model can only contain Conv1D layers if that module is already loaded, so looking it up in
``sys.modules`` is exact and keeps this package free of a transformers dependency.
"""

from __future__ import annotations

import sys

from torch import Tensor, nn


def conv1d_type() -> type | None:
    """transformers' Conv1D class if transformers is loaded, else None."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def is_conv1d(module: nn.Module) -> bool:
    conv1d = conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def is_supported_layer(module: nn.Module) -> bool:
    """True for the layer types a LoLDU adapter can wrap."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def out_in_weight(module: nn.Module) -> Tensor:
    """The layer's weight as an (out, in) matrix; a view, so writes reach the layer."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.t()
    raise ValueError(f"LoLDU supports nn.Linear and transformers Conv1D layers, got {type(module).__name__}")


def set_out_in_weight(module: nn.Module, weight: Tensor | None) -> None:
    """Give ``module`` a frozen weight from an (out, in) matrix, or none (its storage is released)."""
    if weight is None:
        module.weight = None
        return
    layout = weight if isinstance(module, nn.Linear) else weight.t()  # Conv1D stores (in, out)
    module.weight = nn.Parameter(layout.contiguous(), requires_grad=False)
