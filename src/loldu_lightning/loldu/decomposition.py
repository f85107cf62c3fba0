"""LU -> LDU decomposition of a weight matrix, with the row permutation kept as an index vector.

For ``W0`` (m x n, out x in), ``k = min(m, n)``: ``W0 = P L U`` with partial pivoting; with
``d = diag(U)`` and ``U1 = U / d[:, None]`` this is ``W0 = P L diag(d) U1``. We return the first
``r`` components with the permutation already applied to ``L`` (``lower = (P L)[:, :r]``), so the
forward pass never permutes anything, and ``perm`` with ``(P @ M) == M[perm]``. The dense ``m x m``
permutation matrix is never built.

Tiny pivots: a pivot ``d_i`` with ``|d_i| <= max|d| * max(m, n) * eps(decompose dtype)`` (the
tolerance ``torch.linalg.matrix_rank`` uses for singular values; it also catches exact zeros and
the all-zero matrix) is numerically zero. Dividing by it would blow the row of ``U1`` up to inf or
NaN, so that row of ``U`` is kept unnormalised and its ``d`` entry set to 1: ``lower @ diag(d) @
upper`` still reconstructs ``W0`` exactly and every value stays finite.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LDUFactors:
    """The kept components ``lower diag(d) upper`` of one matrix, in the decomposition dtype.

    The LU's are described here; ``decompositions`` gives the SVD's and QR's the same shape.

    lower: ``(P L)[:, :r]``, m x r. diag: ``d[:r]``. upper: ``U1[:r]``, r x n (unit diagonal
    except at tiny pivots). perm: int64, length m, ``(P @ M) == M[perm]``.
    zero_pivots: how many of the kept ``r`` pivots were numerically zero.
    """

    lower: Tensor
    diag: Tensor
    upper: Tensor
    perm: Tensor
    zero_pivots: int

    @property
    def rank(self) -> int:
        return self.diag.numel()

    def reconstruct(self) -> Tensor:
        """``lower @ diag(d) @ upper``: equals W0 when all ``min(m, n)`` components are kept."""
        return (self.lower * self.diag) @ self.upper


def permutation_from_pivots(pivots: Tensor, num_rows: int) -> Tensor:
    """Index vector ``perm`` with ``(P @ M) == M[perm]`` from LAPACK-style 1-based row-swap pivots."""
    rows = list(range(num_rows))
    # LAPACK swaps row i with row pivots[i] - 1, in order; ``rows`` ends as P^T's gather index.
    for i, pivot in enumerate(pivots.tolist()):
        j = pivot - 1
        rows[i], rows[j] = rows[j], rows[i]
    # P^T M = M[rows], hence P M = M[argsort(rows)].
    return torch.argsort(torch.tensor(rows, dtype=torch.int64))


def tiny_pivot_mask(diag: Tensor, shape: tuple[int, int]) -> Tensor:
    """True where a pivot is numerically zero relative to the largest one (see module docstring)."""
    tolerance = diag.abs().max() * max(shape) * torch.finfo(diag.dtype).eps
    return diag.abs() <= tolerance


# Measured (benchmarks/RESULTS.md, section 3): a 768 x 768 CPU LU ran 7x slower on 2 threads than on
# 1 when other processes shared the cores; at 4096 the two were equal. Larger ones keep all threads.
# The SVD and QR paths (``decompositions``) use the same rule: their LAPACK calls share the cores the same way.
_SINGLE_THREAD_LU_MAX_SIDE = 2048


@contextlib.contextmanager
def single_thread_for_small_cpu_matrix(matrix: Tensor):
    """Run a small CPU factorisation on one thread (see the measurement above)."""
    if matrix.device.type != "cpu" or max(matrix.shape) > _SINGLE_THREAD_LU_MAX_SIDE or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def checked_matrix(weight: Tensor, rank: int | None, dtype: torch.dtype, caller: str) -> tuple[Tensor, int]:
    """``(weight as a finite (m, n) matrix in dtype, r)`` after validating the weight, rank and dtype."""
    if weight.dim() != 2:
        raise ValueError(f"{caller}: expected a 2-D weight (out x in), got shape {tuple(weight.shape)}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{caller}: decomposition dtype must be float32 or float64, got {dtype}")
    m, n = weight.shape
    k = min(m, n)
    r = k if rank is None else rank
    if not 1 <= r <= k:
        raise ValueError(f"{caller}: rank must be in [1, {k}] for a {m} x {n} matrix, got {r}")
    matrix = weight.detach().to(dtype)
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{caller}: the {m} x {n} weight contains inf or NaN; it cannot be decomposed")
    return matrix, r


def _checked_lu(weight: Tensor, rank: int | None, dtype: torch.dtype) -> tuple[Tensor, Tensor, int]:
    """``(packed, pivots, r)`` from ``lu_factor_ex`` after validating the weight, rank and dtype."""
    matrix, r = checked_matrix(weight, rank, dtype, "ldu_decompose")
    # lu_factor_ex: singular matrices are valid input here (lu_factor raises on a zero pivot).
    with single_thread_for_small_cpu_matrix(matrix):
        packed, pivots, _ = torch.linalg.lu_factor_ex(matrix)
    return packed, pivots, r


def ldu_decompose(weight: Tensor, rank: int | None = None, dtype: torch.dtype = torch.float32) -> LDUFactors:
    """Decompose ``weight`` (m x n, out x in) and keep the first ``rank`` components (all when None).

    Runs in ``dtype`` (float32 or float64) on the weight's device whatever the weight's own dtype.
    """
    packed, pivots, r = _checked_lu(weight, rank, dtype)
    m, n = weight.shape
    k = min(m, n)
    lower_full = torch.tril(packed[:, :k], diagonal=-1)
    lower_full.diagonal().fill_(1.0)
    upper = torch.triu(packed[:r, :])
    diag = upper.diagonal().clone()

    tiny = tiny_pivot_mask(packed.diagonal(), (m, n))[:r]
    diag = torch.where(tiny, torch.ones_like(diag), diag)
    upper = upper / diag[:, None]

    perm = permutation_from_pivots(pivots.cpu(), m).to(weight.device)
    return LDUFactors(
        lower=lower_full[perm, :r].contiguous(),
        diag=diag,
        upper=upper.contiguous(),
        perm=perm,
        zero_pivots=int(tiny.sum()),
    )


@dataclass(frozen=True)
class PackedLDU:
    """The complete LDU of one matrix in LAPACK's packed layout, in the decomposition dtype.

    packed (m x n): the unit lower ``L`` (m x k) strictly below the diagonal (its ones implied) and
    ``U1`` (k x n) on and above it. ``U1``'s diagonal is 1 except at tiny pivots, whose rows stay
    unnormalised (see the module docstring), so it is stored rather than implied.
    diag: ``d`` (length k). perm: as in ``LDUFactors``. ``W0 = (L diag(d) U1)[perm]``; the first
    ``r`` components are ``L[:, :r]`` and ``U1[:r]``, unpermuted.
    """

    packed: Tensor
    diag: Tensor
    perm: Tensor
    tiny_pivots: Tensor

    @property
    def zero_pivots(self) -> int:
        return int(self.tiny_pivots.sum())

    def reconstruct(self) -> Tensor:
        """``P L diag(d) U1``: W0 up to the rounding of the decomposition."""
        k = self.diag.numel()
        lower = torch.tril(self.packed[:, :k], diagonal=-1)
        lower.diagonal().fill_(1.0)
        return ((lower * self.diag) @ torch.triu(self.packed[:k]))[self.perm]


def ldu_decompose_packed(weight: Tensor, dtype: torch.dtype = torch.float32) -> PackedLDU:
    """All ``min(m, n)`` components of ``weight`` in one packed m x n matrix (see ``PackedLDU``)."""
    packed, pivots, k = _checked_lu(weight, None, dtype)
    m, n = weight.shape
    pivot_values = packed.diagonal().clone()
    tiny = tiny_pivot_mask(pivot_values, (m, n))
    diag = torch.where(tiny, torch.ones_like(pivot_values), pivot_values)
    # Normalise U's rows in place (the strictly lower part, L, is left as it is).
    upper_rows = packed[:k]
    upper_rows.copy_(torch.tril(upper_rows, diagonal=-1) + torch.triu(upper_rows) / diag[:, None])
    perm = permutation_from_pivots(pivots.cpu(), m).to(weight.device)
    return PackedLDU(packed=packed, diag=diag, perm=perm, tiny_pivots=tiny)
