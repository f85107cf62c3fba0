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
