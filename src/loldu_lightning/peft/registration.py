"""Registering LoLDU with PEFT: idempotent, and refused with one message on an untested PEFT.

PEFT looks up a method's config class, tuner class and parameter prefix in the
``PEFT_TYPE_TO_*`` mappings of ``peft.mapping``, which ``register_peft_method`` fills. The
supported range starts at PEFT 0.21, the first release whose tuner classes decide which state-dict
keys are theirs (``BaseTuner._remove_adapter_name_from_key``), which the saved factors need.
Registering again with the same classes is a no-op; re-importing this package as new module
objects (``importlib.reload``) replaces the entries with the new classes. A spawned DDP child is a
fresh interpreter and registers on its own import.
"""

from __future__ import annotations

import peft
from packaging.version import Version

from .config import LoLDUPeftConfig
from .model import PREFIX, LoLDUModel
from .peft_type import loldu_peft_type

# The PEFT releases the tests run against (pyproject's `peft` extra pins the same range).
SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))


def check_peft_version(version: str | None = None) -> None:
    """Raise one clear error when the installed PEFT is outside the supported range."""
    found = Version(version or peft.__version__)
    low, high = SUPPORTED_PEFT
    if not low <= Version(found.base_version) < high:
        raise ImportError(
            f"loldu_lightning.peft supports PEFT >= {low}, < {high}; found PEFT {found}. "
            f'Install a supported release: pip install "peft>={low},<{high}"'
        )


def register() -> None:
    """Make ``LoLDUPeftConfig`` usable with ``get_peft_model`` and ``PeftModel.from_pretrained``."""
    check_peft_version()
    from peft import mapping

    peft_type = loldu_peft_type()
    registered = mapping.PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is LoLDUPeftConfig and mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is LoLDUModel:
        return
    if registered is not None and registered.__qualname__ != LoLDUPeftConfig.__qualname__:
        raise RuntimeError(
            f"PEFT already has a method {peft_type.value} registered by {registered.__module__}.{registered.__qualname__}; "
            "two LoLDU integrations cannot be registered in one process"
        )
    if registered is not None:  # this module was re-imported: the new classes replace the old ones
        for table in (
            mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
            mapping.PEFT_TYPE_TO_TUNER_MAPPING,
            mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
            mapping.PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        ):
            table.pop(peft_type, None)
    peft.utils.register_peft_method(
        name=peft_type.value.lower(), config_cls=LoLDUPeftConfig, model_cls=LoLDUModel, prefix=PREFIX
    )
