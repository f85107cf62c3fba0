"""``LoLDULinear``: a frozen Linear/Conv1D layer plus the LoLDU update.

Effective weight ``W = W0 + lower @ diag(sigma * z - c) @ upper`` where ``lower = (P L)[:, :r]``,
``upper = U1[:r]`` and ``c`` are frozen (see ``decomposition`` and docs/design.md section 1). ``W0``
stays untouched inside ``base_layer``. Only ``z`` (and ``sigma`` when the scaling is learned) train.

``storage`` picks how the frozen factors are kept (docs/factor_storage.md):

- ``dense``: ``lower`` (m x r) and ``upper`` (r x n) beside W0; plain GEMMs (``merged_function``).
- ``packed``: ``L`` and ``U1`` unpermuted in one m x n LU-packed buffer beside W0 (full rank only);
  block-triangular products (``packed_function``).
- ``lu``: the packed LU of W0 (all k components) *replaces* W0, whose storage is released:
  ``W = P L diag(d + [sigma z - c, 0...]) U1``. W0 comes back, to the factors' rounding, with
  ``base_weight()``, ``unload(merge=False)`` or ``merge``.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base_layers import is_supported_layer, out_in_weight
from .config import LoLDUConfig
from .decomposition import ldu_decompose, ldu_decompose_packed
from .fingerprint import weight_fingerprint
from .forward_cost import choose_forward_path, choose_packed_path
from .merged_function import autocast_dtype, merged_linear
from .packed_function import component_scale, packed_linear, packed_weight
from .registries import DECOMPOSE_DTYPES, DTYPES, FORWARD_MODES, INITS, RESIDUALS, SCALINGS, check_choice, initial_sigma


def module_seed(seed: int, module_name: str) -> int:
    """A seed from the config seed and the module name: stable across runs and module order."""
    return zlib.crc32(f"{seed}:{module_name}".encode())


class LoLDULinear(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` or transformers ``Conv1D``) with a LoLDU adapter.

    Parameters: ``z`` (length r) and ``sigma`` (scalar; a buffer unless the scaling is learned).
    Persistent buffers: ``c`` (and ``sigma`` when frozen). Non-persistent buffers, recomputed from
    the base weight at construction: ``lower`` (m x r), ``upper`` (r x n), ``perm`` (int64, m) for
    the dense storage; ``packed`` (m x n), ``perm``, ``inv_perm`` (and ``diag``, length k, float32,
    for ``lu``) for the packed storages.
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

        self.storage = config.storage
        if config.storage == "packed" and rank != max_rank:
            raise ValueError(
                f"LoLDU: storage 'packed' keeps L and U in one {m} x {n} matrix and needs the full rank {max_rank} for "
                f"module {name!r}, got rank {rank}; use storage 'dense' (r (m + n) numbers) or 'lu' (the factors replace W0)"
            )
        storage_dtype = DTYPES[config.dtype] if config.dtype is not None else weight.dtype
        decompose_dtype = DECOMPOSE_DTYPES[config.decompose_dtype]
        if config.storage == "lu" and storage_dtype not in (torch.float32, torch.float64):
            # W0 exists only as these factors: half-precision ones would change it by 10-30% (config.py).
            storage_dtype = torch.float32
        device = weight.device
        if config.storage == "dense":
            factors = ldu_decompose(weight, rank, decompose_dtype)
            self.zero_pivots = factors.zero_pivots
            kept_diag = factors.diag
        else:
            packed = ldu_decompose_packed(weight, decompose_dtype)
            self.zero_pivots = int(packed.tiny_pivots[:rank].sum())
            kept_diag = packed.diag[:rank]

        # Inits and c are computed in float32 on CPU so they are identical on every device.
        diag = kept_diag.detach().to("cpu", torch.float32)
        generator = torch.Generator().manual_seed(module_seed(config.seed, name))
        z0 = INITS[config.init](diag, generator).to(torch.float32)
        sigma0 = torch.tensor(initial_sigma(config.scaling, config.resolve_alpha(rank), rank), dtype=torch.float32)
        # sigma0 * z0 is the exact float32 product the forward computes at step 0, so with
        # residual "init" the update sigma * z - c is exactly zero before training.
        c = RESIDUALS[config.residual](config.init, sigma0 * z0, sigma0 * diag)

        self.z = nn.Parameter(z0.to(device))
        if SCALINGS[config.scaling]:
            self.sigma = nn.Parameter(sigma0.to(device))
        else:
            self.register_buffer("sigma", sigma0.to(device))
        self.register_buffer("c", c.to(device))
        self._base_fingerprint: str | None = None
        if config.storage == "dense":
            self.register_buffer("lower", factors.lower.to(storage_dtype), persistent=False)
            self.register_buffer("upper", factors.upper.to(storage_dtype), persistent=False)
            self.register_buffer("perm", factors.perm, persistent=False)
        else:
            self.register_buffer("packed", packed.packed.to(storage_dtype), persistent=False)
            self.register_buffer("perm", packed.perm, persistent=False)
            self.register_buffer("inv_perm", torch.argsort(packed.perm), persistent=False)
            if config.storage == "lu":
                self.register_buffer("diag", packed.diag.to(torch.float32), persistent=False)
                # Adapter files identify the base model by W0's fingerprint: take it while W0 exists.
                self._base_fingerprint = weight_fingerprint(weight)
                self._weight_dtype = weight.dtype
                del packed, weight
                _set_out_in_weight(base_layer, None)
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
        """W0 (or the merged weight after ``merge``) as an (out, in) view of the base layer's weight.

        ``storage: lu`` keeps no W0: unmerged, this is a new tensor ``P L diag(d) U1`` (W0 to the
        factors' rounding) in the weight's dtype."""
        if self.storage == "lu" and not self.merged:
            with torch.no_grad():
                return self._lu_weight(with_update=False)
        return out_in_weight(self.base_layer)

    def base_fingerprint(self) -> str:
        """sha256 of W0 as adapter files record it (taken at construction for ``storage: lu``)."""
        if self._base_fingerprint is not None:
            return self._base_fingerprint
        return weight_fingerprint(self.base_weight())

    def factor_names(self) -> tuple[str, ...]:
        """The buffers holding the frozen factors (what ``save_factors`` stores)."""
        return {"dense": ("lower", "upper", "perm"), "packed": ("packed", "perm"), "lu": ("packed", "diag", "perm")}[
            self.storage
        ]

    def dense_factors(self) -> tuple[Tensor, Tensor]:
        """``(P L_r, U_r)`` as dense (m x r, r x n) matrices whatever the storage (for inspection and tests)."""
        if self.storage == "dense":
            return self.lower, self.upper
        lower = torch.tril(self.packed[:, : self.rank], diagonal=-1)
        lower.diagonal().fill_(1)
        return lower[self.perm], torch.triu(self.packed[: self.rank])

    def refresh_derived_buffers(self) -> None:
        """Recompute buffers derived from the factors after they were overwritten (adapter loading)."""
        if self.storage != "dense":
            self.inv_perm.copy_(torch.argsort(self.perm))

    def _lu_weight(self, with_update: bool) -> Tensor:
        """``P L diag(d [+ sigma z - c]) U1`` in float32, cast to the weight's dtype (``storage: lu``)."""
        scale = self.scale_vector().float() if with_update else torch.zeros_like(self.c)
        full = component_scale(scale, self.diag, torch.float32)
        return packed_weight(self.packed.float(), self.inv_perm, None, full).to(self._weight_dtype)

    def scale_vector(self) -> Tensor:
        """``v = sigma * z - c``: the diagonal of the update, length r."""
        return self.sigma * self.z - self.c

    def delta_weight(self) -> Tensor:
        """The update ``lower @ diag(v) @ upper`` as a float32 (out, in) matrix, without gradient."""
        with torch.no_grad():
            if self.storage != "dense":
                return packed_weight(self.packed.float(), self.inv_perm, None, self.scale_vector().float()[: self.rank])
            return (self.lower.float() * self.scale_vector().float()) @ self.upper.float()

    def forward_path(self, x: Tensor) -> str:
        """The path this call takes: ``forward_mode`` or, for ``auto``, the cheaper one (``forward_cost``)."""
        if self.forward_mode != "auto":
            return self.forward_mode
        tokens = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.z.requires_grad or self.sigma.requires_grad)
        if self.storage != "dense":
            return choose_packed_path(
                self.out_features, self.in_features, self.rank, tokens, needs_grad, self.storage == "lu"
            )
        return choose_forward_path(self.out_features, self.in_features, self.rank, tokens, needs_grad)

    def forward(self, x: Tensor) -> Tensor:
        if self.storage == "lu" and self.disabled and not self.merged:
            # No W0 to fall back on: the base output is the factors with a zero update.
            return self._packed_forward(x, torch.zeros_like(self.c), self.forward_path(x))
        if self.disabled or self.merged:
            return self.base_layer(x)
        scale = self.scale_vector()
        path = self.forward_path(x)
        if self.storage != "dense":
            return self._packed_forward(x, scale, path)
        if path == "merged":
            return self._merged_forward(x, scale)
        return self._factored_forward(x, scale)

    def _packed_forward(self, x: Tensor, scale: Tensor, path: str) -> Tensor:
        amp_dtype = autocast_dtype(x.device.type)
        compute_dtype = amp_dtype if amp_dtype is not None and x.is_floating_point() else x.dtype
        if self.storage == "lu":
            # The products stand in for W0 itself: run them in the factors' float32 (or float64),
            # never in a half dtype (see config.py), and return the dtype the caller expects.
            out = packed_linear(
                x, scale, None, self.bias, self.packed, self.perm, self.inv_perm, self.diag, path, self.packed.dtype
            )
            return out.to(compute_dtype)
        if path == "merged":
            return packed_linear(
                x,
                scale,
                self.base_weight(),
                self.bias,
                self.packed,
                self.perm,
                self.inv_perm,
                None,
                path,
                compute_dtype,
            )
        # packed + factored: W0 and the bias stay in the base layer (autograd handles them as usual).
        result = self.base_layer(x)
        update = packed_linear(x, scale, None, None, self.packed, self.perm, self.inv_perm, None, path, compute_dtype)
        return result + update.to(result.dtype)

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
        if self.storage == "lu":
            # The merged weight is materialised as the base layer's weight (the factors stay for unmerge).
            _set_out_in_weight(self.base_layer, self._lu_weight(with_update=True))
            self.merged = True
            return
        weight = self.base_weight()
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update folded in by ``merge``; W0 comes back to the dtype's rounding."""
        if not self.merged:
            return
        if self.storage == "lu":
            _set_out_in_weight(self.base_layer, None)
            self.merged = False
            return
        weight = self.base_weight()
        weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
        self.merged = False

    @torch.no_grad()
    def restore_base_weight(self) -> None:
        """Give the base layer a W0 again before it leaves the wrapper (``unload(merge=False)``);
        only ``storage: lu`` lacks one: it gets ``P L diag(d) U1``, W0 to the factors' rounding."""
        if self.storage == "lu" and not self.merged:
            _set_out_in_weight(self.base_layer, self._lu_weight(with_update=False))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"scaling={self.loldu_config.scaling}, forward_mode={self.forward_mode}, storage={self.storage}, "
            f"zero_pivots={self.zero_pivots}"
        )


def _set_out_in_weight(module: nn.Module, weight: Tensor | None) -> None:
    """Give ``module`` a frozen weight from an (out, in) matrix, or none (its storage is released)."""
    if weight is None:
        module.weight = None
        return
    layout = weight if isinstance(module, nn.Linear) else weight.t()  # Conv1D stores (in, out)
    module.weight = nn.Parameter(layout.contiguous(), requires_grad=False)
