"""Flop model that picks between the two exact LoLDU forward paths.

Extra cost over the frozen base layer, for an ``m x n`` (out x in) matrix, rank ``r`` and ``T``
tokens (``T = x.numel() / n``), counting a multiply-add as 2 flops:

factored: ``y = base(x) + ((x @ U^T) * v) @ L^T`` costs ``2 r (m + n) T`` forward; training adds
``2 r (m + n) T`` for the input gradient and ``2 r m T`` for the gradient of ``v``.

merged: ``W = W0 + (L * v) @ U`` costs ``2 m n r`` per call and nothing per token forward. Its
backward picks the cheaper of two exact formulas for each gradient (see ``merged_function``):
input gradient ``min(2 m n r, 2 r (m + n) T)``, gradient of ``v`` ``min(2 T m n + 2 m n r,
2 r (m + n) T)``.

``auto`` takes the cheaper path for the call at hand (ties go to factored, which allocates
nothing of size m x n). Without gradients only the forward terms count. Nothing is cached between
calls: for inference without any per-call overhead, ``merge(model)`` folds the update in once.
"""

from __future__ import annotations


def recompute_weight_for_input_grad(m: int, n: int, r: int, tokens: int) -> bool:
    """True when rebuilding W (``m n r``) is cheaper than the two thin products (``r (m + n) T``)."""
    return m * n * r < r * (m + n) * tokens


def gram_for_scale_grad(m: int, n: int, r: int, tokens: int) -> bool:
    """True when ``diag(L^T (g^T x) U^T)`` beats the per-token ``sum_t (g L) * (x U^T)``."""
    return tokens * m * n + m * n * r < r * (m + n) * tokens


def factored_extra_flops(m: int, n: int, r: int, tokens: int, needs_grad: bool) -> int:
    forward = 2 * r * (m + n) * tokens
    if not needs_grad:
        return forward
    return forward + 2 * r * (m + n) * tokens + 2 * r * m * tokens


def merged_extra_flops(m: int, n: int, r: int, tokens: int, needs_grad: bool) -> int:
    forward = 2 * m * n * r
    if not needs_grad:
        return forward
    input_grad = 2 * min(m * n * r, r * (m + n) * tokens)
    scale_grad = 2 * min(tokens * m * n + m * n * r, r * (m + n) * tokens)
    return forward + input_grad + scale_grad


def choose_forward_path(m: int, n: int, r: int, tokens: int, needs_grad: bool) -> str:
    """``"factored"`` or ``"merged"``, whichever adds fewer flops for this call."""
    merged = merged_extra_flops(m, n, r, tokens, needs_grad)
    factored = factored_extra_flops(m, n, r, tokens, needs_grad)
    return "merged" if merged < factored else "factored"


# --- packed storages (``storage: packed`` / ``lu``): triangular factors, block-triangular products ---
#
# Multiply-adds are counted on the nonzeros of the triangles (the block-triangular products in
# ``triangular`` do slightly more: the masked diagonal blocks). ``components`` is r for ``packed``
# and k = min(m, n) for ``lu``, whose factors also carry W0 (there is no separate base product).


def triangular_product_macs(m: int, n: int, components: int) -> int:
    """Per token: ``U[:c] x`` plus ``L[:, :c] s`` (one product each way)."""
    c = components
    return c * (m + n) - c * (c - 1)


def triangular_build_macs(m: int, n: int, components: int) -> int:
    """``L[:, :c] diag(s) U[:c]`` built block by block: ``sum_{l<c} (m - l)(n - l)``."""
    c = components
    return c * m * n - (m + n) * c * (c - 1) // 2 + (c - 1) * c * (2 * c - 1) // 6


def packed_path_flops(m: int, n: int, r: int, tokens: int, needs_grad: bool, full: bool) -> dict[str, int]:
    """Total flops of each path (base product included) for a packed-storage layer.

    ``full``: ``lu`` storage (the factors hold all k components and stand in for W0); else the
    ``packed`` storage, whose W0 is a separate dense product.
    """
    c = min(m, n) if full else r
    base = 0 if full else 2 * m * n * tokens
    factored = base + 2 * triangular_product_macs(m, n, c) * tokens
    build = 2 * triangular_build_macs(m, n, c)
    merged = build + 2 * m * n * tokens
    if needs_grad:
        factored *= 2  # the input gradient runs the same products transposed; v's gradient is elementwise
        input_grad = min(build + 2 * m * n * tokens, base + 2 * triangular_product_macs(m, n, c) * tokens)
        scale_grad = min(
            2 * tokens * m * n + 2 * triangular_build_macs(m, n, r), 2 * triangular_product_macs(m, n, r) * tokens
        )
        merged += input_grad + scale_grad
    return {"factored": factored, "merged": merged}


def choose_packed_path(m: int, n: int, r: int, tokens: int, needs_grad: bool, full: bool) -> str:
    """``"factored"`` or ``"merged"`` for a packed-storage layer, whichever costs fewer flops."""
    costs = packed_path_flops(m, n, r, tokens, needs_grad, full)
    return "merged" if costs["merged"] < costs["factored"] else "factored"


def recompute_packed_weight_for_input_grad(m: int, n: int, r: int, tokens: int, full: bool) -> bool:
    """Merged path of a packed storage: rebuild W for ``g @ W``, or run the thin products?"""
    c = min(m, n) if full else r
    base = 0 if full else m * n * tokens
    return triangular_build_macs(m, n, c) + m * n * tokens < base + triangular_product_macs(m, n, c) * tokens


def packed_gram_for_scale_grad(m: int, n: int, r: int, tokens: int) -> bool:
    """Merged path of a packed storage: v's gradient from ``g^T x`` or per token?"""
    return tokens * m * n + triangular_build_macs(m, n, r) < triangular_product_macs(m, n, r) * tokens
