"""``LoLDULinear``: a frozen Linear/Conv1D layer plus the LoLDU update.

Effective weight ``W = W0 + lower @ diag(sigma * z - c) @ upper`` where ``lower = (P L)[:, :r]``,
``upper = U1[:r]`` and ``c`` are frozen (see ``decomposition`` and DESIGN.md section 1). ``W0``
stays untouched inside ``base_layer``. Only ``z`` (and ``sigma`` when the scaling is learned) train.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base_layers import is_supported_layer, out_in_weight
from .config import LoLDUConfig
from .decomposition import ldu_decompose
from .forward_cost import choose_forward_path
from .merged_function import autocast_dtype, merged_linear
from .registries import DECOMPOSE_DTYPES, DTYPES, FORWARD_MODES, INITS, RESIDUALS, SCALINGS, check_choice, initial_sigma


def module_seed(seed: int, module_name: str) -> int:
    """A seed from the config seed and the module name: stable across runs and module order."""
    return zlib.crc32(f"{seed}:{module_name}".encode("utf-8"))


class LoLDULinear(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` or transformers ``Conv1D``) with a LoLDU adapter.

    Parameters: ``z`` (length r) and ``sigma`` (scalar; a buffer unless the scaling is learned).
    Persistent buffers: ``c`` (and ``sigma`` when frozen). Non-persistent buffers, recomputed from
    the base weight at construction: ``lower`` (m x r), ``upper`` (r x n), ``perm`` (int64, m).
    """

    def __init__(self, base_layer: nn.Module, config: LoLDUConfig, name: str = "") -> None:
        super().__init__()
        if isinstance(base_layer, LoLDULinear):
            raise ValueError(f"LoLDU: module {name!r} already carries a LoLDU adapter")
        if not is_supported_layer(base_layer):
            raise ValueError(
                f"LoLDU: module {name!r} is a {type(base_layer).__name__}; only nn.Linear and transformers "
                "Conv1D layers can be adapted. Point target_modules at the linear layers inside it."
            )
        self.base_layer = base_layer
        self.module_name = name
        self.loldu_config = config

        weight = out_in_weight(base_layer)
        m, n = weight.shape
        max_rank = min(m, n)
        rank = config.resolve_rank(max_rank)
        if not 1 <= rank <= max_rank:
            raise ValueError(
                f"LoLDU: rank {rank} is out of range for module {name!r} with weight shape {m} x {n} (out x in); "
                f"allowed: 1..{max_rank} or 'full'"
            )
        self.in_features, self.out_features, self.rank = n, m, rank
        self.merged = False
        self.disabled = False
        self.forward_mode = config.forward_mode

        factors = ldu_decompose(weight, rank, DECOMPOSE_DTYPES[config.decompose_dtype])
        self.zero_pivots = factors.zero_pivots
        storage_dtype = DTYPES[config.dtype] if config.dtype is not None else weight.dtype
        device = weight.device

        # Inits and c are computed in float32 on CPU so they are identical on every device.
        diag = factors.diag.detach().to("cpu", torch.float32)
        generator = torch.Generator().manual_seed(module_seed(config.seed, name))
        z0 = INITS[config.init](diag, generator).to(torch.float32)
        sigma0 = torch.tensor(initial_sigma(config.scaling, config.resolve_alpha(rank), rank), dtype=torch.float32)
        # sigma0 * z0 is the exact float32 product the forward computes at step 0, so with
        # residual "init" the update sigma * z - c is exactly zero before training.
        c = RESIDUALS[config.residual](sigma0 * z0, sigma0 * diag)

        self.z = nn.Parameter(z0.to(device))
        if SCALINGS[config.scaling]:
            self.sigma = nn.Parameter(sigma0.to(device))
        else:
            self.register_buffer("sigma", sigma0.to(device))
        self.register_buffer("c", c.to(device))
        self.register_buffer("lower", factors.lower.to(storage_dtype), persistent=False)
        self.register_buffer("upper", factors.upper.to(storage_dtype), persistent=False)
        self.register_buffer("perm", factors.perm, persistent=False)
        base_layer.requires_grad_(False)

    @property
    def forward_mode(self) -> str:
        return self._forward_mode

    @forward_mode.setter
    def forward_mode(self, mode: str) -> None:
        check_choice("forward_mode", mode, FORWARD_MODES)
        self._forward_mode = mode

    @property
    def weight(self) -> Tensor:
        """The base layer's weight parameter, for code that inspects ``layer.weight`` (dtype, device)."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def base_weight(self) -> Tensor:
        """W0 (or the merged weight after ``merge``) as an (out, in) view of the base layer's weight."""
        return out_in_weight(self.base_layer)

    def scale_vector(self) -> Tensor:
        """``v = sigma * z - c``: the diagonal of the update, length r."""
        return self.sigma * self.z - self.c

    def delta_weight(self) -> Tensor:
        """The update ``lower @ diag(v) @ upper`` as a float32 (out, in) matrix, without gradient."""
        with torch.no_grad():
            return (self.lower.float() * self.scale_vector().float()) @ self.upper.float()

    def forward_path(self, x: Tensor) -> str:
        """The path this call takes: ``forward_mode`` or, for ``auto``, the cheaper one (``forward_cost``)."""
        if self.forward_mode != "auto":
            return self.forward_mode
        tokens = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.z.requires_grad or self.sigma.requires_grad)
        return choose_forward_path(self.out_features, self.in_features, self.rank, tokens, needs_grad)

    def forward(self, x: Tensor) -> Tensor:
        if self.disabled or self.merged:
            return self.base_layer(x)
        scale = self.scale_vector()
        if self.forward_path(x) == "merged":
            return self._merged_forward(x, scale)
        return self._factored_forward(x, scale)

    def _factored_forward(self, x: Tensor, scale: Tensor) -> Tensor:
        result = self.base_layer(x)
        # Factors are cast to the input dtype (a no-op normally); autocast then casts as usual.
        hidden = F.linear(x, self.upper.to(x.dtype))
        hidden = hidden * scale.to(hidden.dtype)
        update = F.linear(hidden, self.lower.to(hidden.dtype))
        return result + update.to(result.dtype)

    def _merged_forward(self, x: Tensor, scale: Tensor) -> Tensor:
        weight = self.base_weight()
        amp_dtype = autocast_dtype(x.device.type)
        if amp_dtype is not None and x.is_floating_point():
            compute_dtype, x = amp_dtype, x.to(amp_dtype)
        else:
            compute_dtype = weight.dtype
        return merged_linear(x, weight, self.bias, self.lower, self.upper, scale, compute_dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (computed in float32, stored in the weight's dtype)."""
        if self.merged:
            return
        weight = self.base_weight()
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update folded in by ``merge``; W0 comes back to the dtype's rounding."""
        if not self.merged:
            return
        weight = self.base_weight()
        weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"scaling={self.loldu_config.scaling}, forward_mode={self.forward_mode}, zero_pivots={self.zero_pivots}"
        )
