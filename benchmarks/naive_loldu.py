"""The naive LoLDU formulation, kept here only as the benchmark's slow reference.

It mirrors the style of the paper's public code: a ``torch.nn.utils.parametrize`` parametrization
that stores the permutation as a dense ``m x m`` matrix and, on every forward, rebuilds the whole
``m x n`` weight as ``R + sigma * P @ L_r @ diag(z) @ U_r`` (evaluated left to right, as written),
with the frozen residual ``R = W0 - sigma0 * P L_r diag(z0) U_r`` replacing the base weight.
The library never does this (see docs/design.md section 2); the benchmark measures what that costs.

``decomposition`` (``lu``, default; ``svd``; ``qr``) picks the factorisation written the same naive
way, straight from ``torch.linalg`` (no sign conventions, no pivot tolerance), so the tests can
compare every variant of the library against an independent formulation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize


def _naive_factors(matrix: torch.Tensor, decomposition: str) -> tuple[torch.Tensor, ...]:
    """``(P, lower, d, unit upper)`` with ``matrix = P @ lower @ diag(d) @ upper``, P dense."""
    if decomposition == "lu":
        permutation, lower, upper = torch.linalg.lu(matrix)
    elif decomposition == "svd":
        lower, values, right = torch.linalg.svd(matrix, full_matrices=False)
        return torch.eye(matrix.shape[0], dtype=matrix.dtype), lower, values, right
    elif decomposition == "qr":
        permutation = torch.eye(matrix.shape[0], dtype=matrix.dtype)
        lower, upper = torch.linalg.qr(matrix)
    else:
        raise ValueError(f"naive LDU: unknown decomposition {decomposition!r}; allowed: lu, svd, qr")
    pivots = upper.diagonal()
    # A zero pivot would divide by zero; keep that row unnormalised (d = 1) as the library does.
    pivots = torch.where(pivots.abs() > torch.finfo(pivots.dtype).tiny, pivots, torch.ones_like(pivots))
    return permutation, lower, pivots, upper / pivots[:, None]


class NaiveLDUParametrization(nn.Module):
    """``weight = residual + sigma * P @ L_r @ diag(z) @ U_r`` with a dense permutation matrix."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, decomposition: str = "lu") -> None:
        super().__init__()
        out_features, in_features = weight.shape
        if not 1 <= rank <= min(out_features, in_features):
            raise ValueError(
                f"naive LDU rank must be in [1, {min(out_features, in_features)}] for a {tuple(weight.shape)} weight, got {rank}"
            )
        # float32 at least (float64 weights stay float64, so tests can compare tightly).
        matrix = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
        permutation, lower, pivots, unit_upper = _naive_factors(matrix, decomposition)
        self.register_buffer("permutation", permutation.to(weight.dtype))
        self.register_buffer("lower", lower[:, :rank].to(weight.dtype).contiguous())
        self.register_buffer("upper", unit_upper[:rank].to(weight.dtype).contiguous())
        self.z = nn.Parameter(pivots[:rank].to(weight.dtype).clone())
        self.sigma = nn.Parameter(torch.tensor(alpha / rank, dtype=weight.dtype))

    def update(self) -> torch.Tensor:
        """The dense ``m x n`` update, computed exactly as the reference code writes it."""
        return self.sigma * self.permutation @ self.lower @ torch.diag(self.z) @ self.upper

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return residual + self.update()


def attach_naive_ldu(layer: nn.Linear, rank: int, alpha: float, decomposition: str = "lu") -> NaiveLDUParametrization:
    """Parametrize ``layer.weight`` in place; the original weight tensor itself is left untouched."""
    parametrization = NaiveLDUParametrization(layer.weight, rank, alpha, decomposition)
    with torch.no_grad():
        residual = layer.weight.detach() - parametrization.update()
    # A new Parameter, so a base weight shared with other benchmark variants is never modified.
    layer.weight = nn.Parameter(residual, requires_grad=False)
    parametrize.register_parametrization(layer, "weight", parametrization)
    return parametrization


def apply_naive_ldu(model: nn.Module, target_modules: tuple[str, ...], rank: int, alpha: float) -> int:
    """Parametrize every ``nn.Linear`` whose attribute name is in ``target_modules``; returns the count."""
    targets = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in target_modules
    ]
    if not targets:
        raise ValueError(f"no nn.Linear named any of {target_modules} in {type(model).__name__}")
    for layer in targets:
        attach_naive_ldu(layer, rank, alpha)
    return len(targets)
