"""Builds the models each benchmark compares, all from one frozen base so they differ only in the adapter.

Every variant is a copy of the base model that *shares* the frozen backbone tensors (so eight
roberta-base variants cost one backbone of RAM) and owns its trainable head and adapter. Nothing
here mutates a shared tensor: LoLDU keeps W0 untouched by design, PEFT LoRA's default init does not
write the base weight, and the naive reference and PiSSA get their own copy of the targeted weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import RobertaConfig, RobertaForSequenceClassification

from loldu_lightning.loldu import LoLDUConfig, inject

from .naive_loldu import apply_naive_ldu
from .shapes import BenchShapes

HEAD_PREFIX = "classifier."


@dataclass
class TrainingVariant:
    """A model ready to train, its optimizer, and one full training step as a callable."""

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    step: Callable[[], None]
    adapter_params: int


def build_encoder(shapes: BenchShapes, device: torch.device, seed: int) -> RobertaForSequenceClassification:
    """Randomly initialised RobertaForSequenceClassification (roberta-base unless shapes say otherwise), frozen."""
    torch.manual_seed(seed)
    config = RobertaConfig(num_labels=shapes.num_labels, **shapes.encoder_overrides)
    model = RobertaForSequenceClassification(config).to(device)
    model.requires_grad_(False)
    return model


def encoder_batch(shapes: BenchShapes, vocab_size: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """One fixed batch of random tokens and labels (no padding, so every variant does the same work)."""
    generator = torch.Generator().manual_seed(seed)
    # Ids 0..2 are roberta's special tokens; real text mostly avoids them.
    input_ids = torch.randint(3, vocab_size, (shapes.batch, shapes.seq_len), generator=generator)
    labels = torch.randint(0, shapes.num_labels, (shapes.batch,), generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "labels": labels.to(device),
    }


def shared_copy(model: nn.Module, private: Callable[[str], bool]) -> nn.Module:
    """Deep copy that reuses the parameter objects of ``model`` except those whose name is ``private``."""
    memo = {id(p): p for name, p in model.named_parameters() if not private(name)}
    return copy.deepcopy(model, memo)


def is_target_weight(name: str, targets: tuple[str, ...]) -> bool:
    """True for ``...<target>.weight`` / ``...<target>.bias`` parameter names."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-2] in targets


def _adapter_param_count(model: nn.Module, head_marker: str | None) -> int:
    """Trainable parameters outside the head (PEFT prefixes names, so match anywhere in the name)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not (head_marker is not None and head_marker in name)
    )


Forward = Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor | None]]


def _make_step(model: nn.Module, optimizer: torch.optim.Optimizer | None, forward: Forward) -> Callable[[], None]:
    """forward(model) -> (output, gradient of the loss w.r.t. output, or None for a scalar loss)."""

    def step() -> None:
        output, output_grad = forward(model)
        output.backward(output_grad)
        if optimizer is not None:
            optimizer.step()
            # Gradients freed after each step, as Lightning does, so a step starts with none allocated.
            optimizer.zero_grad(set_to_none=True)

    return step


def _optimizer_for(model: nn.Module) -> torch.optim.Optimizer | None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=1e-4) if trainable else None


# --- adapters applied to a private-or-shared copy -------------------------------------------------


def add_loldu(model: nn.Module, targets: tuple[str, ...], rank: int, forward_mode: str, **options: object) -> nn.Module:
    """The library's LoLDU on ``targets`` with alpha = rank (the paper's setting); ``options``: other
    ``LoLDUConfig`` fields (``storage``, ``dtype``)."""
    inject(
        model, LoLDUConfig(rank=rank, alpha=float(rank), target_modules=targets, forward_mode=forward_mode, **options)
    )
    return model


def add_lora(model: nn.Module, targets: tuple[str, ...], rank: int, init: bool | str = True) -> nn.Module:
    """PEFT LoRA (alpha = rank, no dropout) on ``targets``; PEFT freezes everything but the adapter."""
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=list(targets), init_lora_weights=init)
    return get_peft_model(model, config)


# --- section 1: the encoder ------------------------------------------------------------------------


def encoder_variants(
    base: RobertaForSequenceClassification, shapes: BenchShapes, batch: dict[str, torch.Tensor]
) -> dict[str, TrainingVariant]:
    """The training-step variants on the encoder, keyed by role; the head trains in all of them."""
    targets = shapes.targets
    r_full, r_low, r_ref = shapes.full_rank, shapes.low_rank, shapes.lora_reference_rank
    builders: dict[str, tuple[str, Callable[[nn.Module], nn.Module], bool]] = {
        # key: (label, adapter, needs a private copy of the targeted weights)
        "lora_ref": (f"PEFT LoRA r={r_ref}", lambda m: add_lora(m, targets, r_ref), False),
        "lora_full": (f"PEFT LoRA r={r_full}", lambda m: add_lora(m, targets, r_full), False),
        "loldu_full_auto": (f"LoLDU r={r_full} auto", lambda m: add_loldu(m, targets, r_full, "auto"), False),
        "loldu_full_factored": (
            f"LoLDU r={r_full} factored",
            lambda m: add_loldu(m, targets, r_full, "factored"),
            False,
        ),
        "loldu_full_merged": (f"LoLDU r={r_full} merged", lambda m: add_loldu(m, targets, r_full, "merged"), False),
        "loldu_low_auto": (f"LoLDU r={r_low} auto", lambda m: add_loldu(m, targets, r_low, "auto"), False),
        "loldu_full_packed": (
            f"LoLDU r={r_full} auto, storage=packed",
            lambda m: add_loldu(m, targets, r_full, "auto", storage="packed"),
            False,
        ),
        "loldu_full_lu": (
            f"LoLDU r={r_full} auto, storage=lu",
            lambda m: add_loldu(m, targets, r_full, "auto", storage="lu"),
            False,
        ),
        "floor": ("frozen backbone (floor)", _frozen_floor, False),
        "naive": (f"naive P@L@diag(z)@U r={r_full}", lambda m: _naive(m, targets, r_full), True),
    }

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, None]:
        return model(**batch).loss, None

    variants = {}
    for key, (label, adapt, private_targets) in builders.items():
        model = shared_copy(
            base,
            lambda name, private=private_targets: (
                name.startswith(HEAD_PREFIX) or (private and is_target_weight(name, targets))
            ),
        )
        model = adapt(model)
        for name, param in model.named_parameters():
            if HEAD_PREFIX in name:
                param.requires_grad_(True)
        model.train()
        optimizer = _optimizer_for(model)
        variants[key] = TrainingVariant(
            label, model, optimizer, _make_step(model, optimizer, loss_fn), _adapter_param_count(model, HEAD_PREFIX)
        )
    return variants


def _frozen_floor(model: nn.Module) -> nn.Module:
    """No adapter; the embeddings' output requires grad so backward still runs through every layer."""
    model.enable_input_require_grads()
    return model


def _naive(model: nn.Module, targets: tuple[str, ...], rank: int) -> nn.Module:
    apply_naive_ldu(model, targets, rank, alpha=float(rank))
    return model


# --- section 2: one LLaMA-shaped projection --------------------------------------------------------


class ProjectionHost(nn.Module):
    """One bias-free square projection named like LLaMA's ``q_proj``, so adapters target it by name."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x)


def projection_variants(shapes: BenchShapes, device: torch.device, seed: int) -> dict[str, TrainingVariant]:
    """Training-step variants on one ``dim x dim`` layer fed ``layer_tokens`` tokens (batch 1).

    The input requires grad, as a layer inside a network does, so every variant also pays the
    input gradient; a fixed upstream gradient stands in for the rest of the network.
    """
    torch.manual_seed(seed)
    base = ProjectionHost(shapes.layer_dim).to(device).requires_grad_(False)
    x = torch.randn(1, shapes.layer_tokens, shapes.layer_dim, device=device, requires_grad=True)
    upstream = torch.randn(1, shapes.layer_tokens, shapes.layer_dim, device=device)
    targets, r, r_ref = ("q_proj",), shapes.layer_rank, shapes.lora_reference_rank
    builders: dict[str, tuple[str, Callable[[nn.Module], nn.Module], bool]] = {
        "lora_ref": (f"PEFT LoRA r={r_ref}", lambda m: add_lora(m, targets, r_ref), False),
        "loldu_auto": (f"LoLDU r={r} auto", lambda m: add_loldu(m, targets, r, "auto"), False),
        "loldu_factored": (f"LoLDU r={r} factored", lambda m: add_loldu(m, targets, r, "factored"), False),
        "loldu_merged": (f"LoLDU r={r} merged", lambda m: add_loldu(m, targets, r, "merged"), False),
        "floor": ("frozen layer (floor)", lambda m: m, False),
        "naive": (f"naive P@L@diag(z)@U r={r}", lambda m: _naive(m, targets, r), True),
    }

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x.grad = None  # the input gradient is recomputed every step, not accumulated
        return model(x), upstream

    variants = {}
    for key, (label, adapt, private_targets) in builders.items():
        model = shared_copy(base, lambda name, private=private_targets: private and is_target_weight(name, targets))
        model = adapt(model)
        model.train()
        optimizer = _optimizer_for(model)
        variants[key] = TrainingVariant(
            label, model, optimizer, _make_step(model, optimizer, loss_fn), _adapter_param_count(model, None)
        )
    return variants


# --- section 5: a LLaMA-shaped q/v pair, per storage option ----------------------------------------


class QVHost(nn.Module):
    """Two bias-free square projections named like LLaMA's ``q_proj`` and ``v_proj`` on one input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x) + self.v_proj(x)


def storage_variants(shapes: BenchShapes, device: torch.device, seed: int) -> dict[str, TrainingVariant]:
    """Training steps on a q/v pair of ``layer_dim`` squares fed ``layer_tokens`` tokens (the input
    requires grad, a fixed upstream gradient stands in for the network), one per storage option."""
    torch.manual_seed(seed)
    base = QVHost(shapes.layer_dim).to(device).requires_grad_(False)
    x = torch.randn(1, shapes.layer_tokens, shapes.layer_dim, device=device, requires_grad=True)
    upstream = torch.randn(1, shapes.layer_tokens, shapes.layer_dim, device=device)
    targets, r, r_ref, full = ("q_proj", "v_proj"), shapes.layer_rank, shapes.lora_reference_rank, shapes.layer_dim
    builders: dict[str, tuple[str, Callable[[nn.Module], nn.Module]]] = {
        "lora_ref": (f"PEFT LoRA r={r_ref}", lambda m: add_lora(m, targets, r_ref)),
        "dense": (f"LoLDU r={r} dense (default)", lambda m: add_loldu(m, targets, r, "auto")),
        "dense_bf16": (
            f"LoLDU r={r} dense, dtype=bfloat16",
            lambda m: add_loldu(m, targets, r, "auto", dtype="bfloat16"),
        ),
        "lu": (f"LoLDU r={r} lu", lambda m: add_loldu(m, targets, r, "auto", storage="lu")),
        "full_dense": (f"LoLDU r={full} (full) dense", lambda m: add_loldu(m, targets, full, "auto")),
        "full_packed": (
            f"LoLDU r={full} (full) packed",
            lambda m: add_loldu(m, targets, full, "auto", storage="packed"),
        ),
        "full_lu": (f"LoLDU r={full} (full) lu", lambda m: add_loldu(m, targets, full, "auto", storage="lu")),
        "floor": ("frozen pair (floor)", lambda m: m),
    }

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x.grad = None
        return model(x), upstream

    variants = {}
    for key, (label, adapt) in builders.items():
        model = adapt(shared_copy(base, lambda name: False))
        model.train()
        optimizer = _optimizer_for(model)
        variants[key] = TrainingVariant(
            label, model, optimizer, _make_step(model, optimizer, loss_fn), _adapter_param_count(model, None)
        )
    return variants
