"""Sections `gpu_encoder` and `gpu_llama`: training-step time and peak memory against PEFT LoRA on a GPU.

- `gpu_encoder`: roberta-base (random weights) at the paper's GLUE batch of 32 x 128 tokens under bf16
  autocast (what `trainer=gpu` runs), adapters on query/value: LoLDU r=768 and r=64 against LoRA r=16.
- `gpu_llama`: LLaMA2-7B's shapes (hidden 4096, MLP 11008, 32 heads, vocabulary 32000) in bf16
  weights, one micro-batch of 256 tokens (Table VIII), adapters on q_proj/v_proj: LoLDU r=1024 against
  LoRA r=64. The decoder stack has all 32 layers when the GPU's free memory holds them, else as many
  as fit; the table says how many.

On CUDA each step is timed with CUDA events (`torch.cuda.Event(enable_timing=True)` around the call,
read after it completes) and the peak is `torch.cuda.max_memory_allocated` (see measure.py). On the
CPU (`--dry-run`) the same code runs at toy sizes with wall-clock timing and the estimated peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
import time
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from .measure import CaseTimes, interleaved_timings, synchronize
from .results import Table, Target
from .sections import noise_note, training_table
from .shapes import BenchShapes
from .variants import (
    HEAD_PREFIX,
    TrainingVariant,
    _adapter_param_count,
    _frozen_floor,
    _make_step,
    _optimizer_for,
    add_loldu,
    add_lora,
    build_encoder,
    encoder_batch,
    shared_copy,
)

GLUE_BATCH = 32  # Table VII
LLAMA_TARGETS = ("q_proj", "v_proj")


@dataclasses.dataclass(frozen=True)
class LlamaShapes:
    """A LLaMA-style decoder (LlamaConfig fields) and the ranks compared on it."""

    hidden: int = 4096
    intermediate: int = 11008
    heads: int = 32
    vocab: int = 32000
    max_layers: int = 32
    tokens: int = 256
    loldu_rank: int = 1024
    lora_rank: int = 64


LLAMA2_7B = LlamaShapes()
TINY_LLAMA = LlamaShapes(
    hidden=64, intermediate=172, heads=4, vocab=256, max_layers=2, tokens=32, loldu_rank=16, lora_rank=4
)


def is_toy(shapes: BenchShapes) -> bool:
    """The toy shapes of --quick/--dry-run override the encoder; the paper's leave it as roberta-base."""
    return bool(shapes.encoder_overrides)


# --- timing -------------------------------------------------------------------------------------


def event_timings(
    cases: Mapping[str, Callable[[], object]],
    *,
    warmup: int,
    steps: int,
    device: torch.device,
    progress: str | None = None,
) -> dict[str, CaseTimes]:
    """Round-robin timings like ``measure.interleaved_timings``; on CUDA each call is timed by CUDA events.

    Events measure the GPU's timeline between the two records, so neither Python's launch latency
    before the first kernel nor the host's wait after the last one is counted as step time. The
    ``cpu`` list keeps the process CPU time of each call. Off CUDA this is ``interleaved_timings``.
    """
    if device.type != "cuda":
        return interleaved_timings(cases, warmup=warmup, steps=steps, device=device, progress=progress)
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0 (got steps={steps}, warmup={warmup})")
    names = list(cases)
    times = {name: CaseTimes() for name in names}
    started = time.perf_counter()
    for round_index in range(warmup + steps):
        offset = round_index % len(names)
        for name in names[offset:] + names[:offset]:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            synchronize(device)
            cpu_start = time.process_time()
            start.record()
            cases[name]()
            end.record()
            end.synchronize()
            if round_index >= warmup:
                times[name].wall.append(start.elapsed_time(end) / 1e3)
                times[name].cpu.append(time.process_time() - cpu_start)
        if progress:
            kind = "warm-up" if round_index < warmup else "timed"
            print(
                f"[{progress}] round {round_index + 1}/{warmup + steps} ({kind}) done, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return times


def _timing_note(device: torch.device) -> str:
    if device.type == "cuda":
        return "Step times: CUDA events around each step (`torch.cuda.Event.elapsed_time`); peak: `torch.cuda.max_memory_allocated`."
    return "Dry run on the CPU: wall-clock step times and the estimated peak; the numbers mean nothing, the code path is the GPU's."


# --- section gpu_encoder ----------------------------------------------------------------------------


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16)


def gpu_encoder_variants(
    base: nn.Module, shapes: BenchShapes, batch: dict[str, torch.Tensor], device: torch.device
) -> dict[str, TrainingVariant]:
    """LoRA r=16, LoLDU r=768 and r=64 (auto path) and the frozen floor; forward under bf16 autocast."""
    targets, r_full, r_low, r_ref = shapes.targets, shapes.full_rank, shapes.low_rank, shapes.lora_reference_rank
    builders: dict[str, tuple[str, Callable[[nn.Module], nn.Module]]] = {
        "lora_ref": (f"PEFT LoRA r={r_ref}", lambda m: add_lora(m, targets, r_ref)),
        "loldu_full_auto": (f"LoLDU r={r_full} auto", lambda m: add_loldu(m, targets, r_full, "auto")),
        "loldu_full_factored": (f"LoLDU r={r_full} factored", lambda m: add_loldu(m, targets, r_full, "factored")),
        "loldu_full_merged": (f"LoLDU r={r_full} merged", lambda m: add_loldu(m, targets, r_full, "merged")),
        "loldu_low_auto": (f"LoLDU r={r_low} auto", lambda m: add_loldu(m, targets, r_low, "auto")),
        "floor": ("frozen backbone (floor)", _frozen_floor),
    }

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, None]:
        with _autocast(device):
            return model(**batch).loss, None

    variants = {}
    for key, (label, adapt) in builders.items():
        model = adapt(shared_copy(base, lambda name: name.startswith(HEAD_PREFIX)))
        for name, param in model.named_parameters():
            if HEAD_PREFIX in name:
                param.requires_grad_(True)
        model.train()
        optimizer = _optimizer_for(model)
        variants[key] = TrainingVariant(
            label, model, optimizer, _make_step(model, optimizer, loss_fn), _adapter_param_count(model, HEAD_PREFIX)
        )
    return variants


def gpu_encoder_training(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """roberta-base at the paper's GLUE batch under bf16 autocast: LoLDU r=768 / r=64 against LoRA r=16."""
    if not is_toy(shapes):
        shapes = dataclasses.replace(shapes, batch=GLUE_BATCH)
    base = build_encoder(shapes, device, seed)
    batch = encoder_batch(shapes, base.config.vocab_size, device, seed)
    variants = gpu_encoder_variants(base, shapes, batch, device)
    title = (
        f"GPU 1. Training step, {'tiny roberta' if is_toy(shapes) else 'roberta-base'} "
        f"({base.config.num_hidden_layers} layers, hidden {base.config.hidden_size}), batch {shapes.batch} x "
        f"{shapes.seq_len} tokens, bf16 autocast, adapters on {', '.join(shapes.targets)}"
    )
    table, times, memory = training_table(
        title, variants, "lora_ref", warmup=warmup, steps=steps, device=device, timer=event_timings
    )
    ref, full, low = shapes.lora_reference_rank, shapes.full_rank, shapes.low_rank
    table.notes += [
        _timing_note(device),
        "float32 weights, forward under `torch.autocast(bfloat16)` (Lightning's bf16-mixed); backward and AdamW outside it.",
        noise_note(variants, times, "loldu_full_auto", shapes.batch * shapes.seq_len),
    ]
    targets = [
        Target(
            f"GPU encoder: LoLDU r={full} auto step time / LoRA r={ref}",
            times["loldu_full_auto"] / times["lora_ref"],
            "<=",
            1.10,
        ),
        Target(
            f"GPU encoder: LoLDU r={low} auto step time / LoRA r={ref}",
            times["loldu_low_auto"] / times["lora_ref"],
            "<=",
            1.05,
        ),
        Target(
            f"GPU encoder: LoLDU r={full} auto peak memory / LoRA r={ref}",
            memory["loldu_full_auto"].peak / memory["lora_ref"].peak,
            "<=",
            1.10,
        ),
        Target(
            f"GPU encoder: LoLDU r={low} auto peak memory / LoRA r={ref}",
            memory["loldu_low_auto"].peak / memory["lora_ref"].peak,
            "<=",
            1.10,
        ),
    ]
    del variants, base
    _release(device)
    return table, targets


# --- section gpu_llama ------------------------------------------------------------------------------


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def llama_layer_bytes(llama: LlamaShapes, dtype_bytes: int) -> int:
    """One decoder layer's weights (q, k, v, o and the three MLP projections) plus its LoLDU q/v factors."""
    weights = 4 * llama.hidden**2 + 3 * llama.hidden * llama.intermediate
    factors = len(LLAMA_TARGETS) * llama.loldu_rank * 2 * llama.hidden
    return (weights + factors) * dtype_bytes


def llama_layers_that_fit(llama: LlamaShapes, device: torch.device, dtype_bytes: int = 2) -> int:
    """All ``max_layers`` when the free GPU memory holds them, else as many as fit in 70% of it after the
    embeddings, the LM head and 4 GiB for activations, logits and allocator slack (at least 1)."""
    if device.type != "cuda":
        return llama.max_layers
    free, _ = torch.cuda.mem_get_info(device)
    fixed = 2 * llama.vocab * llama.hidden * dtype_bytes + 4 * 2**30
    return max(1, min(llama.max_layers, int((0.7 * free - fixed) // llama_layer_bytes(llama, dtype_bytes))))


def build_llama(llama: LlamaShapes, layers: int, device: torch.device, seed: int) -> nn.Module:
    """A randomly initialised LlamaForCausalLM with ``layers`` decoder layers, created in bf16 on the device
    (7B-wide layers are never materialised in float32 or on the host), frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=llama.vocab,
        hidden_size=llama.hidden,
        intermediate_size=llama.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=llama.heads,
        num_key_value_heads=llama.heads,
        max_position_embeddings=max(llama.tokens, 64),
    )
    torch.manual_seed(seed)
    with _default_dtype(torch.bfloat16), torch.device(device):
        model = LlamaForCausalLM(config)
    return model.requires_grad_(False)


def gpu_llama_training(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """LLaMA2-7B-shaped decoder stack in bf16: LoLDU r=1024 against LoRA r=64 on q_proj/v_proj."""
    llama = TINY_LLAMA if is_toy(shapes) else LLAMA2_7B
    layers = llama_layers_that_fit(llama, device)
    base = build_llama(llama, layers, device, seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, llama.vocab, (1, llama.tokens), generator=generator).to(device)

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, None]:
        return model(input_ids=ids, labels=ids).loss, None

    r, r_ref = llama.loldu_rank, llama.lora_rank
    builders: dict[str, tuple[str, Callable[[nn.Module], nn.Module]]] = {
        "lora_ref": (f"PEFT LoRA r={r_ref}", lambda m: add_lora(m, LLAMA_TARGETS, r_ref)),
        "loldu_auto": (f"LoLDU r={r} auto", lambda m: add_loldu(m, LLAMA_TARGETS, r, "auto")),
        "floor": ("frozen stack (floor)", _frozen_floor),
    }
    variants = {}
    for key, (label, adapt) in builders.items():
        model = adapt(shared_copy(base, lambda name: False)).train()
        optimizer = _optimizer_for(model)
        variants[key] = TrainingVariant(
            label, model, optimizer, _make_step(model, optimizer, loss_fn), _adapter_param_count(model, None)
        )
    title = (
        f"GPU 2. Training step, {'tiny LLaMA' if is_toy(shapes) else 'LLaMA2-7B-shaped'} decoder stack "
        f"({layers} of {llama.max_layers} layers, hidden {llama.hidden}, MLP {llama.intermediate}), bf16 weights, "
        f"batch 1 x {llama.tokens} tokens, adapters on {', '.join(LLAMA_TARGETS)}"
    )
    table, times, memory = training_table(
        title, variants, "lora_ref", warmup=warmup, steps=steps, device=device, timer=event_timings
    )
    table.notes += [
        _timing_note(device),
        f"Layers: {layers} of {llama.max_layers} "
        + (
            "(all of them)."
            if layers == llama.max_layers
            else "(as many as fit in 70% of the free GPU memory; see gpu_sections.llama_layers_that_fit)."
        ),
        "Weights and LoLDU factors in bf16 (the factors take the weight's dtype); z, sigma and LoRA's A/B in float32.",
        f"LoLDU r={r} / LoRA r={r_ref}: step time {times['loldu_auto'] / times['lora_ref']:.2f}x, "
        f"peak memory {memory['loldu_auto'].peak / memory['lora_ref'].peak:.3f}x.",
    ]
    targets = [
        Target(
            f"GPU LLaMA stack: LoLDU r={r} auto step time / LoRA r={r_ref}",
            times["loldu_auto"] / times["lora_ref"],
            "<=",
            1.10,
        ),
        Target(
            f"GPU LLaMA stack: LoLDU r={r} auto peak memory / LoRA r={r_ref}",
            memory["loldu_auto"].peak / memory["lora_ref"].peak,
            "<=",
            1.10,
        ),
    ]
    del variants, base
    _release(device)
    return table, targets


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
