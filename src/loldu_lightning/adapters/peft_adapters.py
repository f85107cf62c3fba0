"""Baselines implemented by PEFT: LoRA, PiSSA, VeRA, FourierFT and TinyLoRA.

Each wraps `peft.get_peft_model`; the adapter files are PEFT's own (`adapter_config.json` +
`adapter_model.safetensors`), loadable with `PeftModel.from_pretrained`, and the task heads sit
beside them in `head.safetensors` (see `heads.py` for why PEFT's `modules_to_save` is not used),
with `adapter_manifest.json` (layout `peft`) naming the adapter that trained them.
"""

from __future__ import annotations

import abc
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import peft
import torch
from peft import FourierFTConfig, LoraConfig, PeftConfig, PeftModel, VeraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from loldu_lightning.adapters.base import Adapter
from loldu_lightning.adapters.options import (
    described,
    require_number,
    require_positive_int,
    require_target_modules,
)
from loldu_lightning.loldu.manifest import AdapterManifest


class PeftAdapter(Adapter):
    """Shared PEFT plumbing; subclasses only say how their options become a PEFT config."""

    layout = "peft"

    def __init__(self, options: Any) -> None:
        super().__init__(options)
        # Building the config now runs PEFT's own value checks before any model is loaded.
        self._peft_config()

    @abc.abstractmethod
    def _peft_config(self) -> PeftConfig:
        """A fresh PEFT config (PEFT mutates the one it is given, so never reuse one)."""

    def _inject(self, model: nn.Module) -> nn.Module:
        if isinstance(model, PeftModel):
            raise ValueError(
                f"adapter {self.name!r} needs a plain model, got a model that already carries PEFT adapters"
            )
        # No task_type: the generic PeftModel forwards model(**batch) unchanged and leaves heads to us.
        return get_peft_model(model, self._peft_config())

    def _save_adapter(
        self, model: nn.Module, directory: Path, base_model_name: str | None, head_names: Sequence[str]
    ) -> None:
        peft_model = self._require_peft_model(model)
        if base_model_name is not None:
            peft_model.peft_config["default"].base_model_name_or_path = base_model_name
        self._save_peft_files(peft_model, directory)
        AdapterManifest(self.name, self.layout, peft_model.peft_config["default"].base_model_name_or_path).write(
            directory
        )

    def _save_peft_files(self, peft_model: PeftModel, directory: Path) -> None:
        """PEFT's own adapter_config.json and adapter_model.safetensors."""
        peft_model.save_pretrained(str(directory), save_embedding_layers=False)

    def _check_manifest(self, manifest: AdapterManifest, directory: Path) -> None:
        # Any PEFT folder of the same PEFT type loads (a PiSSA folder is a plain LoRA): _load_adapter checks the type.
        if manifest.layout != self.layout:
            super()._check_manifest(manifest, directory)

    def _load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        if not (directory / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"no adapter_config.json in {directory}; it does not hold a saved {self.name!r} adapter"
            )
        saved_type = PeftConfig.from_pretrained(str(directory)).peft_type
        expected_type = self._peft_config().peft_type
        if saved_type != expected_type:
            raise ValueError(
                f"{directory} holds a {saved_type.value} adapter but adapter {self.name!r} loads {expected_type.value}; "
                "select the adapter it was trained with"
            )
        return PeftModel.from_pretrained(model, str(directory), is_trainable=True)

    def merge(self, model: nn.Module) -> nn.Module:
        return self._require_peft_model(model).merge_and_unload()

    def _is_adapter_layer(self, module: nn.Module) -> bool:
        return isinstance(module, BaseTunerLayer)

    def _require_peft_model(self, model: nn.Module) -> PeftModel:
        if not isinstance(model, PeftModel):
            raise ValueError(
                f"adapter {self.name!r} expected the PeftModel returned by apply() or load(), got {type(model).__name__}"
            )
        return model


TARGET_MODULES_HELP = "modules adapted: names (exact or '.'-suffix), a regex (full match) or 'all-linear'; null = PEFT's default for the model"


# -- LoRA -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraOptions:
    """LoRA (Hu et al. 2021): update B A of rank `rank`, scaled by alpha / rank (PEFT's `r` is `rank` here,
    the key every low-rank adapter shares, so `-m adapter=loldu,lora adapter.rank=16` sweeps both)."""

    rank: int = described(8, "rank r of the update B A (PEFT's r)")
    alpha: float = described(8, "the update is scaled by alpha / rank (PEFT's lora_alpha)")
    dropout: float = described(0.0, "dropout on the adapter's input, in [0, 1]")
    target_modules: list[str] | str | None = described(None, TARGET_MODULES_HELP)

    adapter_name: ClassVar[str] = "lora"  # named in the refusals below

    def __post_init__(self) -> None:
        require_positive_int(self.adapter_name, "rank", self.rank)
        require_number(self.adapter_name, "alpha", self.alpha, minimum=0)
        require_number(self.adapter_name, "dropout", self.dropout, minimum=0, maximum=1)
        require_target_modules(self.adapter_name, self.target_modules)


class LoraAdapter(PeftAdapter):
    name = "lora"
    options_type = LoraOptions
    options: LoraOptions

    def _peft_config(self) -> PeftConfig:
        return LoraConfig(
            r=self.options.rank,
            lora_alpha=self.options.alpha,
            lora_dropout=self.options.dropout,
            target_modules=self.options.target_modules,
            init_lora_weights=self._init_lora_weights(),
        )

    def _init_lora_weights(self) -> bool | str:
        return True


# -- PiSSA ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PissaOptions(LoraOptions):
    """PiSSA (Meng et al. 2024): LoRA's options, the update B A initialised from the top-r singular
    triplets of W (the PiSSA paper sets alpha = rank)."""

    niter: int | None = described(None, "null = a full SVD; an integer = that many fast (randomised) SVD iterations")
    adapter_name: ClassVar[str] = "pissa"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.niter is not None:
            require_positive_int(self.adapter_name, "niter", self.niter)


class PissaAdapter(LoraAdapter):
    """PiSSA moves the principal part of W into A, B, so its files are converted on save.

    PiSSA rewrites the base weights to the residual W - B0 A0. A trained PiSSA adapter therefore
    only makes sense on top of that residual; `save` stores instead the equivalent plain LoRA of
    rank 2r on the untouched base (PEFT's documented conversion: B A - B0 A0 = [B | -B0][A ; A0]),
    so `load` works on a fresh pretrained model. `merge` of an applied model is exact either way.
    """

    name = "pissa"
    options_type = PissaOptions
    options: PissaOptions

    def __init__(self, options: PissaOptions) -> None:
        super().__init__(options)
        self._initial_state: dict[str, torch.Tensor] | None = None

    def _init_lora_weights(self) -> bool | str:
        return "pissa" if self.options.niter is None else f"pissa_niter_{self.options.niter}"

    def _inject(self, model: nn.Module) -> nn.Module:
        peft_model = super()._inject(model)
        # Kept on the CPU: it is only read when saving, and would otherwise double the adapter's GPU memory.
        self._initial_state = {
            key: tensor.detach().to("cpu", copy=True).contiguous()
            for key, tensor in get_peft_model_state_dict(peft_model).items()
        }
        return peft_model

    def _save_peft_files(self, peft_model: PeftModel, directory: Path) -> None:
        if self._initial_state is None:  # loaded from disk: already a plain LoRA on the untouched base
            super()._save_peft_files(peft_model, directory)
            return
        with tempfile.TemporaryDirectory() as scratch:
            initial_dir = Path(scratch) / "pissa_init"
            initial_dir.mkdir()
            save_file(self._initial_state, str(initial_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
            peft_model.save_pretrained(
                str(directory), save_embedding_layers=False, path_initial_model_for_weight_conversion=str(initial_dir)
            )

    def _load_adapter(self, model: nn.Module, directory: Path) -> nn.Module:
        self._initial_state = None
        return super()._load_adapter(model, directory)


# -- VeRA -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VeraOptions:
    """VeRA (Kopiczko et al. 2024): frozen shared random A, B of rank r; trains scaling vectors b and d."""

    rank: int = described(256, "rank r of the shared frozen random projections A, B")
    target_modules: list[str] | str | None = described(None, TARGET_MODULES_HELP)
    projection_prng_key: int = described(0, "seed of the shared random projections")
    d_initial: float = described(0.1, "initial value of the trained scaling vector d")
    dropout: float = described(0.0, "dropout on the adapter's input, in [0, 1]")

    def __post_init__(self) -> None:
        require_positive_int("vera", "rank", self.rank)
        require_target_modules("vera", self.target_modules)
        if isinstance(self.projection_prng_key, bool) or not isinstance(self.projection_prng_key, int):
            raise ValueError(
                f"adapter 'vera': option 'projection_prng_key' must be an integer, got {self.projection_prng_key!r}"
            )
        require_number("vera", "d_initial", self.d_initial)
        require_number("vera", "dropout", self.dropout, minimum=0, maximum=1)


class VeraAdapter(PeftAdapter):
    name = "vera"
    options_type = VeraOptions
    options: VeraOptions

    def _peft_config(self) -> PeftConfig:
        return VeraConfig(
            r=self.options.rank,
            target_modules=self.options.target_modules,
            projection_prng_key=self.options.projection_prng_key,
            d_initial=self.options.d_initial,
            vera_dropout=self.options.dropout,
            # The projections are a few MB at most; saving them keeps loading exact on any hardware.
            save_projection=True,
        )


# -- FourierFT --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FourierFTOptions:
    """FourierFT (Gao et al. 2024): trains n spectral coefficients per matrix at fixed random frequencies."""

    n_frequency: int = described(1000, "spectral coefficients trained per matrix")
    scaling: float = described(150.0, "scale of the inverse Fourier transform's output (the paper: 150 GLUE, 300 ViT)")
    random_loc_seed: int = described(777, "seed of the fixed random frequencies")
    target_modules: list[str] | str | None = described(None, TARGET_MODULES_HELP)

    def __post_init__(self) -> None:
        require_positive_int("fourierft", "n_frequency", self.n_frequency)
        require_number("fourierft", "scaling", self.scaling)
        if isinstance(self.random_loc_seed, bool) or not isinstance(self.random_loc_seed, int):
            raise ValueError(
                f"adapter 'fourierft': option 'random_loc_seed' must be an integer, got {self.random_loc_seed!r}"
            )
        require_target_modules("fourierft", self.target_modules)


class FourierFTAdapter(PeftAdapter):
    name = "fourierft"
    options_type = FourierFTOptions
    options: FourierFTOptions

    def _peft_config(self) -> PeftConfig:
        return FourierFTConfig(
            n_frequency=self.options.n_frequency,
            scaling=self.options.scaling,
            random_loc_seed=self.options.random_loc_seed,
            target_modules=self.options.target_modules,
        )


# -- TinyLoRA ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinyLoraOptions:
    """TinyLoRA: frozen rank-r SVD of W, steered by a trainable vector of size u through fixed random projections."""

    rank: int = described(2, "rank r of the frozen SVD of W")
    u: int = described(64, "size of the trained vector")
    weight_tying: float = described(
        0.0, "how widely the vector is shared, in [0, 1]: 0 = one per module, 1 = one for the whole model"
    )
    projection_seed: int = described(42, "seed of the fixed random projections")
    dropout: float = described(0.0, "dropout on the adapter's input, in [0, 1]")
    target_modules: list[str] | str | None = described(None, TARGET_MODULES_HELP)

    def __post_init__(self) -> None:
        require_positive_int("tinylora", "rank", self.rank)
        require_positive_int("tinylora", "u", self.u)
        require_number("tinylora", "weight_tying", self.weight_tying, minimum=0, maximum=1)
        if isinstance(self.projection_seed, bool) or not isinstance(self.projection_seed, int):
            raise ValueError(
                f"adapter 'tinylora': option 'projection_seed' must be an integer, got {self.projection_seed!r}"
            )
        require_number("tinylora", "dropout", self.dropout, minimum=0, maximum=1)
        require_target_modules("tinylora", self.target_modules)


class TinyLoraAdapter(PeftAdapter):
    name = "tinylora"
    options_type = TinyLoraOptions
    options: TinyLoraOptions

    def __init__(self, options: TinyLoraOptions) -> None:
        if not hasattr(peft, "TinyLoraConfig"):
            raise ValueError(
                f"adapter 'tinylora' needs peft.TinyLoraConfig, which the installed PEFT {peft.__version__} lacks; "
                "upgrade PEFT (pip install -U peft) or choose another adapter"
            )
        super().__init__(options)

    def _peft_config(self) -> PeftConfig:
        return peft.TinyLoraConfig(
            r=self.options.rank,
            u=self.options.u,
            weight_tying=self.options.weight_tying,
            projection_seed=self.options.projection_seed,
            tinylora_dropout=self.options.dropout,
            target_modules=self.options.target_modules,
            save_projection=True,
        )
