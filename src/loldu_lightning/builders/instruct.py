"""The `instruct` family: a causal LM and Alpaca-style data (files checked before the model loads)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..callbacks.generation import GenerationSamples
from ..data.instruct import InstructDataModule, read_records
from ..models import check_model_files, load_causal_lm, load_tokenizer
from ..options import GenerationOptions, InstructDataOptions, RunOptions
from ..tasks.instruct import InstructTask
from .optimization import optimizer_config, scheduler_config
from .schema import run_options


def build_instruct_datamodule(
    data: InstructDataOptions, seed: int, tokenizer: PreTrainedTokenizerBase
) -> InstructDataModule:
    return InstructDataModule(tokenizer, data, seed=seed)


def check_vocabulary(model: nn.Module, tokenizer: PreTrainedTokenizerBase, name_or_path: str) -> None:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but model {name_or_path} embeds only "
            f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer "
            "(model.tokenizer=null) or a tiny model with a larger vocab_size."
        )


def generation_callbacks(
    generation: GenerationOptions | None, datamodule: InstructDataModule, tokenizer: PreTrainedTokenizerBase
) -> list[L.Callback]:
    """Greedy answers to `task.generation.num_prompts` fixed validation prompts after each validation
    (none for `task.generation=null` or `num_prompts=0`)."""
    prompts = datamodule.validation_prompts(generation.num_prompts if generation is not None else 0)
    if not prompts:
        return []
    return [
        GenerationSamples(
            tokenizer,
            prompts,
            generation.max_new_tokens,
            add_special_tokens=datamodule.options.prompt_format == "alpaca",
        )
    ]


def build_instruct(
    cfg: Mapping[str, Any], options: RunOptions | None = None
) -> tuple[InstructTask, InstructDataModule]:
    options = options if options is not None else run_options(cfg)
    check_model_files(options.model)
    if options.data.path:
        # a typo in the data costs a second, not a tokenizer (GGUF: ~20 s) and model load
        read_records(options.data.path)
    tokenizer = load_tokenizer(options.model)
    datamodule = build_instruct_datamodule(options.data, options.seed, tokenizer)
    datamodule.check_data()
    model = load_causal_lm(options.model)
    check_vocabulary(model, tokenizer, options.model.name_or_path)
    callbacks = generation_callbacks(options.task.generation, datamodule, tokenizer)
    module = InstructTask(
        model,
        options.model.head_modules,
        optimizer_config(options),
        scheduler_config(options.scheduler),
        callbacks,
    )
    return module, datamodule
