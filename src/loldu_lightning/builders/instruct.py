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
from ..tasks.instruct import InstructTask
from .plain import plain


def build_instruct_datamodule(cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> InstructDataModule:
    config = plain(cfg)
    data = config["data"]
    return InstructDataModule(
        tokenizer,
        path=data.get("path"),
        hf_dataset=data.get("hf_dataset"),
        prompt_format=data["prompt_format"],
        train_on_inputs=data["train_on_inputs"],
        max_length=data["max_length"],
        val_size=data.get("val_size"),
        batch_size=data["batch_size"],
        eval_batch_size=data.get("eval_batch_size"),
        num_workers=data["num_workers"],
        train_limit=data.get("train_limit"),
        val_limit=data.get("val_limit"),
        seed=config["seed"],
        group_by_length=data["group_by_length"],
    )


def check_vocabulary(model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_cfg: Mapping) -> None:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but model {model_cfg['name_or_path']} embeds only "
            f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer "
            "(model.tokenizer=null) or a tiny model with a larger vocab_size."
        )


def generation_callbacks(
    task: Mapping[str, Any], datamodule: InstructDataModule, tokenizer: PreTrainedTokenizerBase
) -> list[L.Callback]:
    """Greedy answers to `task.generation.num_prompts` fixed validation prompts after each validation."""
    generation = task.get("generation") or {}  # task.generation=null turns the samples off
    prompts = datamodule.validation_prompts(int(generation.get("num_prompts") or 0))
    if not prompts:
        return []
    return [
        GenerationSamples(
            tokenizer,
            prompts,
            generation["max_new_tokens"],
            add_special_tokens=datamodule.prompt_format == "alpaca",
        )
    ]


def build_instruct(cfg: Mapping[str, Any]) -> tuple[InstructTask, InstructDataModule]:
    config = plain(cfg)
    model_cfg = config["model"]
    check_model_files(model_cfg)
    if config["data"].get("path"):
        # a typo in the data costs a second, not a tokenizer (GGUF: ~20 s) and model load
        read_records(config["data"]["path"])
    tokenizer = load_tokenizer(model_cfg)
    datamodule = build_instruct_datamodule(config, tokenizer)
    datamodule.check_data()
    model = load_causal_lm(model_cfg)
    check_vocabulary(model, tokenizer, model_cfg)
    callbacks = generation_callbacks(config["task"], datamodule, tokenizer)
    module = InstructTask(model, model_cfg["head_modules"], config["optimizer"], config["scheduler"], callbacks)
    return module, datamodule
