"""The merged LoLDU forward as an autograd Function that keeps no ``m x n`` tensor alive.

Forward builds ``W = W0 + (lower * v) @ upper`` (one m x n temporary, freed when the call returns)
and applies it. Backward saves only the input, references to the frozen tensors and the length-r
vector ``v``, and computes each gradient with whichever exact formula is cheaper for the shapes
at hand (``forward_cost``):

- input: ``g @ W`` with W rebuilt, or ``g @ W0 + ((g @ lower) * v) @ upper``;
- v: ``rowsum((lower^T @ (g^T x)) * upper)``, or ``sum_t (g @ lower) * (x @ upper^T)``.

The chain from ``v = sigma * z - c`` to ``z`` and ``sigma`` is left to autograd.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .forward_cost import gram_for_scale_grad, recompute_weight_for_input_grad


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None when autocast is off there."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4: one API for every device type
        try:
            enabled = torch.is_autocast_enabled(device_type)
        except RuntimeError:  # a device type autocast does not know (e.g. meta)
            return None
        return torch.get_autocast_dtype(device_type) if enabled else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    if device_type == "cuda":
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    return None


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Turn autocast off for ``device_type`` (a no-op where it is not on): our casts are explicit."""
    if autocast_dtype(device_type) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


class MergedLoLDULinear(torch.autograd.Function):
    """``F.linear(x, W0 + (lower * v) @ upper, bias)`` computed in ``compute_dtype``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        lower: Tensor,
        upper: Tensor,
        scale: Tensor,
        compute_dtype: torch.dtype,
    ) -> Tensor:
        with autocast_disabled(x.device.type):
            scaled_lower = lower.to(compute_dtype) * scale.to(compute_dtype)
            merged = torch.addmm(weight.to(compute_dtype), scaled_lower, upper.to(compute_dtype))
            out = F.linear(x, merged, None if bias is None else bias.to(compute_dtype))
        ctx.save_for_backward(x, weight, lower, upper, scale)
        ctx.compute_dtype = compute_dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, lower, upper, scale = ctx.saved_tensors
        dtype = ctx.compute_dtype
        needs_x, needs_weight, needs_bias, needs_lower, needs_upper, needs_scale, _ = ctx.needs_input_grad
        m, n = weight.shape
        r = scale.numel()
        grad_x = grad_weight = grad_bias = grad_lower = grad_upper = grad_scale = None

        with autocast_disabled(grad_out.device.type):
            g = grad_out.to(dtype).reshape(-1, m)
            inputs = x.reshape(-1, n)
            tokens = g.shape[0]
            lower_c, upper_c, scale_c = lower.to(dtype), upper.to(dtype), scale.to(dtype)
            g_lower = None  # g @ lower, shared by two of the formulas

            if needs_x:
                if recompute_weight_for_input_grad(m, n, r, tokens):
                    grad_x = g @ torch.addmm(weight.to(dtype), lower_c * scale_c, upper_c)
                else:
                    g_lower = g @ lower_c
                    grad_x = torch.addmm(g @ weight.to(dtype), g_lower * scale_c, upper_c)
                grad_x = grad_x.reshape(x.shape).to(x.dtype)

            # g^T x (m x n) serves the weight, the factors and, when cheaper, the v gradient.
            need_gram = needs_weight or needs_lower or needs_upper
            use_gram_for_scale = needs_scale and gram_for_scale_grad(m, n, r, tokens)
            gram = g.t() @ inputs if need_gram or use_gram_for_scale else None

            if needs_scale:
                if use_gram_for_scale:
                    grad_scale = ((lower_c.t() @ gram).float() * upper_c.float()).sum(dim=1)
                else:
                    g_lower = g @ lower_c if g_lower is None else g_lower
                    grad_scale = (g_lower.float() * (inputs @ upper_c.t()).float()).sum(dim=0)
                grad_scale = grad_scale.reshape(scale.shape).to(scale.dtype)
            if needs_weight:
                grad_weight = gram.to(weight.dtype)
            if needs_bias:
                grad_bias = g.sum(dim=0).to(ctx.bias_dtype)
            if needs_lower:
                grad_lower = ((gram @ upper_c.t()) * scale_c).to(lower.dtype)
            if needs_upper:
                grad_upper = ((lower_c * scale_c).t() @ gram).to(upper.dtype)
        return grad_x, grad_weight, grad_bias, grad_lower, grad_upper, grad_scale, None


def merged_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    lower: Tensor,
    upper: Tensor,
    scale: Tensor,
    compute_dtype: torch.dtype,
) -> Tensor:
    """Functional entry point of ``MergedLoLDULinear`` (weight is W0 as out x in)."""
    return MergedLoLDULinear.apply(x, weight, bias, lower, upper, scale, compute_dtype)
