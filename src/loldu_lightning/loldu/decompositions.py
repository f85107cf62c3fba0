"""The factorisation a LoLDU layer trains the diagonal of: ``lu`` (the paper's), ``svd`` or ``qr``.

Each one writes ``W0 = lower @ diag(d) @ upper`` (``k = min(m, n)`` components) and LoLDU trains
``z`` in place of the first ``r`` entries of ``d``; everything else (sigma, c, residual, scaling,
merge, adapter files) is the same for all three (docs/decompositions.md).

- ``lu``: ``W0 = P L diag(d) U1`` with partial pivoting (``decomposition.ldu_decompose``); L unit
  lower, U1 unit upper triangular. The only one whose factors fit LAPACK's packed layout, hence
  the only one the ``packed`` and ``lu`` storages can hold.
- ``svd``: ``W0 = U_s diag(s) V^T``; lower = ``U_s[:, :r]``, d = the top-r singular values, upper =
  ``V^T[:r]`` (SVFit's parametrisation). Signs are made canonical (the largest-magnitude entry of
  each left singular vector positive) so the factors do not depend on the LAPACK build; the update
  itself is invariant to that joint sign anyway.
- ``qr``: Householder ``W0 = Q R`` without column pivoting, R made non-negative on its diagonal
  (joint sign flip of ``Q``'s column and ``R``'s row) and normalised to a unit diagonal like the
  LDU: ``W0 = Q diag(d) R1``, ``d = diag(R)``. No column pivoting, on purpose: LU with partial
  pivoting also eliminates W0's columns in their natural order, so for every r the first r
  components of ``lu`` and ``qr`` span the same column space (that of W0's first r columns) and
  the two arms differ only in the factors' shape (triangular vs orthogonal), which is the
  comparison the ablation asks for. Column pivoting would change the subspace as well, and ``svd``
  already covers the "most important r directions" choice.

Tiny pivots: a diagonal entry ``|d_i| <= max|d| * max(m, n) * eps`` is numerically zero for every
decomposition (``decomposition.tiny_pivot_mask``): its row of ``upper`` keeps the entry
(unnormalised: ``d_i R1_i`` for qr, ``s_i v_i`` for svd) and ``d_i`` becomes 1, exactly as the LU
path does, so ``lower diag(d) upper`` still reconstructs W0, nothing divides by zero, and the
inits and ``residual: ldu`` see the same diagonal convention everywhere.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from .decomposition import (
    LDUFactors,
    checked_matrix,
    ldu_decompose,
    single_thread_for_small_cpu_matrix,
    tiny_pivot_mask,
)


def _identity_perm(m: int, device: torch.device) -> Tensor:
    return torch.arange(m, dtype=torch.int64, device=device)


def _split_tiny(pivots: Tensor, shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """``(d, row_scale, tiny)``: ``d`` is the pivots with tiny ones set to 1; ``row_scale`` is 1
    except at tiny pivots, where it is the pivot (that row of ``upper`` stays unnormalised)."""
    tiny = tiny_pivot_mask(pivots, shape)
    ones = torch.ones_like(pivots)
    return torch.where(tiny, ones, pivots), torch.where(tiny, pivots, ones), tiny


def _first(lower: Tensor, diag: Tensor, upper: Tensor, r: int, zero_pivots: Tensor) -> LDUFactors:
    return LDUFactors(
        lower=lower[:, :r].contiguous(),
        diag=diag[:r].clone(),
        upper=upper[:r].contiguous(),
        perm=_identity_perm(lower.shape[0], lower.device),
        zero_pivots=int(zero_pivots[:r].sum()),
    )


def svd_decompose(weight: Tensor, rank: int | None = None, dtype: torch.dtype = torch.float32) -> LDUFactors:
    """Top-``rank`` SVD components of ``weight`` (m x n, out x in) as ``LDUFactors`` (see module docstring)."""
    matrix, r = checked_matrix(weight, rank, dtype, "svd_decompose")
    with single_thread_for_small_cpu_matrix(matrix):
        left, values, right = torch.linalg.svd(matrix, full_matrices=False)
    largest = left.abs().argmax(dim=0, keepdim=True)
    signs = torch.where(left.gather(0, largest) < 0, -1.0, 1.0).to(left.dtype)
    diag, row_scale, tiny = _split_tiny(values, tuple(matrix.shape))
    # V^T's rows are already unit vectors: only tiny singular values are folded back into theirs.
    upper = right * signs.t() * row_scale[:, None]
    return _first(left * signs, diag, upper, r, tiny)


def qr_decompose(weight: Tensor, rank: int | None = None, dtype: torch.dtype = torch.float32) -> LDUFactors:
    """First ``rank`` components of ``W0 = Q diag(d) R1`` (m x n, out x in) as ``LDUFactors``."""
    matrix, r = checked_matrix(weight, rank, dtype, "qr_decompose")
    with single_thread_for_small_cpu_matrix(matrix):
        q, upper = torch.linalg.qr(matrix, mode="reduced")
    signs = torch.where(upper.diagonal() < 0, -1.0, 1.0).to(upper.dtype)
    q, upper = q * signs, upper * signs[:, None]
    pivots = upper.diagonal().clone()
    diag, _, tiny = _split_tiny(pivots, tuple(matrix.shape))
    return _first(q, diag, upper / diag[:, None], r, tiny)


class Decomposition(abc.ABC):
    """One factorisation choice: how to split W0 into ``lower diag(d) upper``, and where it fits."""

    name: ClassVar[str]
    description: ClassVar[str]
    storages: ClassVar[frozenset[str]]
    """The factor storages (``storage.STORAGE_TYPES``) that can hold this decomposition's factors."""
    lr_scale: ClassVar[float]
    """The multiplier of the run's learning rate for z and sigma (``LoLDUConfig.lr_scale``'s default).

    Adam moves each ``z_i`` by about the rate per step, and that moves the weight by the norm of
    the component ``||lower_i|| ||upper_i||``: a median of 28.5 for ``lu``, 1 for ``svd`` and 1.57
    for ``qr`` on the real MiniLM's query/value matrices (docs/results/defaults_study/). The scales
    give ``svd`` and ``qr`` the weight change per step an LU component gets at the same rate, rounded
    to the rates the defaults study ran (1e-3 x 30 and x 20)."""

    @abc.abstractmethod
    def decompose(self, weight: Tensor, rank: int, dtype: torch.dtype) -> LDUFactors:
        """The first ``rank`` components of the (out, in) ``weight``, computed in ``dtype``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LUDecomposition(Decomposition):
    name = "lu"
    description = "W0 = P L diag(d) U1, LU with partial pivoting (the paper's)"
    storages = frozenset({"dense", "packed", "lu"})
    lr_scale = 1.0

    def decompose(self, weight: Tensor, rank: int, dtype: torch.dtype) -> LDUFactors:
        return ldu_decompose(weight, rank, dtype)


class SVDDecomposition(Decomposition):
    name = "svd"
    description = "W0 = U diag(s) V^T; trains the top-r singular values"
    storages = frozenset({"dense"})
    lr_scale = 30.0

    def decompose(self, weight: Tensor, rank: int, dtype: torch.dtype) -> LDUFactors:
        return svd_decompose(weight, rank, dtype)


class QRDecomposition(Decomposition):
    name = "qr"
    description = "W0 = Q diag(d) R1, Householder QR (no column pivoting), R normalised to a unit diagonal"
    storages = frozenset({"dense"})
    lr_scale = 20.0

    def decompose(self, weight: Tensor, rank: int, dtype: torch.dtype) -> LDUFactors:
        return qr_decompose(weight, rank, dtype)


DECOMPOSITIONS: dict[str, Decomposition] = {
    variant.name: variant for variant in (LUDecomposition(), SVDDecomposition(), QRDecomposition())
}
"""The ``decomposition`` config choices, by name."""
