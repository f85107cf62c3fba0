"""LoLDU (Lower-Diag-Upper low-rank adaptation) in pure PyTorch.

    from loldu_lightning.loldu import LoLDUConfig, inject, summary
    model = inject(model, LoLDUConfig(rank=768, alpha=768, target_modules=["query", "value"]))
    print(summary(model))

No Lightning, no Hydra: decompositions (lu, svd, qr), the LoLDU layer with its storage strategies, injection by target names/regex,
merge/unmerge/unload, adapter save/load and the parameter report.
"""

from .adapter_bank import BASE, AdapterBank, PerExampleModule
from .adapter_io import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    adapter_state_dict,
    load_adapter,
    read_adapter_config,
    save_adapter,
    weight_fingerprint,
)
from .config import LoLDUConfig
from .decomposition import LDUFactors, PackedLDU, ldu_decompose, ldu_decompose_packed
from .decompositions import DECOMPOSITIONS, Decomposition, qr_decompose, svd_decompose
from .forward_cost import choose_forward_path
from .layer import LoLDULinear, module_seed
from .mixed_batch import per_example_update
from .model_ops import disable, enable, inject, loldu_modules, merge, unload, unmerge
from .registries import DECOMPOSE_DTYPES, DTYPES, FORWARD_MODES, INITS, RESIDUALS, SCALINGS, STORAGES
from .storages import STORAGE_TYPES, FactorStorage
from .summary import parameter_counts, summary, trainable_parameters
from .targeting import resolve_target_modules

__all__ = [
    "AdapterBank",
    "BASE",
    "PerExampleModule",
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "DECOMPOSE_DTYPES",
    "DECOMPOSITIONS",
    "DTYPES",
    "Decomposition",
    "FactorStorage",
    "FORWARD_MODES",
    "INITS",
    "LDUFactors",
    "LoLDUConfig",
    "LoLDULinear",
    "PackedLDU",
    "RESIDUALS",
    "SCALINGS",
    "STORAGES",
    "STORAGE_TYPES",
    "adapter_state_dict",
    "choose_forward_path",
    "disable",
    "enable",
    "inject",
    "ldu_decompose",
    "ldu_decompose_packed",
    "load_adapter",
    "loldu_modules",
    "merge",
    "module_seed",
    "parameter_counts",
    "per_example_update",
    "qr_decompose",
    "read_adapter_config",
    "resolve_target_modules",
    "save_adapter",
    "summary",
    "svd_decompose",
    "trainable_parameters",
    "unload",
    "unmerge",
    "weight_fingerprint",
]
