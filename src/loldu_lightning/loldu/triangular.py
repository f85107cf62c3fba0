"""Block-triangular products with the factors of an LU-packed matrix.

A packed matrix ``F`` (m x n, ``k = min(m, n)``) holds the unit lower factor ``L`` (m x k) strictly
below its diagonal (the unit diagonal is implied) and the upper factor ``U`` (k x n) on and above
it: LAPACK's ``getrf`` layout. The first ``c`` components are ``L[:, :c]`` and ``U[:c]``.

About half of every product with a triangle multiplies zeros. Each function here splits the
triangle into blocks of ``block`` rows or columns and skips the blocks that are entirely zero: a
product with ``nb`` diagonal blocks does ``(nb + 1) / (2 nb)`` of the dense work on the triangle
(the rectangle below or right of it is dense anyway), and ``L diag(s) U`` about a third. Only the
diagonal blocks are copied (masked with ``tril``/``triu``); every other block is a strided view
that BLAS reads in place.

Products are feature-major: the right-hand side is ``(features, tokens)``, so every block of the
result is a contiguous row slice that BLAS writes in place (no copies, no concatenation). A
token-major ``x`` (tokens x n) is passed as the free view ``x.t()``.

All inputs must share one dtype and device; callers cast the packed matrix once per call.
"""

from __future__ import annotations

import torch
from torch import Tensor

TARGET_BLOCKS = 8
"""Diagonal blocks per triangle: (8 + 1) / 16 = 56% of the dense work on the triangle."""
MIN_BLOCK = 128
"""Smaller blocks cost more in BLAS call overhead than the zeros they skip."""


def block_size(components: int) -> int:
    """Rows per diagonal block for a triangle of side ``components``."""
    return max(MIN_BLOCK, -(-components // TARGET_BLOCKS))


def _blocks(components: int, block: int | None):
    step = block or block_size(components)
    for start in range(0, components, step):
        yield start, min(start + step, components)


def _unit_lower_panel(packed: Tensor, start: int, stop: int) -> Tensor:
    """``L[start:, start:stop]`` as a new tensor: zeros above the diagonal, ones on it."""
    panel = torch.tril(packed[start:, start:stop], diagonal=-1)
    panel.diagonal().fill_(1)
    return panel


def upper_mm(packed: Tensor, x_t: Tensor, components: int, block: int | None = None) -> Tensor:
    """``U[:c] @ x_t``: (c, tokens) from ``x_t`` (n, tokens)."""
    n = packed.shape[1]
    out = x_t.new_empty(components, x_t.shape[1])
    for i0, i1 in _blocks(components, block):
        rows = out[i0:i1]
        torch.mm(torch.triu(packed[i0:i1, i0:i1]), x_t[i0:i1], out=rows)
        if i1 < n:
            rows.addmm_(packed[i0:i1, i1:], x_t[i1:])
    return out


def lower_mm(packed: Tensor, s_t: Tensor, components: int, block: int | None = None) -> Tensor:
    """``L[:, :c] @ s_t``: (m, tokens) from ``s_t`` (c, tokens)."""
    m = packed.shape[0]
    out = s_t.new_empty(m, s_t.shape[1])
    for i0, i1 in _blocks(components, block):
        rows = out[i0:i1]
        torch.mm(torch.tril(packed[i0:i1, i0:i1], diagonal=-1), s_t[i0:i1], out=rows)
        rows += s_t[i0:i1]  # the unit diagonal
        if i0:
            rows.addmm_(packed[i0:i1, :i0], s_t[:i0])
    if components < m:
        torch.mm(packed[components:, :components], s_t, out=out[components:])
    return out


def lower_t_mm(packed: Tensor, g_t: Tensor, components: int, block: int | None = None) -> Tensor:
    """``L[:, :c]^T @ g_t``: (c, tokens) from ``g_t`` (m, tokens)."""
    m = packed.shape[0]
    out = g_t.new_empty(components, g_t.shape[1])
    for j0, j1 in _blocks(components, block):
        rows = out[j0:j1]
        torch.mm(torch.tril(packed[j0:j1, j0:j1], diagonal=-1).t(), g_t[j0:j1], out=rows)
        rows += g_t[j0:j1]
        if j1 < m:
            rows.addmm_(packed[j1:, j0:j1].t(), g_t[j1:])
    return out


def upper_t_mm(packed: Tensor, h_t: Tensor, components: int, block: int | None = None) -> Tensor:
    """``U[:c]^T @ h_t``: (n, tokens) from ``h_t`` (c, tokens)."""
    n = packed.shape[1]
    out = h_t.new_empty(n, h_t.shape[1])
    for j0, j1 in _blocks(components, block):
        rows = out[j0:j1]
        torch.mm(torch.triu(packed[j0:j1, j0:j1]).t(), h_t[j0:j1], out=rows)
        if j0:
            rows.addmm_(packed[:j0, j0:j1].t(), h_t[:j0])
    if components < n:
        torch.mm(packed[:components, components:].t(), h_t, out=out[components:])
    return out


def lower_scaled_upper(packed: Tensor, scale: Tensor, block: int | None = None) -> Tensor:
    """``L[:, :c] diag(scale) U[:c]`` (m x n) with ``c = len(scale)``: rank-``block`` updates of the
    trailing submatrix, each skipping the rows above and the columns left of its block."""
    m, n = packed.shape
    out = packed.new_zeros(m, n)
    for k0, k1 in _blocks(scale.numel(), block):
        lower = _unit_lower_panel(packed, k0, k1).mul_(scale[k0:k1])
        out[k0:, k0:].addmm_(lower, torch.triu(packed[k0:k1, k0:]))
    return out


def diag_of_lower_t_gram_upper(packed: Tensor, gram: Tensor, components: int, block: int | None = None) -> Tensor:
    """``rowsum((L[:, :c]^T @ gram) * U[:c])`` (length c) for an (m x n) ``gram`` (unpermuted rows).

    Row block ``j`` of ``L^T gram`` only meets the columns ``>= j0`` of ``U``, and ``L^T`` only reads
    the rows ``>= j0`` of ``gram``: a third of the dense ``L^T @ gram`` at full rank."""
    out = gram.new_empty(components)
    for j0, j1 in _blocks(components, block):
        partial = _unit_lower_panel(packed, j0, j1).t() @ gram[j0:, j0:]
        out[j0:j1] = (partial * torch.triu(packed[j0:j1, j0:])).sum(dim=1)
    return out
