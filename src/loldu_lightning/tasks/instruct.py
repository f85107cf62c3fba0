"""Instruction tuning of decoder-only models (AutoModelForCausalLM): the paper's LLaMA2 + Alpaca experiment.

The adapter callback adapts `model` (q_proj/v_proj by default); the loss is transformers' causal-LM
loss on the response tokens (the data module masks prompt and padding with -100). Validation
reports the token-weighted held-out loss and its perplexity over the whole split (not a mean of
batch means), and `GenerationSamples` writes greedy answers to a fixed set of validation prompts
to `generations/epoch_<k>.md` after each validation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from ..data.instruct import TokenNLL
from .base import AdaptedTask

log = logging.getLogger(__name__)


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
        self.val_nll = TokenNLL()
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
        self.val_nll.update(self.model(**batch).logits, labels)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_nll.compute()
        self.log_dict({"val/loss": metrics["loss"], "val/perplexity": metrics["perplexity"]}, prog_bar=True)
        self.log("val/tokens", metrics["tokens"])
        self.val_nll.reset()
