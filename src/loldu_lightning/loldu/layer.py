"""``LoLDULinear``: a frozen Linear/Conv1D layer plus the LoLDU update.

Effective weight ``W = W0 + lower @ diag(sigma * z - c) @ upper`` where ``lower diag(d) upper`` is
a decomposition of W0 (``decomposition``: ``lu``, the paper's ``(P L)[:, :r]`` and ``U1[:r]``, or
``svd``/``qr``; see ``decompositions`` and docs/design.md section 1) and ``c`` is frozen. Only
``z`` (and ``sigma`` when the scaling is learned) train.

The layer holds what every variant shares (validation, z, sigma, c, the merged/disabled state);
how the frozen factors are kept, and everything that depends on that (forward, update, merge,
what stands in for W0), is the ``storage`` strategy object in ``factor_storage``
(``storages``, docs/factor_storage.md).
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from .base_layers import is_supported_layer, out_in_weight
from .config import LoLDUConfig
from .decompositions import DECOMPOSITIONS
from .mixed_batch import per_example_update
from .registries import DECOMPOSE_DTYPES, DTYPES, FORWARD_MODES, INITS, RESIDUALS, SCALINGS, check_choice, initial_sigma
from .storages import STORAGE_TYPES, FactorStorage


def _read_scalar_sigma(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load a 0-d sigma (adapter files and checkpoints written before sigma was a length-1 vector)."""
    value = state_dict.get(f"{prefix}sigma")
    if value is not None and value.dim() == 0:
        state_dict[f"{prefix}sigma"] = value.reshape(1)


def module_seed(seed: int, module_name: str) -> int:
    """A seed from the config seed and the module name: stable across runs and module order."""
    return zlib.crc32(f"{seed}:{module_name}".encode())


class LoLDULinear(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` or transformers ``Conv1D``) with a LoLDU adapter.

    Parameters: ``z`` (length r) and ``sigma`` (one number, a length-1 vector; a buffer unless the
    scaling is learned).
    Persistent buffers: ``c`` (and ``sigma`` when frozen). The frozen factors are non-persistent
    buffers of ``factor_storage``, recomputed from the base weight at construction; they can also
    be read as attributes of the layer (``layer.perm``, ``layer.lower`` for the dense storage,
    ``layer.packed`` for the packed ones).
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
        # (batch, r): one update vector per example while an ``AdapterBank`` serves a mixed batch.
        self.example_scales: Tensor | None = None
        self.forward_mode = config.forward_mode

        storage_dtype = DTYPES[config.dtype] if config.dtype is not None else weight.dtype
        storage = STORAGE_TYPES[config.storage](
            weight,
            rank,
            DECOMPOSITIONS[config.decomposition],
            DECOMPOSE_DTYPES[config.decompose_dtype],
            storage_dtype,
            name,
        )
        self.zero_pivots = storage.zero_pivots

        # Inits and c are computed in float32 on CPU so they are identical on every device.
        diag = storage.kept_diag.detach().to("cpu", torch.float32)
        generator = torch.Generator().manual_seed(module_seed(config.seed, name))
        z0 = INITS[config.init](diag, generator).to(torch.float32)
        sigma0 = torch.tensor(initial_sigma(config.scaling, config.resolve_alpha(rank), rank), dtype=torch.float32)
        # sigma0 * z0 is the exact float32 product the forward computes at step 0, so with
        # residual "init" the update sigma * z - c is exactly zero before training.
        c = RESIDUALS[config.residual](config.init, sigma0 * z0, sigma0 * diag)

        device = weight.device
        self.z = nn.Parameter(z0.to(device))
        # sigma is a length-1 vector rather than a 0-d tensor: FSDP (and fully_shard) refuse 0-d
        # parameters. Files and checkpoints that hold a 0-d sigma still load (_read_scalar_sigma).
        sigma = sigma0.reshape(1).to(device)
        if SCALINGS[config.scaling]:
            self.sigma = nn.Parameter(sigma)
        else:
            self.register_buffer("sigma", sigma)
        self.register_load_state_dict_pre_hook(_read_scalar_sigma)
        self.register_buffer("c", c.to(device))
        del storage.kept_diag, weight
        self.factor_storage: FactorStorage = storage
        storage.adopt(base_layer)
        base_layer.requires_grad_(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # The factor buffers read as layer attributes, as before they moved into the storage object.
            storage = self.__dict__["_modules"].get("factor_storage")
            if storage is not None and name in storage._buffers:
                return storage._buffers[name]
            raise

    @property
    def storage(self) -> str:
        """The name of the factor storage (``dense``, ``packed`` or ``lu``)."""
        return self.factor_storage.name

    @property
    def decomposition(self) -> str:
        """The name of the decomposition whose diagonal is trained (``lu``, ``svd`` or ``qr``)."""
        return self.loldu_config.decomposition

    @property
    def perm(self) -> Tensor:
        """The decomposition's row permutation, ``(P @ M) == M[perm]`` (the identity for svd and qr)."""
        return self.factor_storage.perm

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
        if self.merged:
            return out_in_weight(self.base_layer)
        return self.factor_storage.base_weight(self.base_layer)

    def base_fingerprint(self) -> str:
        """sha256 of W0 as adapter files record it (taken at construction for ``storage: lu``)."""
        return self.factor_storage.base_fingerprint(self.base_layer)

    def factor_names(self) -> tuple[str, ...]:
        """The buffers holding the frozen factors (what ``save_factors`` stores)."""
        return self.factor_storage.factor_names

    def factor_tensors(self) -> dict[str, Tensor]:
        """The frozen factors by name (what ``save_factors`` stores); the tensors themselves, not copies."""
        return self.factor_storage.factor_tensors()

    def dense_factors(self) -> tuple[Tensor, Tensor]:
        """``(P L_r, U_r)`` as dense (m x r, r x n) matrices whatever the storage (for inspection and tests)."""
        return self.factor_storage.dense_factors()

    def refresh_derived_buffers(self) -> None:
        """Recompute buffers derived from the factors after they were overwritten (adapter loading)."""
        self.factor_storage.refresh_derived_buffers()

    def scale_vector(self) -> Tensor:
        """``v = sigma * z - c``: the diagonal of the update, length r."""
        return self.sigma * self.z - self.c

    def delta_weight(self) -> Tensor:
        """The update ``lower @ diag(v) @ upper`` as a float32 (out, in) matrix, without gradient."""
        with torch.no_grad():
            return self.factor_storage.delta_weight(self.scale_vector())

    def forward_path(self, x: Tensor) -> str:
        """The path this call takes: ``forward_mode`` or, for ``auto``, the cheaper one (``forward_cost``)."""
        if self.forward_mode != "auto":
            return self.forward_mode
        tokens = x.numel() // self.in_features
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.z.requires_grad or self.sigma.requires_grad)
        return self.factor_storage.choose_path(self.out_features, self.in_features, tokens, needs_grad)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        if self.disabled:
            return self.factor_storage.base_forward(self.base_layer, x, self.forward_path(x))
        if self.example_scales is not None:
            # Each example its own adapter (adapter_bank): W0 x plus the update with the example's v.
            result = self.factor_storage.base_forward(self.base_layer, x, "factored")
            lower, upper = self.dense_factors()
            return result + per_example_update(x, lower, upper, self.example_scales).to(result.dtype)
        return self.factor_storage(self.base_layer, x, self.scale_vector(), self.forward_path(x))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (computed in float32, stored in the weight's dtype)."""
        if self.merged:
            return
        self.factor_storage.merge(self.base_layer, self.scale_vector())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update folded in by ``merge``; W0 comes back to the dtype's rounding."""
        if not self.merged:
            return
        self.factor_storage.unmerge(self.base_layer, self.scale_vector())
        self.merged = False

    @torch.no_grad()
    def restore_base_weight(self) -> None:
        """Give the base layer a W0 again before it leaves the wrapper (``unload(merge=False)``);
        only ``storage: lu`` lacks one: it gets ``P L diag(d) U1``, W0 to the factors' rounding."""
        if not self.merged:
            self.factor_storage.restore_base_weight(self.base_layer)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"decomposition={self.decomposition}, scaling={self.loldu_config.scaling}, "
            f"forward_mode={self.forward_mode}, storage={self.storage}, zero_pivots={self.zero_pivots}"
        )
