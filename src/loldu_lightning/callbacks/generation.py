"""Greedy answers to fixed validation prompts after each validation of an instruction-tuning run."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from transformers import PreTrainedTokenizerBase

from ..generation import generate_texts

log = logging.getLogger(__name__)


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
