"""Which modules of a model a LoLDU config targets (PEFT's matching rules).

- a list of names: a module matches when its qualified name equals an entry or ends with
  ``.<entry>`` (``"query"`` matches ``encoder.layer.0.attention.self.query``; ``"to_out.0"`` matches
  the Linear inside diffusers' ``to_out`` list);
- a string: a regular expression that must match the whole qualified name (``re.fullmatch``);
- ``"all-linear"``: every Linear/Conv1D layer except output heads, i.e. except modules that are,
  or sit under, a module named ``lm_head``, ``classifier`` or ``score``, and except the model's
  output embedding when it has ``get_output_embeddings()`` (transformers models).

``exclude_modules`` uses the same syntax and removes its matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from .base_layers import is_supported_layer
from .config import TargetSpec

ALL_LINEAR = "all-linear"
HEAD_MODULE_NAMES = frozenset({"lm_head", "classifier", "score"})


def is_or_ends_with(name: str, entry: str) -> bool:
    """Whether the qualified ``name`` is ``entry`` or ends with ``.<entry>`` (whole components only:
    ``"query"`` matches ``attention.self.query``, not ``attention.self.key_query``).

    The one name rule of the project: adapter targets, task heads and BitFit's ``bias`` use it.
    """
    return name == entry or name.endswith("." + entry)


def name_matches(name: str, spec: TargetSpec) -> bool:
    """Whether the qualified module ``name`` matches a list/regex target spec (not ``all-linear``)."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(is_or_ends_with(name, entry) for entry in spec)


def is_output_head(name: str) -> bool:
    """True for a module named lm_head/classifier/score or anything under such a module."""
    return any(part in HEAD_MODULE_NAMES for part in name.split("."))


def linear_module_names(model: nn.Module) -> list[str]:
    """Qualified names of the layers LoLDU can adapt, in model order."""
    return [name for name, module in model.named_modules() if name and is_supported_layer(module)]


def _output_embedding(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    if not callable(getter):
        return None
    try:
        return getter()
    except (NotImplementedError, AttributeError):
        return None


def _all_linear(model: nn.Module) -> list[str]:
    output_embedding = _output_embedding(model)
    return [
        name
        for name, module in model.named_modules()
        if name and is_supported_layer(module) and not is_output_head(name) and module is not output_embedding
    ]


def _format_names(names: Iterable[str], limit: int = 40) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"


def resolve_target_modules(
    model: nn.Module, target_modules: TargetSpec, exclude_modules: TargetSpec | None = None
) -> list[str]:
    """Qualified names of the modules to adapt, in model order.

    Raises ValueError when nothing matches (listing the model's linear layers) or when a matched
    module is not a Linear/Conv1D layer (naming it and its type).
    """
    if target_modules == ALL_LINEAR:
        candidates = _all_linear(model)
    else:
        candidates = []
        for name, module in model.named_modules():
            if not name or not name_matches(name, target_modules):
                continue
            if not is_supported_layer(module):
                raise ValueError(
                    f"LoLDU: target_modules {target_modules!r} matched module {name!r} of type {type(module).__name__}, "
                    "which is not nn.Linear or Conv1D; target its linear layers instead "
                    f"(linear layers under it: {_format_names(f'{name}.{child}' for child in linear_module_names(module))})"
                )
            candidates.append(name)

    if exclude_modules is not None:
        if exclude_modules == ALL_LINEAR:
            raise ValueError("LoLDU: exclude_modules cannot be 'all-linear'; give names or a regex")
        candidates = [name for name in candidates if not name_matches(name, exclude_modules)]

    if not candidates:
        raise ValueError(
            f"LoLDU: target_modules {target_modules!r} (exclude_modules {exclude_modules!r}) matched no module. "
            f"Linear layers of this model: {_format_names(linear_module_names(model))}"
        )
    return candidates
