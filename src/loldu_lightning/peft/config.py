"""``LoLDUPeftConfig``: the PEFT configuration of a LoLDU adapter.

Field names follow PEFT's conventions (``r``, ``<method>_alpha``, ``init_<method>_weights``,
``target_modules``, ``exclude_modules``, ``modules_to_save``, ``layers_to_transform``); every other
option of ``loldu_lightning.loldu.LoLDUConfig`` has a field of the same name and meaning. The layer
is built from ``to_loldu_config()``, which copies the fields over generically, so the PEFT path
and ``loldu.inject`` build the very same layers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from loldu_lightning.loldu import LoLDUConfig
from loldu_lightning.loldu.config import option_help

from .peft_type import loldu_peft_type

# LoLDUConfig field -> the PEFT config field that carries it (fields not listed keep their name).
PEFT_FIELD_NAMES: dict[str, str] = {"rank": "r", "alpha": "loldu_alpha", "init": "init_weights"}

# The init of z for init_weights=True, and the one init_weights=False starts from.
DEFAULT_INIT = "uniform"

# PEFT matches target_modules itself (before any LoLDU layer exists); the LoLDU config only needs a
# valid value, and one that says where the module list lives.
_TARGETS_MATCHED_BY_PEFT = "matched-by-peft"

# PEFT's bias options: none, all, or "<method>_only" (the biases of the adapted layers).
BIAS_CHOICES = ("none", "all", "loldu_only")


@dataclass
class LoLDUPeftConfig(PeftConfig):
    """Configuration of a LoLDU adapter for ``peft.get_peft_model``.

    Each targeted Linear/Conv1D weight ``W0 = P L diag(d) U1`` gets the update
    ``P L_r diag(sigma * z - c) U_r`` with only ``z`` (``r`` numbers) and ``sigma`` trained
    (docs/design.md section 1). The LoLDU options mean what they mean in ``loldu.LoLDUConfig``.
    """

    r: int | str = field(default=8, metadata={"help": option_help("rank")})
    loldu_alpha: float | None = field(default=None, metadata={"help": "sigma0 = loldu_alpha / r; None means r"})
    init_weights: bool | str = field(
        default=True,
        metadata={
            "help": "True: z from 'uniform' and the adapted model equals the base model at creation (PEFT's identity "
            "init); the name of an init of z (" + option_help("init").split("; ")[-1] + "); "
            "False: PEFT's non-identity start, the paper's Algorithm 1 as printed (z uniform, residual 'ldu')"
        },
    )
    init_loldu_weights: str | None = field(
        default=None, metadata={"help": "the older name of init_weights (an init name), still read"}
    )
    scaling: str = field(default="learned", metadata={"help": option_help("scaling")})
    residual: str = field(default="init", metadata={"help": option_help("residual")})
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": option_help("target_modules")},
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": option_help("exclude_modules")})
    dtype: str | None = field(default=None, metadata={"help": option_help("dtype")})
    forward_mode: str = field(default="auto", metadata={"help": option_help("forward_mode")})
    seed: int = field(default=0, metadata={"help": option_help("seed")})
    decompose_dtype: str = field(default="float32", metadata={"help": option_help("decompose_dtype")})
    save_factors: bool = field(default=False, metadata={"help": option_help("save_factors")})
    storage: str = field(default="dense", metadata={"help": option_help("storage")})
    decomposition: str = field(default="lu", metadata={"help": option_help("decomposition")})
    lr_scale: float | None = field(
        default=None,
        metadata={
            "help": option_help("lr_scale") + "; recorded only: give those parameters "
            "lr x to_loldu_config().resolve_lr_scale() in your optimizer"
        },
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "modules trained fully and saved with the adapter (e.g. a classifier head)"}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "only adapt the layers with these indices"}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "name of the layer list layers_to_transform indexes (e.g. 'layers')"}
    )
    bias: str = field(
        default="none",
        metadata={
            "help": "biases trained beside the adapter, as PEFT's methods do: 'none', 'all' (every bias of the model) "
            "or 'loldu_only' (the biases of the adapted layers); saved with the adapter"
        },
    )
    fingerprints: dict[str, dict[str, Any]] | None = field(
        default=None,
        metadata={
            "help": "per adapted module: sha256 of W0 and of the pivot order, and the shape; recorded when the adapter "
            "is created and checked when it is loaded"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = loldu_peft_type()
        if self.bias not in BIAS_CHOICES:
            raise ValueError(
                f"LoLDUPeftConfig: unknown bias {self.bias!r}; allowed values: {', '.join(BIAS_CHOICES)} (a bias "
                "trained alongside the adapter; put a module in modules_to_save to train all of it)"
            )
        self._resolve_init_alias()
        if not isinstance(self.init_weights, (bool, str)):
            raise ValueError(
                f"LoLDUPeftConfig: init_weights must be True, False or the name of an init of z, got {self.init_weights!r}"
            )
        if self.init_weights is False:
            if self.residual not in ("init", "ldu"):
                raise ValueError(
                    f"LoLDUPeftConfig: init_weights=False sets residual 'ldu' (the non-identity start); it cannot be "
                    f"combined with residual {self.residual!r}; drop one of the two"
                )
            self.residual = "ldu"
        if isinstance(self.target_modules, (list, tuple)):
            self.target_modules = set(self.target_modules)
        if isinstance(self.exclude_modules, (list, tuple)):
            self.exclude_modules = set(self.exclude_modules)
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("LoLDUPeftConfig: layers_pattern needs layers_to_transform (the indices it selects)")
        self.to_loldu_config()  # runs every check of the LoLDU options now, before any model is touched

    def to_loldu_config(self) -> LoLDUConfig:
        """The ``loldu.LoLDUConfig`` of the layers this config builds (target matching stays PEFT's)."""
        values: dict[str, Any] = {}
        for name in LoLDUConfig.field_names():
            peft_name = PEFT_FIELD_NAMES.get(name, name)
            if hasattr(self, peft_name):
                values[name] = getattr(self, peft_name)
        values["init"] = self.init_weights if isinstance(self.init_weights, str) else DEFAULT_INIT
        values["target_modules"] = _TARGETS_MATCHED_BY_PEFT
        values["exclude_modules"] = None
        try:
            return LoLDUConfig(**values)
        except ValueError as error:
            renamed = ", ".join(f"{peft} = {loldu}" for loldu, peft in PEFT_FIELD_NAMES.items())
            raise ValueError(f"LoLDUPeftConfig: {error} (PEFT field names: {renamed})") from None

    def _resolve_init_alias(self) -> None:
        """Read ``init_loldu_weights`` (adapter folders and configs written before ``init_weights``) as ``init_weights``."""
        alias = self.init_loldu_weights
        if alias is None:
            return
        if self.init_weights not in (True, alias):
            raise ValueError(
                f"LoLDUPeftConfig: init_weights={self.init_weights!r} and init_loldu_weights={alias!r} disagree; "
                "init_loldu_weights is the older name of init_weights, give only init_weights"
            )
        self.init_weights, self.init_loldu_weights = alias, None

    @classmethod
    def from_loldu_config(cls, config: LoLDUConfig, **peft_fields: Any) -> LoLDUPeftConfig:
        """The PEFT config equivalent to a native ``LoLDUConfig`` (``peft_fields`` add e.g. modules_to_save)."""
        values = {PEFT_FIELD_NAMES.get(name, name): value for name, value in dataclasses.asdict(config).items()}
        for key in ("target_modules", "exclude_modules"):
            if isinstance(values[key], tuple):
                values[key] = list(values[key])
        return cls(**{**values, **peft_fields})
