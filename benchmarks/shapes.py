"""The model shapes and ranks each benchmark runs at: the paper's sizes, or tiny ones for a smoke run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BenchShapes:
    """Every size the suite uses, so the smoke run exercises exactly the same code at toy scale.

    The encoder is ``RobertaConfig(**encoder_overrides)`` (empty = roberta-base defaults).
    ``full_rank`` is the paper's GLUE rank (768 = full rank of a roberta-base q/v matrix).
    """

    encoder_overrides: dict[str, Any] = field(default_factory=dict)
    targets: tuple[str, ...] = ("query", "value")
    batch: int = 8
    seq_len: int = 128
    full_rank: int = 768
    low_rank: int = 64
    lora_reference_rank: int = 16
    layer_dim: int = 4096
    layer_tokens: int = 256
    layer_rank: int = 1024
    num_labels: int = 2


PAPER = BenchShapes()

QUICK = BenchShapes(
    encoder_overrides={
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 1000,
        "max_position_embeddings": 40,
    },
    batch=2,
    seq_len=16,
    full_rank=64,
    low_rank=8,
    lora_reference_rank=4,
    layer_dim=128,
    layer_tokens=32,
    layer_rank=32,
)
