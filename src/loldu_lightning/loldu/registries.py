"""Registries of the named choices a LoLDU config can make.

Configs name choices by short strings (``init: uniform``), never by class or function names, so
renaming code cannot silently break a stored config. Each registry maps the name to the small
function that implements it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

InitFn = Callable[[Tensor, torch.Generator], Tensor]
"""``(d_r, generator) -> z0``: d_r is the float32 CPU diagonal of the kept components."""


def _mean(d: Tensor) -> Tensor:
    return d.mean()


def _std(d: Tensor) -> Tensor:
    # The unbiased std of a single value is NaN; one component has no spread.
    return d.std() if d.numel() > 1 else torch.zeros((), dtype=d.dtype)


def _init_ldu(d: Tensor, generator: torch.Generator) -> Tensor:
    return d.clone()


def _init_constant(d: Tensor, generator: torch.Generator) -> Tensor:
    return torch.full_like(d, float(_mean(d)))


def _init_uniform(d: Tensor, generator: torch.Generator) -> Tensor:
    # U(-mean/2, mean/2) as in the paper; the bounds are sorted so a negative mean works too.
    half = abs(float(_mean(d))) / 2.0
    return (torch.rand(d.shape, generator=generator, dtype=d.dtype) * 2.0 - 1.0) * half


def _init_uniform_unit(d: Tensor, generator: torch.Generator) -> Tensor:
    return torch.rand(d.shape, generator=generator, dtype=d.dtype) * 2.0 - 1.0


def _init_normal(d: Tensor, generator: torch.Generator) -> Tensor:
    noise = torch.randn(d.shape, generator=generator, dtype=d.dtype)
    return noise * _std(d) + _mean(d)


def _init_normal_unit(d: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(d.shape, generator=generator, dtype=d.dtype)


def _init_zeros(d: Tensor, generator: torch.Generator) -> Tensor:
    return torch.zeros_like(d)


def _init_ones(d: Tensor, generator: torch.Generator) -> Tensor:
    return torch.ones_like(d)


INITS: dict[str, InitFn] = {
    "ldu": _init_ldu,
    "constant": _init_constant,
    "uniform": _init_uniform,
    "uniform_unit": _init_uniform_unit,
    "normal": _init_normal,
    "normal_unit": _init_normal_unit,
    "zeros": _init_zeros,
    "ones": _init_ones,
}
"""Initial values of the trainable vector ``z`` (paper Table V)."""

SCALINGS: dict[str, bool] = {"learned": True, "fixed": False, "none": False}
"""Scaling factor sigma: name -> whether sigma is trainable. ``none`` means sigma = 1."""


def initial_sigma(scaling: str, alpha: float, rank: int) -> float:
    """sigma0: ``alpha / rank`` for learned/fixed scaling, 1 for ``none``."""
    return 1.0 if scaling == "none" else alpha / rank


ResidualFn = Callable[[str, Tensor, Tensor], Tensor]
"""``(init name, sigma0 * z0, sigma0 * d_r) -> c``: the frozen vector subtracted in the update."""

AUTHORS_Z0_INITS = frozenset({"ldu", "constant", "uniform", "normal"})
"""Inits for which the authors' released code builds c from the initialised z (model unchanged at
step 0); for the others (ones, zeros, uniform_unit, normal_unit) it builds c from d_r. That split is
where the paper's Table V rows collapse."""


def _residual_authors(init: str, scaled_z0: Tensor, scaled_d: Tensor) -> Tensor:
    return (scaled_z0 if init in AUTHORS_Z0_INITS else scaled_d).clone()


RESIDUALS: dict[str, ResidualFn] = {
    # Residual built from the initialised z: the model is unchanged at step 0 for every init.
    "init": lambda init, scaled_z0, scaled_d: scaled_z0.clone(),
    # Residual built from the decomposition's own diagonal (paper Algorithm 1 as printed).
    "ldu": lambda init, scaled_z0, scaled_d: scaled_d.clone(),
    # The authors' code: "init" for AUTHORS_Z0_INITS, "ldu" for the others (reproduces Table V).
    "authors": _residual_authors,
}

FORWARD_MODES: tuple[str, ...] = ("auto", "factored", "merged")
"""How a LoLDU layer computes its output; see ``forward_cost.choose_forward_path``."""

STORAGES: dict[str, str] = {
    "dense": "P L_r and U_r as two dense matrices beside W0 (r (m + n) numbers)",
    "packed": "L and U1 unpermuted in one m x n LU-packed matrix beside W0 (needs rank = min(m, n))",
    "lu": "the packed LU of W0 replaces W0 itself (m x n numbers in all, any rank)",
}
"""How a layer keeps its frozen factors (see ``layer.LoLDULinear``): name -> what is stored."""

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""Storage dtypes for the frozen factors (None in the config = the base weight's dtype)."""

DECOMPOSE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
"""Precisions the LU decomposition may run in, whatever the weight dtype."""


def check_choice(field: str, value: object, allowed: object) -> None:
    """Raise ValueError naming ``field``, the bad value and the allowed values."""
    names = list(allowed)
    if value not in names:
        raise ValueError(f"LoLDU config: unknown {field} {value!r}; allowed values: {', '.join(map(str, names))}")
