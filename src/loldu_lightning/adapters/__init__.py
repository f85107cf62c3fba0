"""One interface over LoLDU and the baselines: `build_adapter(cfg)` -> `Adapter`.

An adapter makes a model trainable its way (`apply`), keeps the task heads fully trainable,
saves/loads only what was trained (`save`/`load`, PEFT-like directory layout) and folds itself
into a plain model for inference (`merge`).
"""

from loldu_lightning.adapters.base import Adapter, count_parameters, unwrap_model
from loldu_lightning.adapters.heads import HEAD_FILE, resolve_head_modules
from loldu_lightning.adapters.registry import ADAPTERS, build_adapter

__all__ = [
    "ADAPTERS",
    "HEAD_FILE",
    "Adapter",
    "build_adapter",
    "count_parameters",
    "resolve_head_modules",
    "unwrap_model",
]
