"""How a LoLDU layer keeps its frozen factors: one strategy object per ``storage`` choice.

Each strategy is a small ``nn.Module`` (so its buffers follow ``.to()``) that owns the factor
buffers and everything that depends on their layout: the forward, the update as a matrix, merge
and unmerge, and what stands in for W0. ``LoLDULinear`` keeps the shared logic (validation, z,
sigma, c, the merged/disabled state) and calls the strategy. docs/factor_storage.md compares them.

- ``DenseStorage``: ``lower`` (m x r) and ``upper`` (r x n) beside W0; plain GEMMs
  (``merged_function``). Holds the factors of any decomposition.
- ``PackedStorage``: L and U1 unpermuted in one m x n LU-packed buffer beside W0 (full rank
  only); block-triangular products (``packed_function``). LU only.
- ``LUStorage``: the packed LU of W0 (all k components) replaces W0, whose storage is released:
  ``W = P L diag(d + [sigma z - c, 0...]) U1``. LU only.

The factor buffers are non-persistent: they are recomputed from the base weight, never part of a
``state_dict`` (adapter files may carry them with ``save_factors``: ``factor_names``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base_layers import out_in_weight, set_out_in_weight
from .decomposition import ldu_decompose_packed
from .decompositions import Decomposition
from .fingerprint import weight_fingerprint
from .forward_cost import choose_forward_path, choose_packed_path
from .merged_function import autocast_dtype, merged_linear
from .packed_function import component_scale, packed_linear, packed_weight


class FactorStorage(nn.Module, ABC):
    """The frozen factors of one layer and the operations whose form depends on how they are kept.

    ``scale`` below is always ``v = sigma * z - c`` (length r). Subclasses set ``kept_diag``
    (``d_r`` in the decomposition dtype, read once by the layer for the inits) and ``zero_pivots``.
    """

    name: ClassVar[str]
    factor_names: ClassVar[tuple[str, ...]]
    """The buffers an adapter file stores with ``save_factors`` (and loads back)."""
    keeps_base_weight: ClassVar[bool] = True
    """False when the factors replace W0 (the base layer then has no weight while unmerged)."""

    perm: Tensor
    kept_diag: Tensor
    zero_pivots: int

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    # -- the forward ------------------------------------------------------------------------
    def choose_path(self, m: int, n: int, tokens: int, needs_grad: bool) -> str:
        """``"factored"`` or ``"merged"`` for ``forward_mode: auto`` (``forward_cost``)."""
        return choose_forward_path(m, n, self.rank, tokens, needs_grad)

    @abstractmethod
    def forward(self, base_layer: nn.Module, x: Tensor, scale: Tensor, path: str) -> Tensor:  # type: ignore[override]
        """``base_layer(x)`` plus the update, along ``path`` (``"factored"`` or ``"merged"``)."""

    def base_forward(self, base_layer: nn.Module, x: Tensor, path: str) -> Tensor:
        """The output without the update (``disable``)."""
        return base_layer(x)

    # -- the update as a matrix, merge --------------------------------------------------------
    @abstractmethod
    def delta_weight(self, scale: Tensor) -> Tensor:
        """``lower diag(v) upper`` as a float32 (out, in) matrix."""

    @abstractmethod
    def dense_factors(self) -> tuple[Tensor, Tensor]:
        """``(P L_r, U_r)`` as dense (m x r, r x n) matrices (for inspection and tests)."""

    def base_weight(self, base_layer: nn.Module) -> Tensor:
        """W0 of the unmerged layer as (out, in): a view of the base layer's weight when it keeps one."""
        return out_in_weight(base_layer)

    def base_fingerprint(self, base_layer: nn.Module) -> str:
        return weight_fingerprint(self.base_weight(base_layer))

    def merge(self, base_layer: nn.Module, scale: Tensor) -> None:
        weight = out_in_weight(base_layer)
        weight.copy_((weight.float() + self.delta_weight(scale)).to(weight.dtype))

    def unmerge(self, base_layer: nn.Module, scale: Tensor) -> None:
        weight = out_in_weight(base_layer)
        weight.copy_((weight.float() - self.delta_weight(scale)).to(weight.dtype))

    def adopt(self, base_layer: nn.Module) -> None:
        """Called once the layer wraps ``base_layer`` (``LUStorage`` releases its W0 here)."""

    def restore_base_weight(self, base_layer: nn.Module) -> None:
        """Give an unmerged base layer a W0 again before it leaves the wrapper (a no-op when it kept one)."""

    # -- adapter files ------------------------------------------------------------------------
    def factor_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.factor_names}

    def refresh_derived_buffers(self) -> None:
        """Recompute buffers derived from the factors after they were overwritten (adapter loading)."""

    def extra_repr(self) -> str:
        return f"rank={self.rank}"


class DenseStorage(FactorStorage):
    name = "dense"
    factor_names = ("lower", "upper", "perm")

    def __init__(
        self,
        weight: Tensor,
        rank: int,
        decomposition: Decomposition,
        decompose_dtype: torch.dtype,
        storage_dtype: torch.dtype,
        module_name: str,
    ) -> None:
        super().__init__(rank)
        factors = decomposition.decompose(weight, rank, decompose_dtype)
        self.kept_diag = factors.diag
        self.zero_pivots = factors.zero_pivots
        self.register_buffer("lower", factors.lower.to(storage_dtype), persistent=False)
        self.register_buffer("upper", factors.upper.to(storage_dtype), persistent=False)
        self.register_buffer("perm", factors.perm, persistent=False)

    def forward(self, base_layer: nn.Module, x: Tensor, scale: Tensor, path: str) -> Tensor:  # type: ignore[override]
        if path == "merged":
            weight = out_in_weight(base_layer)
            amp_dtype = autocast_dtype(x.device.type)
            if amp_dtype is not None and x.is_floating_point():
                compute_dtype, x = amp_dtype, x.to(amp_dtype)
            else:
                compute_dtype = weight.dtype
            return merged_linear(x, weight, base_layer.bias, self.lower, self.upper, scale, compute_dtype)
        result = base_layer(x)
        # Factors are cast to the input dtype (a no-op normally); autocast then casts as usual.
        hidden = F.linear(x, self.upper.to(x.dtype))
        hidden = hidden * scale.to(hidden.dtype)
        update = F.linear(hidden, self.lower.to(hidden.dtype))
        return result + update.to(result.dtype)

    def delta_weight(self, scale: Tensor) -> Tensor:
        return (self.lower.float() * scale.float()) @ self.upper.float()

    def dense_factors(self) -> tuple[Tensor, Tensor]:
        return self.lower, self.upper


class PackedStorage(FactorStorage):
    """L and U1 in one LU-packed m x n buffer beside W0; the update uses its first r components."""

    name = "packed"
    factor_names = ("packed", "perm")

    def __init__(
        self,
        weight: Tensor,
        rank: int,
        decomposition: Decomposition,
        decompose_dtype: torch.dtype,
        storage_dtype: torch.dtype,
        module_name: str,
    ) -> None:
        super().__init__(rank)
        m, n = weight.shape
        self._check_rank(rank, m, n, module_name)
        packed = ldu_decompose_packed(weight, decompose_dtype)
        self.kept_diag = packed.diag[:rank]
        self.zero_pivots = int(packed.tiny_pivots[:rank].sum())
        self.register_buffer("packed", packed.packed.to(self._factor_dtype(storage_dtype)), persistent=False)
        self.register_buffer("perm", packed.perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(packed.perm), persistent=False)
        self._keep_extra(packed.diag, weight)

    def _check_rank(self, rank: int, m: int, n: int, module_name: str) -> None:
        if rank != min(m, n):
            raise ValueError(
                f"LoLDU: storage 'packed' keeps L and U in one {m} x {n} matrix and needs the full rank {min(m, n)} "
                f"for module {module_name!r}, got rank {rank}; use storage 'dense' (r (m + n) numbers) or 'lu' "
                "(the factors replace W0)"
            )

    def _factor_dtype(self, requested: torch.dtype) -> torch.dtype:
        return requested

    def _keep_extra(self, diag: Tensor, weight: Tensor) -> None:
        """Hook for ``LUStorage``, which also keeps the pivots and W0's identity."""

    def choose_path(self, m: int, n: int, tokens: int, needs_grad: bool) -> str:
        return choose_packed_path(m, n, self.rank, tokens, needs_grad, not self.keeps_base_weight)

    def forward(self, base_layer: nn.Module, x: Tensor, scale: Tensor, path: str) -> Tensor:  # type: ignore[override]
        compute_dtype = _compute_dtype(x)
        if path == "merged":
            weight = out_in_weight(base_layer)
            return packed_linear(
                x, scale, weight, base_layer.bias, self.packed, self.perm, self.inv_perm, None, path, compute_dtype
            )
        # factored: W0 and the bias stay in the base layer (autograd handles them as usual).
        result = base_layer(x)
        update = packed_linear(x, scale, None, None, self.packed, self.perm, self.inv_perm, None, path, compute_dtype)
        return result + update.to(result.dtype)

    def delta_weight(self, scale: Tensor) -> Tensor:
        return packed_weight(self.packed.float(), self.inv_perm, None, scale.float()[: self.rank])

    def dense_factors(self) -> tuple[Tensor, Tensor]:
        lower = torch.tril(self.packed[:, : self.rank], diagonal=-1)
        lower.diagonal().fill_(1)
        return lower[self.perm], torch.triu(self.packed[: self.rank])

    def refresh_derived_buffers(self) -> None:
        self.inv_perm.copy_(torch.argsort(self.perm))


class LUStorage(PackedStorage):
    """The packed LU of W0 replaces W0: ``W = P L diag(d + [v, 0, ...]) U1``; any rank.

    W0 exists only as these factors, so they are kept in float32 (float64 with a float64
    decomposition) whatever the requested dtype: half-precision ones would change W0 by 10-30%
    (config.py), and the products run in that precision too.
    """

    name = "lu"
    factor_names = ("packed", "diag", "perm")
    keeps_base_weight = False

    def _check_rank(self, rank: int, m: int, n: int, module_name: str) -> None:
        """Every rank fits: all k components are kept anyway."""

    def _factor_dtype(self, requested: torch.dtype) -> torch.dtype:
        return requested if requested in (torch.float32, torch.float64) else torch.float32

    def _keep_extra(self, diag: Tensor, weight: Tensor) -> None:
        self.register_buffer("diag", diag.to(torch.float32), persistent=False)
        # Adapter files identify the base model by W0's fingerprint: take it while W0 exists.
        self._base_fingerprint = weight_fingerprint(weight)
        self._weight_dtype = weight.dtype

    def adopt(self, base_layer: nn.Module) -> None:
        """Drop the base layer's W0: these factors stand in for it from now on."""
        set_out_in_weight(base_layer, None)

    def forward(self, base_layer: nn.Module, x: Tensor, scale: Tensor, path: str) -> Tensor:  # type: ignore[override]
        # The products stand in for W0 itself: run them in the factors' precision, never in a half
        # dtype, and return the dtype the caller expects.
        out = packed_linear(
            x, scale, None, base_layer.bias, self.packed, self.perm, self.inv_perm, self.diag, path, self.packed.dtype
        )
        return out.to(_compute_dtype(x))

    def base_forward(self, base_layer: nn.Module, x: Tensor, path: str) -> Tensor:
        # No W0 to fall back on: the base output is the factors with a zero update.
        return self.forward(base_layer, x, self.diag.new_zeros(self.rank), path)

    def _weight(self, scale: Tensor | None) -> Tensor:
        """``P L diag(d [+ v]) U1`` in float32, cast to the original weight's dtype."""
        update = self.diag.new_zeros(self.rank) if scale is None else scale.float()
        full = component_scale(update, self.diag, torch.float32)
        return packed_weight(self.packed.float(), self.inv_perm, None, full).to(self._weight_dtype)

    def base_weight(self, base_layer: nn.Module) -> Tensor:
        """A new tensor ``P L diag(d) U1``: W0 to the factors' rounding, in W0's dtype."""
        with torch.no_grad():
            return self._weight(None)

    def base_fingerprint(self, base_layer: nn.Module) -> str:
        return self._base_fingerprint

    def merge(self, base_layer: nn.Module, scale: Tensor) -> None:
        # The merged weight is materialised as the base layer's weight (the factors stay, for unmerge).
        set_out_in_weight(base_layer, self._weight(scale))

    def unmerge(self, base_layer: nn.Module, scale: Tensor) -> None:
        set_out_in_weight(base_layer, None)

    def restore_base_weight(self, base_layer: nn.Module) -> None:
        set_out_in_weight(base_layer, self._weight(None))


def _compute_dtype(x: Tensor) -> torch.dtype:
    """autocast's dtype when it is on (for a floating input), else the input's."""
    amp_dtype = autocast_dtype(x.device.type)
    return amp_dtype if amp_dtype is not None and x.is_floating_point() else x.dtype


STORAGE_TYPES: dict[str, type[FactorStorage]] = {
    storage.name: storage for storage in (DenseStorage, PackedStorage, LUStorage)
}
"""The ``storage`` config choices, by name (``registries.STORAGES`` describes them)."""
