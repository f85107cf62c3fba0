"""The LoLDU configuration: a validated, JSON-safe dataclass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .decompositions import DECOMPOSITIONS
from .registries import DECOMPOSE_DTYPES, DTYPES, FORWARD_MODES, INITS, RESIDUALS, SCALINGS, STORAGES, check_choice

TargetSpec = str | tuple[str, ...]


def _option(help: str, choices: Any = None) -> dict[str, Any]:
    """A LoLDUConfig field's metadata: what it means and, for a named choice, the registry of allowed
    names (read when listed, so a registered name is listed too). PEFT's config, `--help` and the options
    page read both from here (`option_help`)."""
    return {"help": help, "choices": choices}


def option_help(name: str, with_choices: bool = True) -> str:
    """The help of LoLDUConfig's option `name`, ending with its allowed names where it has them."""
    metadata = next(f for f in dataclasses.fields(LoLDUConfig) if f.name == name).metadata
    choices = metadata.get("choices")
    if not with_choices or not choices:
        return metadata["help"]
    return f"{metadata['help']}; one of: {' | '.join(sorted(choices))}"


def _normalise_targets(name: str, value: Any, allow_none: bool) -> TargetSpec | None:
    """A string stays a string (regex or ``all-linear``); any other sequence becomes a tuple of names."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"LoLDU config: {name} must be a module name list or a regex string, got None")
    if isinstance(value, str):
        if not value:
            raise ValueError(f"LoLDU config: {name} is an empty string; give module names such as ['query', 'value']")
        return value
    if isinstance(value, Sequence) or hasattr(value, "__iter__"):
        names = tuple(value)
        if not names or not all(isinstance(item, str) and item for item in names):
            raise ValueError(f"LoLDU config: {name} must be a non-empty list of non-empty strings, got {value!r}")
        return names
    raise ValueError(
        f"LoLDU config: {name} must be a list of module names or a regex string, got {type(value).__name__}"
    )


def _positive_or_none(name: str, value: Any, none_means: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"LoLDU config: {name} must be a positive number or None (= {none_means}), got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"LoLDU config: {name} must be a positive finite number or None (= {none_means}), got {value}")
    return float(value)


@dataclass
class LoLDUConfig:
    """Everything that defines a LoLDU adapter.

    rank: components kept per matrix, an int >= 1 or ``"full"`` (= min(out, in) of each matrix).
    alpha: sigma0 = alpha / rank; None means alpha = rank (sigma0 = 1).
    init / scaling / residual / forward_mode: names from the registries in ``registries.py``.
    target_modules / exclude_modules: a list (a module matches when its qualified name equals an
        entry or ends with ``.<entry>``), a regex string (``re.fullmatch``), or ``"all-linear"``.
    dtype: storage dtype of the frozen factors; None = the base weight's dtype.
    seed: base of the per-module seeds of the random inits.
    decompose_dtype: precision of the LU decomposition (float32 or float64).
    save_factors: also store L, U and the permutation in adapter files (bit-exact portability).
    storage: how the frozen factors are kept (``registries.STORAGES``): ``dense`` (default),
        ``packed`` (one m x n LU-packed matrix, full rank only) or ``lu`` (the packed LU replaces W0).
    decomposition: whose diagonal is trained (``decompositions.DECOMPOSITIONS``): ``lu`` (default,
        the paper's), ``svd`` (top-r singular values) or ``qr`` (diagonal of R); docs/decompositions.md.
    lr_scale: the multiplier of the training learning rate for z and sigma (the head keeps the
        rate); None = the decomposition's own (``Decomposition.lr_scale``: lu 1, svd 30, qr 20),
        which gives each decomposition's components the same weight change per step at one rate.
        The library does not build optimizers; ``resolve_lr_scale`` is what a trainer reads.
    """

    rank: int | str = dataclasses.field(
        metadata=_option("components kept per matrix: an integer >= 1, or 'full' (= min(out, in) of each matrix)")
    )
    alpha: float | None = dataclasses.field(
        default=None, metadata=_option("sigma0 = alpha / rank; null means alpha = rank (sigma0 = 1)")
    )
    init: str = dataclasses.field(default="uniform", metadata=_option("how z starts (the paper's Table V)", INITS))
    scaling: str = dataclasses.field(
        default="learned",
        metadata=_option("sigma: trained from alpha / rank (learned), that constant (fixed) or 1 (none)", SCALINGS),
    )
    residual: str = dataclasses.field(
        default="init",
        metadata=_option(
            "the frozen c: from the initial z, the model unchanged at step 0 (init); from d_r, Algorithm 1 as "
            "printed (ldu); as the authors' released code (authors)",
            RESIDUALS,
        ),
    )
    target_modules: TargetSpec = dataclasses.field(
        default=("query", "value"),
        metadata=_option("modules adapted: names (exact or '.'-suffix), a regex (full match) or 'all-linear'"),
    )
    exclude_modules: TargetSpec | None = dataclasses.field(
        default=None, metadata=_option("modules never adapted, in target_modules' forms")
    )
    dtype: str | None = dataclasses.field(
        default=None, metadata=_option("storage dtype of the frozen factors; null = the base weight's", DTYPES)
    )
    forward_mode: str = dataclasses.field(
        default="auto",
        metadata=_option("factored (per token), merged (once per step) or auto (chosen per layer)", FORWARD_MODES),
    )
    seed: int = dataclasses.field(default=0, metadata=_option("base of the per-module seeds of the random inits"))
    decompose_dtype: str = dataclasses.field(
        default="float32", metadata=_option("precision of the decomposition", DECOMPOSE_DTYPES)
    )
    save_factors: bool = dataclasses.field(
        default=False, metadata=_option("also store L, U and the permutation in adapter files (bit-exact portability)")
    )
    storage: str = dataclasses.field(
        default="dense",
        metadata=_option(
            "how the frozen factors are kept: P L_r, U_r beside W0 (dense), one m x n LU matrix beside W0 "
            "(packed, full rank) or the LU replacing W0 (lu); docs/factor_storage.md",
            STORAGES,
        ),
    )
    decomposition: str = dataclasses.field(
        default="lu",
        metadata=_option(
            "whose diagonal is trained: the paper's LU, the top-r singular values (svd) or R's diagonal (qr); "
            "docs/decompositions.md",
            DECOMPOSITIONS,
        ),
    )
    lr_scale: float | None = dataclasses.field(
        default=None,
        metadata=_option(
            "z and sigma train at the learning rate x this (the head keeps the rate); null = the decomposition's "
            "own (lu 1, svd 30, qr 20: the same weight change per step)"
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not (isinstance(self.rank, int) or self.rank == "full"):
            raise ValueError(f"LoLDU config: rank must be an integer >= 1 or 'full', got {self.rank!r}")
        if isinstance(self.rank, int) and self.rank < 1:
            raise ValueError(f"LoLDU config: rank must be >= 1 (or 'full'), got {self.rank}")
        self.alpha = _positive_or_none("alpha", self.alpha, "rank")
        check_choice("init", self.init, INITS)
        check_choice("scaling", self.scaling, SCALINGS)
        check_choice("residual", self.residual, RESIDUALS)
        check_choice("forward_mode", self.forward_mode, FORWARD_MODES)
        check_choice("decompose_dtype", self.decompose_dtype, DECOMPOSE_DTYPES)
        check_choice("storage", self.storage, STORAGES)
        check_choice("decomposition", self.decomposition, DECOMPOSITIONS)
        fitting = DECOMPOSITIONS[self.decomposition].storages
        if self.storage not in fitting:
            raise ValueError(
                f"LoLDU config: storage {self.storage!r} keeps the factors in LAPACK's packed LU layout, which only "
                f"decomposition 'lu' produces, got decomposition {self.decomposition!r}; set decomposition 'lu' with "
                f"it, or use storage {' or '.join(repr(name) for name in sorted(fitting))}"
            )
        self.lr_scale = _positive_or_none("lr_scale", self.lr_scale, "the decomposition's own")
        if self.storage == "lu" and self.dtype in ("float16", "bfloat16"):
            # Measured (benchmarks/RESULTS.md, section 5): a 4096 x 4096 W0 rebuilt from bfloat16 LU
            # factors is off by 30% (relative Frobenius), from float32 ones by 1e-5.
            raise ValueError(
                f"LoLDU config: storage 'lu' replaces W0 by its LU factors, which need float32: in {self.dtype} they "
                "reproduce W0 only to ~10-30% (pivot growth); drop dtype (lu keeps float32 factors) or use storage 'dense'"
            )
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPES)
        self.target_modules = _normalise_targets("target_modules", self.target_modules, allow_none=False)
        self.exclude_modules = _normalise_targets("exclude_modules", self.exclude_modules, allow_none=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"LoLDU config: seed must be an integer, got {self.seed!r}")
        if not isinstance(self.save_factors, bool):
            raise ValueError(f"LoLDU config: save_factors must be true or false, got {self.save_factors!r}")

    def resolve_rank(self, max_rank: int) -> int:
        """The rank for a matrix whose ``min(out, in)`` is ``max_rank``."""
        return max_rank if self.rank == "full" else int(self.rank)

    def resolve_lr_scale(self) -> float:
        """The multiplier of the learning rate for z and sigma (None in the config: the decomposition's)."""
        return DECOMPOSITIONS[self.decomposition].lr_scale if self.lr_scale is None else self.lr_scale

    def resolve_alpha(self, rank: int) -> float:
        """alpha for a matrix adapted at ``rank`` (None in the config means alpha = rank)."""
        return float(rank) if self.alpha is None else float(self.alpha)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        for key in ("target_modules", "exclude_modules"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoLDUConfig:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"LoLDU config: unknown field(s) {unknown}; allowed fields: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the config fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))
