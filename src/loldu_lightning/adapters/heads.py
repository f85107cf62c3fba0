"""Task heads (e.g. `classifier`, `score`): finding them, keeping them trainable, saving them.

Heads are trained fully whatever the adapter. They are handled here rather than through PEFT's
`modules_to_save`, whose merge_and_unload breaks on composite heads such as RoBERTa's
classification head (dense + out_proj).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from loldu_lightning.loldu.targeting import is_or_ends_with

HEAD_FILE = "head.safetensors"
_HEAD_METADATA_KEY = "head_modules"


def resolve_head_modules(model: nn.Module, head_modules: Sequence[str]) -> tuple[str, ...]:
    """Qualified names of the modules that `head_modules` designates, outermost only, in model order.

    An entry matches a module whose qualified name equals it or ends with `.<entry>`; an entry
    that matches nothing is a configuration error.
    """
    if isinstance(head_modules, str):
        raise ValueError(f"head_modules must be a list of module names, got the string {head_modules!r}")
    names = [name for name, _ in model.named_modules() if name]
    matched: set[str] = set()
    for entry in head_modules:
        hits = [name for name in names if is_or_ends_with(name, entry)]
        if not hits:
            top_level = [name for name, _ in model.named_children()]
            raise ValueError(
                f"head module {entry!r} matches no module of {type(model).__name__}; "
                f"its top-level modules are {top_level}, its last modules {names[-5:]}"
            )
        matched.update(hits)
    # A head nested in another matched head is already covered by its parent.
    outermost = {name for name in matched if not any(name.startswith(f"{other}.") for other in matched)}
    return tuple(name for name in names if name in outermost)


def head_parameters(model: nn.Module, head_names: Iterable[str]) -> list[nn.Parameter]:
    """Every parameter of the named head modules, each once."""
    seen: dict[int, nn.Parameter] = {}
    for name in head_names:
        for parameter in model.get_submodule(name).parameters():
            seen.setdefault(id(parameter), parameter)
    return list(seen.values())


def mark_heads_trainable(model: nn.Module, head_names: Iterable[str]) -> None:
    """Make every parameter of the heads trainable (adapters freeze the whole base model first)."""
    for parameter in head_parameters(model, head_names):
        parameter.requires_grad_(True)


def save_head_state(model: nn.Module, head_names: Sequence[str], directory: Path) -> Path:
    """Write the heads' full state to `directory/head.safetensors`.

    Keys are qualified names in the plain (unwrapped) model, e.g. `classifier.dense.weight`, and
    the file's metadata records the head module names so that loading restores their trainability.
    """
    state: dict[str, torch.Tensor] = {}
    for name in head_names:
        for key, tensor in model.get_submodule(name).state_dict().items():
            # Cloning breaks storage sharing, which safetensors refuses (heads are small).
            state[f"{name}.{key}"] = tensor.detach().cpu().clone().contiguous()
    path = directory / HEAD_FILE
    save_file(state, str(path), metadata={"format": "pt", _HEAD_METADATA_KEY: json.dumps(list(head_names))})
    return path


def load_head_state(model: nn.Module, directory: Path) -> tuple[str, ...]:
    """Load `directory/head.safetensors` into `model`; return the head module names it records."""
    path = directory / HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no head weights at {path}; save the adapter with Adapter.save() first")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if _HEAD_METADATA_KEY not in metadata:
        raise ValueError(f"{path} lacks the '{_HEAD_METADATA_KEY}' metadata; it was not written by save_head_state")
    head_names = tuple(json.loads(metadata[_HEAD_METADATA_KEY]))
    load_head_tensors(model, state, source=str(path))
    return head_names


def load_head_tensors(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy head tensors (keys qualified in `model`) into `model`, with errors that name the cause."""
    known = set(model.state_dict())
    unexpected = sorted(set(state) - known)
    if unexpected:
        raise ValueError(
            f"{source} holds head weights {unexpected[:5]} that {type(model).__name__} does not have; "
            "load into the same architecture the adapter was trained on"
        )
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(
            f"head weights in {source} do not fit {type(model).__name__} (build it with the same number "
            f"of labels as in training): {error}"
        ) from error
