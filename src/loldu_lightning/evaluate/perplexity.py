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
from typing import Any

import lightning as L

from . import write_eval_results
from .causal_lm import add_model_arguments, load_for_evaluation

log = logging.getLogger(__name__)
NAME = "perplexity"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..builders.instruct import InstructTask, build_instruct_datamodule

    loaded = load_for_evaluation(args)
    cfg = loaded.cfg
    datamodule = build_instruct_datamodule(cfg, loaded.tokenizer)
    datamodule.check_data()
    module = InstructTask(loaded.model, (), cfg["optimizer"], cfg["scheduler"])
    trainer = L.Trainer(
        accelerator="gpu" if str(loaded.model.device).startswith("cuda") else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        precision=cfg["trainer"].get("precision", "32-true"),
    )
    (metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    results = {
        **loaded.description,
        "val_loss": float(metrics["val/loss"]),
        "val_perplexity": float(metrics["val/perplexity"]),
        "val_tokens": int(metrics["val/tokens"]),
        "val_examples": len(datamodule.datasets["validation"]),
        "max_length": datamodule.max_length,
        "prompt_format": datamodule.prompt_format,
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
