"""LoLDU as a Hugging Face PEFT method, built on ``loldu_lightning.loldu``.

    import loldu_lightning.peft  # registers LoLDU with PEFT
    from peft import get_peft_model
    from loldu_lightning.peft import LoLDUPeftConfig
    model = get_peft_model(model, LoLDUPeftConfig(r=8, target_modules=["query", "value"]))

After the import, everything PEFT offers works with LoLDU adapters: ``save_pretrained``,
``PeftModel.from_pretrained``, merge/unmerge, ``merge_and_unload``, ``disable_adapter``, several
named adapters and ``modules_to_save``. See docs/peft.md.
"""

from __future__ import annotations

from .registration import check_peft_version

check_peft_version()  # before anything touches PEFT's internals

from .config import PEFT_FIELD_NAMES, LoLDUPeftConfig  # noqa: E402
from .fingerprints import BaseModelMismatch  # noqa: E402
from .layer import LoLDULayer  # noqa: E402
from .model import LoLDUModel  # noqa: E402
from .peft_type import loldu_peft_type  # noqa: E402
from .registration import SUPPORTED_PEFT, register  # noqa: E402

register()

__all__ = [
    "PEFT_FIELD_NAMES",
    "BaseModelMismatch",
    "SUPPORTED_PEFT",
    "LoLDULayer",
    "LoLDUModel",
    "LoLDUPeftConfig",
    "loldu_peft_type",
    "register",
]
