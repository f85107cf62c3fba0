"""Held-out loss and perplexity on the instruction data's validation split (response tokens only).

    python -m loldu_lightning.evaluate perplexity --run-dir outputs/instruct/alpaca/<date>
    python -m loldu_lightning.evaluate perplexity --model smollm2-135m --output-dir eval/smollm2-base \
        --override data.path=../shared/data/alpaca/alpaca_5000.json

The split, template, cut-off and seed come from the run's config (or the overrides), so a base model
and an adapted one are scored on exactly the same tokens: this is the before-training row.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.instruct import InstructDataModule, TokenNLL
from ..options import InstructDataOptions
from . import write_eval_results
from .causal_lm import add_model_arguments, load_for_evaluation

log = logging.getLogger(__name__)
NAME = "perplexity"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)


def instruct_datamodule(cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> InstructDataModule:
    """The run's instruction data from its plain config. A run folder saved before an option existed
    has no key for it: such a key reads as that run read it (null; eval_batch_size: the training batch
    size), not as today's default."""
    data = cfg["data"]
    options = InstructDataOptions(
        path=data.get("path"),
        hf_dataset=data.get("hf_dataset"),
        prompt_format=data["prompt_format"],
        train_on_inputs=data["train_on_inputs"],
        max_length=data["max_length"],
        val_size=data.get("val_size"),
        batch_size=data["batch_size"],
        eval_batch_size=data.get("eval_batch_size") or data["batch_size"],
        num_workers=data["num_workers"],
        train_limit=data.get("train_limit"),
        val_limit=data.get("val_limit"),
        group_by_length=data["group_by_length"],
    )
    return InstructDataModule(tokenizer, options, seed=cfg["seed"])


class HeldOutLoss(L.LightningModule):
    """The token-weighted loss over the whole validation split (as the instruct task's validation
    reports it: summed NLL over summed response tokens, not a mean of batch means)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.nll = TokenNLL()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch.pop("labels")
        self.nll.update(self.model(**batch).logits, labels)

    def on_validation_epoch_end(self) -> None:
        metrics = self.nll.compute()
        self.log_dict({f"val/{name}": value for name, value in metrics.items()})


def run(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_for_evaluation(args)
    cfg = loaded.cfg
    datamodule = instruct_datamodule(cfg, loaded.tokenizer)
    datamodule.check_data()
    trainer = L.Trainer(
        accelerator="gpu" if str(loaded.model.device).startswith("cuda") else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        precision=cfg["trainer"].get("precision", "32-true"),  # a run folder may predate the key
    )
    (metrics,) = trainer.validate(HeldOutLoss(loaded.model), datamodule=datamodule, verbose=False)
    results = {
        **loaded.description,
        "val_loss": float(metrics["val/loss"]),
        "val_perplexity": float(metrics["val/perplexity"]),
        "val_tokens": int(metrics["val/tokens"]),
        "val_examples": len(datamodule.datasets["validation"]),
        "max_length": datamodule.options.max_length,
        "prompt_format": datamodule.options.prompt_format,
    }
    path = write_eval_results(loaded.output_dir, NAME, results)
    log.info(
        "perplexity %.3f (loss %.4f) over %d tokens -> %s",
        results["val_perplexity"],
        results["val_loss"],
        results["val_tokens"],
        path,
    )
    return results
