"""``AdapterBank``: many LoLDU adapters on one base model, each example of a batch served by its own.

    bank = AdapterBank.for_adapter(model, "adapters/sst2")     # the layout (targets, rank, decomposition)
    bank.load("sst2", "adapters/sst2"); bank.load("mrpc", "adapters/mrpc")
    with bank.select(["sst2", "mrpc", "sst2"]):                 # one adapter name per example
        logits = model(**batch).logits                         # or model.generate(...)

The bank injects one set of LoLDU layers (dense factors, factored forward) and keeps, per layer, a
matrix whose rows are the adapters' update vectors ``v = sigma z - c``; ``select`` gathers one row
per example (``mixed_batch``). A loaded adapter costs its r numbers per matrix plus its heads.
Adapters must fit the layout: the same adapted modules, decomposition, decomposition dtype and
rank per module, and base weights with the fingerprints and pivot order they were trained on.

Heads (``modules_to_save``, e.g. a classifier) differ per adapter: each head module is replaced by
a ``PerExampleModule`` that runs every example through its own adapter's copy of the head. Heads
of different output widths (2 labels and 3) are padded with NaN past each example's own width.

``BASE`` (``"__base__"``, PEFT's name for it) selects the base model's own function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.func import functional_call

from .adapter_io import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODULES_TO_SAVE_PREFIX, read_adapter_config
from .config import LoLDUConfig
from .fingerprint import tensor_sha256
from .layer import LoLDULinear
from .model_ops import inject, loldu_modules

BASE = "__base__"
_LAYOUT_FIELDS = ("decomposition", "decompose_dtype")


class PerExampleModule(nn.Module):
    """Runs each example through its own adapter's copy of a head (``modules_to_save``).

    Outside ``AdapterBank.select`` it is the original module. Examples are grouped by adapter and
    each group goes through ``torch.func.functional_call`` with that adapter's tensors, so an
    example sees exactly the head it sees alone.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.states: dict[str, dict[str, Tensor]] = {}
        self.selection: list[str] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.selection is None:
            return self.module(*args, **kwargs)
        names = self.selection
        batch = len(names)
        outputs: list[tuple[Tensor, Tensor]] = []
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=_first_tensor(args).device)
            group_args = tuple(_take(a, rows, batch) for a in args)
            group_kwargs = {k: _take(v, rows, batch) for k, v in kwargs.items()}
            state = self.states.get(name)
            out = (
                self.module(*group_args, **group_kwargs)
                if state is None
                else functional_call(self.module, state, group_args, group_kwargs)
            )
            outputs.append((rows, out))
        return _assemble(outputs, batch)


def _first_tensor(args: Sequence[Any]) -> Tensor:
    return next(a for a in args if isinstance(a, Tensor))


def _take(value: Any, rows: Tensor, batch: int) -> Any:
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.index_select(0, rows)
    return value


def _assemble(outputs: list[tuple[Tensor, Tensor]], batch: int) -> Tensor:
    """One (batch, ..., width) tensor from the groups' outputs; narrower heads are NaN-padded."""
    first = outputs[0][1]
    width = max(out.shape[-1] for _, out in outputs)
    result = first.new_full((batch, *first.shape[1:-1], width), float("nan"))
    for rows, out in outputs:
        result[rows, ..., : out.shape[-1]] = out
    return result


class AdapterBank:
    """The adapters one base model serves, by name; see the module docstring."""

    def __init__(self, model: nn.Module, layout: LoLDUConfig) -> None:
        if list(loldu_modules(model)):
            raise ValueError(
                "AdapterBank: the model already has LoLDU layers; give the bank the plain base model (it injects "
                "the layout itself)"
            )
        # Dense factors and the factored path: the per-example forward needs P L_r and U_r as matrices.
        # residual "init" makes the layers' own update zero: outside select the model is the base model.
        self.layout = LoLDUConfig.from_dict(
            {**layout.to_dict(), "storage": "dense", "forward_mode": "factored", "residual": "init"}
        )
        self.model = inject(model, self.layout)
        self.layers: dict[str, LoLDULinear] = dict(loldu_modules(self.model))
        self._fingerprints = {
            name: (layer.base_fingerprint(), tensor_sha256(layer.perm)) for name, layer in self.layers.items()
        }
        # Row 0 of each matrix is the base model (zeros); rows past len(self._rows) are spare capacity.
        self._rows: dict[str, int] = {BASE: 0}
        self._scales = {
            name: torch.zeros(1, layer.rank, dtype=torch.float32, device=layer.z.device)
            for name, layer in self.layers.items()
        }
        self._heads: dict[str, PerExampleModule] = {}

    @classmethod
    def for_adapter(cls, model: nn.Module, directory: str | Path) -> AdapterBank:
        """A bank whose layout is that of the native adapter folder ``directory`` (not loaded yet)."""
        document = read_adapter_config(directory)
        config = LoLDUConfig.from_dict({key: document[key] for key in LoLDUConfig.field_names() if key in document})
        targets = list(document["target_modules_resolved"])
        return cls(model, LoLDUConfig.from_dict({**config.to_dict(), "target_modules": targets}))

    # -- what is loaded --------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """The loaded adapters, in the order they were added (``BASE`` left out)."""
        return [name for name in self._rows if name != BASE]

    def __contains__(self, name: object) -> bool:
        return name in self._rows

    def __len__(self) -> int:
        return len(self._rows) - 1

    def bytes_per_adapter(self, name: str) -> int:
        """Memory one loaded adapter takes: its update vectors plus its heads' tensors."""
        self._check_known([name])
        vectors = sum(layer.rank * 4 for layer in self.layers.values())
        heads = sum(
            t.numel() * t.element_size() for head in self._heads.values() for t in head.states.get(name, {}).values()
        )
        return vectors + heads

    # -- adding and removing -----------------------------------------------------------------------
    def add(
        self,
        name: str,
        scales: Mapping[str, Tensor],
        heads: Mapping[str, Mapping[str, Tensor]] | None = None,
    ) -> None:
        """Add adapter ``name`` from its update vectors ``v = sigma z - c`` per adapted module and the
        state dicts of its heads (module name -> state dict)."""
        if not isinstance(name, str) or not name or name == BASE:
            raise ValueError(
                f"AdapterBank: adapter name {name!r} is not allowed; use a non-empty name other than {BASE!r}"
            )
        if name in self._rows:
            raise ValueError(f"AdapterBank: an adapter named {name!r} is loaded already; remove it first")
        missing, extra = sorted(set(self.layers) - set(scales)), sorted(set(scales) - set(self.layers))
        if missing or extra:
            raise ValueError(
                f"AdapterBank: adapter {name!r} adapts other modules than this bank (missing {missing or 'none'}, extra "
                f"{extra or 'none'}); serve adapters with the same target modules together"
            )
        rows: dict[str, Tensor] = {}
        for module, layer in self.layers.items():
            vector = scales[module].detach().reshape(-1)
            if vector.numel() != layer.rank:
                raise ValueError(
                    f"AdapterBank: adapter {name!r} has rank {vector.numel()} on module {module!r}, this bank serves rank "
                    f"{layer.rank} there; serve adapters of one rank together"
                )
            rows[module] = vector.to(device=self._scales[module].device, dtype=torch.float32)
        head_states = {module: dict(state) for module, state in (heads or {}).items()}
        for module, state in head_states.items():
            self._check_head(name, module, state)
        row = len(self._rows)
        for module, vector in rows.items():
            matrix = self._scales[module]
            if row == matrix.shape[0]:  # full: double the rows, so adding N adapters copies O(N) numbers
                matrix = self._scales[module] = torch.cat([matrix, torch.zeros_like(matrix)])
            matrix[row] = vector
        self._rows[name] = row
        for module, state in head_states.items():
            head = self._head(module)
            device = next(iter(head.module.parameters()), torch.empty(0)).device
            head.states[name] = {key: value.to(device) for key, value in state.items()}

    def add_from_model(self, name: str, model: nn.Module, heads: Sequence[str] = ()) -> None:
        """Add the adapter a model injected with LoLDU carries (and copies of its ``heads`` modules)."""
        scales = {module: layer.scale_vector().detach() for module, layer in loldu_modules(model)}
        states = {module: _detached_state(model.get_submodule(module)) for module in heads}
        self.add(name, scales, states)

    def load(self, name: str, directory: str | Path) -> None:
        """Add the adapter of a native adapter folder (``loldu.save_adapter``), after checking it fits."""
        document = read_adapter_config(directory)
        where = Path(directory) / ADAPTER_CONFIG_NAME
        for key in _LAYOUT_FIELDS:
            theirs, ours = document.get(key, "lu" if key == "decomposition" else None), getattr(self.layout, key)
            if theirs != ours:
                raise ValueError(
                    f"{where}: {key} {theirs!r} does not fit this bank's {ours!r}; serve it with its own bank"
                )
        fingerprints = document.get("fingerprints") or {}
        for module, (weight, perm) in self._fingerprints.items():
            recorded = fingerprints.get(module)
            if recorded is None:
                continue  # add() names the module sets that differ
            if recorded.get("weight") != weight:
                raise ValueError(
                    f"{where}: the base weight of module {module!r} differs from the one the adapter was trained on; "
                    "load it onto its own base model"
                )
            if recorded.get("perm") != perm:
                raise ValueError(
                    f"{where}: module {module!r} pivots differently on this machine than where the adapter was made; "
                    "save the adapter with save_factors=True"
                )
        tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS_NAME))
        scales: dict[str, Tensor] = {}
        for module in document["target_modules_resolved"]:
            try:
                z, sigma, c = (tensors[f"{module}.{key}"].float() for key in ("z", "sigma", "c"))
            except KeyError as missing:
                raise ValueError(
                    f"{directory}: {ADAPTER_WEIGHTS_NAME} lacks {missing}; the folder is incomplete"
                ) from None
            scales[module] = sigma * z - c
        heads: dict[str, dict[str, Tensor]] = {}
        for module in document.get("modules_to_save") or []:
            prefix = f"{MODULES_TO_SAVE_PREFIX}{module}."
            heads[module] = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        self.add(name, scales, heads)

    def remove(self, name: str) -> None:
        """Forget adapter ``name``: its rows and heads are freed and it can never be selected again."""
        self._check_known([name])
        if name == BASE:
            raise ValueError(f"AdapterBank: {BASE!r} is the base model itself and cannot be removed")
        row = self._rows.pop(name)
        last = len(self._rows)  # the highest row in use before the removal
        if row != last:  # the last adapter moves into the freed row
            moved = next(n for n, r in self._rows.items() if r == last)
            for matrix in self._scales.values():
                matrix[row] = matrix[last]
            self._rows[moved] = row
        for matrix in self._scales.values():
            matrix[last] = 0
        for head in self._heads.values():
            head.states.pop(name, None)

    # -- serving ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def select(self, adapter_names: Sequence[str]) -> Iterator[None]:
        """Within the block, example ``b`` of every forward (or ``generate``) uses ``adapter_names[b]``."""
        names = list(adapter_names)
        if not names:
            raise ValueError("AdapterBank.select: give one adapter name per example (got none)")
        self._check_known(names)
        merged = [module for module, layer in self.layers.items() if layer.merged or layer.disabled]
        if merged:
            raise ValueError(f"AdapterBank: module {merged[0]!r} is merged or disabled; unmerge and enable it first")
        rows = [self._rows[n] for n in names]
        try:
            for module, layer in self.layers.items():
                matrix = self._scales[module]
                layer.example_scales = matrix.index_select(0, torch.tensor(rows, device=matrix.device))
            for head in self._heads.values():
                head.selection = names
            yield
        finally:
            for layer in self.layers.values():
                layer.example_scales = None
            for head in self._heads.values():
                head.selection = None

    # -- helpers ---------------------------------------------------------------------------------
    def _check_known(self, names: Sequence[str]) -> None:
        unknown = sorted({n for n in names if n not in self._rows})
        if unknown:
            raise KeyError(f"AdapterBank: no adapter named {unknown[0]!r} is loaded (loaded: {self.names})")

    def _head(self, module: str) -> PerExampleModule:
        if module not in self._heads:
            try:
                original = self.model.get_submodule(module)
            except AttributeError:
                raise ValueError(f"AdapterBank: the model has no module {module!r} to hold a head") from None
            wrapper = PerExampleModule(original)
            parent, _, child = module.rpartition(".")
            setattr(self.model.get_submodule(parent) if parent else self.model, child, wrapper)
            self._heads[module] = wrapper
        return self._heads[module]

    def _check_head(self, name: str, module: str, state: Mapping[str, Tensor]) -> None:
        head = self._heads[module].module if module in self._heads else _module_or_none(self.model, module)
        if head is None:
            raise ValueError(f"AdapterBank: adapter {name!r} has a head for module {module!r}, which the model lacks")
        expected = head.state_dict()
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or extra:
            raise ValueError(
                f"AdapterBank: adapter {name!r}'s head {module!r} has other tensors than the model's (missing "
                f"{missing or 'none'}, extra {extra or 'none'})"
            )
        for key, value in state.items():
            # The output width may differ (2 labels, 3 labels); everything before it must match.
            if value.dim() != expected[key].dim() or tuple(value.shape[1:]) != tuple(expected[key].shape[1:]):
                raise ValueError(
                    f"AdapterBank: adapter {name!r}'s head tensor {module}.{key} has shape {tuple(value.shape)}, the "
                    f"model's has {tuple(expected[key].shape)}"
                )


def _module_or_none(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _detached_state(module: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}
