"""Instruction tuning of decoder-only models (AutoModelForCausalLM): the paper's LLaMA2 + Alpaca experiment.

The adapter callback adapts `model` (q_proj/v_proj by default); the loss is transformers' causal-LM
loss on the response tokens (the data module masks prompt and padding with -100). Validation
reports the token-weighted held-out loss and its perplexity over the whole split (not a mean of
batch means), and `GenerationSamples` writes greedy answers to a fixed set of validation prompts
to `generations/epoch_<k>.md` after each validation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import SumMetric
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from ..data.instruct import IGNORE_INDEX, InstructDataModule, pad_token_id, read_records
from ..models import load_model, load_tokenizer, resolve_name_or_path
from .base import AdaptedTask

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf", "consolidated*.pth", "tf_model.h5")


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood, number of label tokens) of next-token prediction."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shift_labels != IGNORE_INDEX).sum()


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    stop_strings: Sequence[str] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (the new text only), batched with left padding.

    `stop_strings` end a sequence early (HumanEval's stop sequences save most of the generation time).
    The model's train/eval mode is restored afterwards, so a callback can call this mid-training.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so the prompts must end there
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token_id = tokenizer.eos_token_id
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
            encoded = {
                key: value.to(device) for key, value in encoded.items() if key in ("input_ids", "attention_mask")
            }
            stopping = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
            generated = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_token_id(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
                **stopping,
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


class GenerationSamples(L.Callback):
    """Writes greedy generations for fixed validation prompts to `<run>/generations/epoch_<k>.md`.

    Losses say little about whether answers read well; a few samples per epoch do.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        add_special_tokens: bool = True,
        directory: str | Path | None = None,
    ):
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.max_new_tokens = int(max_new_tokens)
        self.add_special_tokens = add_special_tokens
        self.directory = Path(directory) if directory is not None else None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self.prompts:
            return
        answers = generate_texts(
            pl_module.model,
            self.tokenizer,
            self.prompts,
            self.max_new_tokens,
            add_special_tokens=self.add_special_tokens,
        )
        directory = self.directory or Path(trainer.default_root_dir) / "generations"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"epoch_{trainer.current_epoch}.md"
        loss = trainer.callback_metrics.get("val/loss")
        lines = [f"# Greedy generations after epoch {trainer.current_epoch} (step {trainer.global_step})", ""]
        if loss is not None:
            lines += [
                f"val/loss {float(loss):.4f}, val/perplexity {math.exp(float(loss)):.2f}; "
                f"max_new_tokens {self.max_new_tokens}",
                "",
            ]
        for number, (prompt, answer) in enumerate(zip(self.prompts, answers, strict=True), start=1):
            lines += [
                f"## Prompt {number}",
                "",
                "```text",
                prompt.rstrip(),
                "```",
                "",
                "**Response:**",
                "",
                "```text",
                answer.strip(),
                "```",
                "",
            ]
        path.write_text("\n".join(lines))
        log.info("Wrote %d generations to %s", len(answers), path)


class InstructTask(AdaptedTask):
    """Causal-LM fine-tuning on response tokens; val/loss (token-weighted) and val/perplexity."""

    def __init__(
        self,
        model: nn.Module,
        head_modules: Sequence[str],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        callbacks: Sequence[L.Callback] = (),
    ):
        super().__init__(model, head_modules, optimizer, scheduler)
        self.val_nll = SumMetric()
        self.val_tokens = SumMetric()
        self._task_callbacks = list(callbacks)

    def configure_callbacks(self) -> list[L.Callback]:
        return self._task_callbacks

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch.pop("labels")
        logits = self.model(**batch).logits
        total, count = token_nll(logits, labels)
        self.val_nll.update(total)
        self.val_tokens.update(count)

    def on_validation_epoch_end(self) -> None:
        tokens = self.val_tokens.compute()
        loss = self.val_nll.compute() / tokens.clamp(min=1)
        self.log_dict({"val/loss": loss, "val/perplexity": torch.exp(loss)}, prog_bar=True)
        self.log("val/tokens", tokens.float())
        self.val_nll.reset()
        self.val_tokens.reset()


def check_model_files(model_cfg: Mapping) -> None:
    """A local model folder must hold weights (and the named GGUF file): say so before anything loads."""
    if model_cfg.get("tiny"):
        return
    name = str(model_cfg["name_or_path"])
    folder = Path(resolve_name_or_path(name))
    if not folder.is_dir():
        return  # a hub id: from_pretrained's own error (wrapped by load_model) applies
    gguf = model_cfg.get("gguf_file")
    if gguf:
        if not (folder / gguf).is_file():
            found = sorted(p.name for p in folder.glob("*.gguf"))
            raise FileNotFoundError(
                f"model.gguf_file={gguf} is not in {folder} (GGUF files there: {found}); set "
                "model.gguf_file to one of them, or model.gguf_file=null for a transformers folder."
            )
        return
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"model.name_or_path={name} is a folder without model weights (no *.safetensors or pytorch_model*.bin; it "
            f"holds {sorted(p.name for p in folder.iterdir())[:10]}). Download the complete model (e.g. `huggingface-cli "
            f"download meta-llama/Llama-2-7b-hf --local-dir {folder}`) or convert Meta's checkpoint with transformers' "
            "convert_llama_weights_to_hf.py, then point model.name_or_path at that folder."
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.name_or_path={name} has weights but no config.json; a transformers model "
            "folder needs both (save it with save_pretrained, or download the full repository)."
        )


def load_causal_lm(model_cfg: Mapping) -> nn.Module:
    check_model_files(model_cfg)
    model = load_model(model_cfg, AutoModelForCausalLM)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    return model


def build_instruct_datamodule(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> InstructDataModule:
    data = cfg.data
    return InstructDataModule(
        tokenizer,
        path=data.get("path"),
        hf_dataset=data.get("hf_dataset"),
        prompt_format=data.prompt_format,
        train_on_inputs=data.train_on_inputs,
        max_length=data.max_length,
        val_size=data.get("val_size"),
        batch_size=data.batch_size,
        eval_batch_size=data.get("eval_batch_size"),
        num_workers=data.num_workers,
        train_limit=data.get("train_limit"),
        val_limit=data.get("val_limit"),
        seed=cfg.seed,
        group_by_length=data.group_by_length,
    )


def check_vocabulary(model: nn.Module, tokenizer: PreTrainedTokenizerBase, model_cfg: Mapping) -> None:
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but model {model_cfg['name_or_path']} embeds only "
            f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer "
            "(model.tokenizer=null) or a tiny model with a larger vocab_size."
        )


def build_instruct(cfg: DictConfig) -> tuple[InstructTask, InstructDataModule]:
    """The `instruct` task family: a causal LM and Alpaca-style data (files checked before the model loads)."""
    check_model_files(cfg.model)
    if cfg.data.get("path"):
        read_records(cfg.data.path)  # a typo in the data costs a second, not a tokenizer (GGUF: ~20 s) and model load
    tokenizer = load_tokenizer(cfg.model)
    datamodule = build_instruct_datamodule(cfg, tokenizer)
    datamodule.check_data()
    model = load_causal_lm(cfg.model)
    check_vocabulary(model, tokenizer, cfg.model)
    generation = cfg.task.get("generation") or {}
    prompts = datamodule.validation_prompts(int(generation.get("num_prompts", 0)))
    callbacks = (
        [
            GenerationSamples(
                tokenizer,
                prompts,
                generation.get("max_new_tokens", 64),
                add_special_tokens=datamodule.prompt_format == "alpaca",
            )
        ]
        if prompts
        else []
    )
    module = InstructTask(model, cfg.model.head_modules, cfg.optimizer, cfg.scheduler, callbacks)
    return module, datamodule
