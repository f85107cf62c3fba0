"""The LoLDU forward for the packed storages (``storage: packed`` and ``lu``) as one autograd Function.

The factors live unpermuted in one LU-packed m x n matrix (see ``triangular``), so every product
with them is block-triangular, and the permutation is a row gather of the (feature-major) result:
``P M == M[perm]``, ``P^T M == M[inv_perm]``.

Computed (``s`` = the length-c scale vector, ``base`` = ``x W0^T`` when a separate W0 is given)::

    packed:  y = [base] + (L[:, :r] diag(v) U1[:r] x)[perm] + bias            s = v,     c = r
    lu:      y = (L diag(d + [v, 0]) U1 x)[perm] + bias   (W0 is the factors) s = d + v, c = k

Paths: ``factored`` (two triangular products per token; backward runs them transposed and takes
v's gradient elementwise from products it computes anyway) or ``merged`` (builds the m x n weight
with the block-triangular ``L diag(s) U``, a third of the dense flops at full rank). Backward keeps
no m x n tensor alive: it saves x (merged) or ``U1[:r] x`` (factored, r x tokens).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .forward_cost import packed_gram_for_scale_grad, recompute_packed_weight_for_input_grad
from .merged_function import autocast_disabled
from .triangular import diag_of_lower_t_gram_upper, lower_mm, lower_scaled_upper, lower_t_mm, upper_mm, upper_t_mm


def component_scale(scale: Tensor, diag: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``v`` (packed) or ``d + [v, 0, ...]`` (lu): the diagonal multiplying the kept components."""
    if diag is None:
        return scale.to(dtype)
    full = diag.to(dtype).clone()
    full[: scale.numel()] += scale.to(dtype)
    return full


def packed_weight(packed: Tensor, inv_perm: Tensor, weight: Tensor | None, scale: Tensor) -> Tensor:
    """``W0 + P L diag(s) U`` (or ``P L diag(s) U`` without W0) as a new m x n tensor."""
    delta = lower_scaled_upper(packed, scale)
    if weight is None:
        # P M == M[perm]; index_copy with inv_perm writes row j of delta to row inv_perm[j], the same.
        return torch.empty_like(delta).index_copy_(0, inv_perm, delta)
    return weight.to(delta.dtype).index_add(0, inv_perm, delta)


class PackedLoLDULinear(torch.autograd.Function):
    """See the module docstring; ``path`` is ``"factored"`` or ``"merged"``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        packed: Tensor,
        perm: Tensor,
        inv_perm: Tensor,
        diag: Tensor | None,
        path: str,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        m, n = packed.shape
        r = scale.numel()
        with autocast_disabled(x.device.type):
            factors = packed.to(compute_dtype)
            s = component_scale(scale, diag, compute_dtype)
            inputs = x.reshape(-1, n).to(compute_dtype)
            bias_c = None if bias is None else bias.to(compute_dtype)
            if path == "merged":
                out = F.linear(inputs, packed_weight(factors, inv_perm, weight, s), bias_c)
                saved_hidden = None
            else:
                hidden = upper_mm(factors, inputs.t(), s.numel())
                out = lower_mm(factors, hidden * s[:, None], s.numel()).index_select(0, perm).t()
                if weight is not None:
                    out = torch.addmm(out, inputs, weight.to(compute_dtype).t())
                if bias_c is not None:
                    out = out + bias_c
                # Only U1[:r] x is needed for v's gradient; a view would keep all k rows alive.
                saved_hidden = hidden[:r].clone() if r < hidden.shape[0] else hidden
        ctx.save_for_backward(
            x if path == "merged" else None, saved_hidden, scale, weight, packed, perm, inv_perm, diag
        )
        ctx.path, ctx.compute_dtype, ctx.input_dtype = path, compute_dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out.reshape(*x.shape[:-1], m)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, hidden, scale, weight, packed, perm, inv_perm, diag = ctx.saved_tensors
        needs_x, needs_scale, needs_weight, needs_bias = ctx.needs_input_grad[:4]
        dtype, merged = ctx.compute_dtype, ctx.path == "merged"
        m, n = packed.shape
        r = scale.numel()
        full = diag is not None
        grad_x = grad_scale = grad_weight = grad_bias = None

        with autocast_disabled(grad_out.device.type):
            factors = packed.to(dtype)
            s = component_scale(scale, diag, dtype)
            c = s.numel()
            g = grad_out.to(dtype).reshape(-1, m)
            tokens = g.shape[0]
            inputs = x.reshape(-1, n).to(dtype) if merged else None
            # dL/d(L s U x) before the row permutation: P^T g, feature-major (m x tokens).
            g_unperm = g.t().index_select(0, inv_perm)
            lower_t_g = None  # L[:, :c]^T P^T g, shared by the input and the scale gradients

            if needs_x:
                if merged and recompute_packed_weight_for_input_grad(m, n, r, tokens, full):
                    grad_x = g @ packed_weight(factors, inv_perm, weight, s)
                else:
                    lower_t_g = lower_t_mm(factors, g_unperm, c)
                    grad_x = upper_t_mm(factors, lower_t_g * s[:, None], c).t()
                    if weight is not None:
                        grad_x = torch.addmm(grad_x, g, weight.to(dtype))
                grad_x = grad_x.reshape(x.shape if merged else (*grad_out.shape[:-1], n)).to(ctx.input_dtype)

            gram = None
            if needs_scale:
                if merged and packed_gram_for_scale_grad(m, n, r, tokens):
                    gram = g.t() @ inputs
                    grad_scale = diag_of_lower_t_gram_upper(factors, gram.index_select(0, inv_perm), r).float()
                else:
                    hidden_r = hidden if hidden is not None else upper_mm(factors, inputs.t(), r)
                    lower_t_g_r = lower_t_g[:r] if lower_t_g is not None else lower_t_mm(factors, g_unperm, r)
                    grad_scale = (lower_t_g_r.float() * hidden_r.float()).sum(dim=1)
                grad_scale = grad_scale.to(scale.dtype)
            if needs_weight:
                if inputs is None:
                    raise RuntimeError(
                        "PackedLoLDULinear: a trainable W0 needs the merged path (the factored one adds W0 outside)"
                    )
                gram = g.t() @ inputs if gram is None else gram
                grad_weight = gram.to(weight.dtype)
            if needs_bias:
                grad_bias = g.sum(dim=0).to(ctx.bias_dtype)
        return grad_x, grad_scale, grad_weight, grad_bias, None, None, None, None, None, None


def packed_linear(
    x: Tensor,
    scale: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    packed: Tensor,
    perm: Tensor,
    inv_perm: Tensor,
    diag: Tensor | None,
    path: str,
    compute_dtype: torch.dtype,
) -> Tensor:
    """Functional entry point of ``PackedLoLDULinear``."""
    return PackedLoLDULinear.apply(x, scale, weight, bias, packed, perm, inv_perm, diag, path, compute_dtype)
