"""The four benchmark sections; each returns its table and the targets it checks."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable

import torch
from torch import nn

from loldu_lightning.loldu import ldu_decompose, ldu_decompose_packed, loldu_modules, triangular, unload
from loldu_lightning.loldu.forward_cost import (
    factored_extra_flops,
    merged_extra_flops,
    packed_path_flops,
    triangular_build_macs,
    triangular_product_macs,
)

from .measure import CaseTimes, StepMemory, interleaved_timings, measure_step_memory
from .results import Table, Target, megabytes, milliseconds, ratio
from .shapes import BenchShapes
from .variants import (
    TrainingVariant,
    add_loldu,
    add_lora,
    build_encoder,
    encoder_batch,
    encoder_variants,
    is_target_weight,
    projection_variants,
    shared_copy,
    storage_variants,
)


def _spread(times: CaseTimes) -> str:
    """Fastest and slowest timed call: how much the machine's load moved the numbers."""
    return f"{milliseconds(min(times.wall))}-{milliseconds(max(times.wall))}"


def _memory_column(device: torch.device) -> str:
    return "peak MiB (measured)" if device.type == "cuda" else "peak MiB (estimated)"


def training_table(
    title: str,
    variants: dict[str, TrainingVariant],
    reference: str,
    *,
    warmup: int,
    steps: int,
    device: torch.device,
    timer: Callable[..., dict[str, CaseTimes]] = interleaved_timings,
) -> tuple[Table, dict[str, float], dict[str, StepMemory]]:
    """Interleaved step times of every variant (``timer``: wall clock, or CUDA events in gpu_sections.py),
    then one instrumented step each for memory."""
    timings = timer(
        {key: v.step for key, v in variants.items()},
        warmup=warmup,
        steps=steps,
        device=device,
        progress=title.split(",")[0],
    )
    medians = {key: t.wall_median for key, t in timings.items()}
    cpu = {key: t.cpu_median for key, t in timings.items()}
    memory = {key: measure_step_memory(v.step, v.model, v.optimizer, device) for key, v in variants.items()}
    ref_label = variants[reference].label
    table = Table(
        title,
        [
            "variant",
            "adapter params",
            "step ms (median)",
            "min-max ms",
            f"time vs {ref_label}",
            "CPU-time ratio",
            _memory_column(device),
            f"memory vs {ref_label}",
            "weights+buffers MiB",
            "saved for backward MiB",
            "grads+AdamW MiB",
        ],
    )
    for key, variant in variants.items():
        mem = memory[key]
        table.rows.append(
            [
                variant.label,
                f"{variant.adapter_params:,}",
                milliseconds(medians[key]),
                _spread(timings[key]),
                ratio(medians[key], medians[reference]),
                ratio(cpu[key], cpu[reference]),
                megabytes(mem.peak),
                ratio(mem.peak, memory[reference].peak),
                megabytes(mem.weights),
                megabytes(mem.saved_for_backward),
                megabytes(mem.gradients + mem.optimizer_state),
            ]
        )
    table.notes.append(
        f"{steps} timed steps per variant after {warmup} warm-up steps, round-robin; step = forward + backward + AdamW step + zero_grad."
    )
    return table, medians, memory


def linear_training_gflop(model: nn.Module, tokens: int) -> float:
    """Forward + input-gradient FLOPs of every nn.Linear (4 m n per token): the frozen backbone's bulk."""
    return sum(4 * m.in_features * m.out_features * tokens for m in model.modules() if isinstance(m, nn.Linear)) / 1e9


def loldu_extra_gflop(model: nn.Module, tokens: int) -> float:
    """Extra training FLOPs of every LoLDU layer on the path it takes, by the library's own cost model."""
    total = 0
    for _, layer in loldu_modules(model):
        m, n = layer.out_features, layer.in_features
        path = layer.forward_path(torch.empty(tokens, n, requires_grad=True))
        if layer.storage != "dense":
            # packed/lu: the cost model counts whole paths; the base layer's forward + input gradient is 4 m n T.
            total += packed_path_flops(m, n, layer.rank, tokens, True, layer.storage == "lu")[path] - 4 * m * n * tokens
            continue
        cost = merged_extra_flops if path == "merged" else factored_extra_flops
        total += cost(m, n, layer.rank, tokens, True)
    return total / 1e9


def cost_model_note(variants: dict[str, TrainingVariant], tokens: int, floor: str) -> str:
    """One line comparing each LoLDU variant's extra FLOPs with the backbone's linear-layer FLOPs."""
    base = linear_training_gflop(variants[floor].model, tokens)
    parts = [
        f"{v.label} +{extra:.3g} GFLOP (+{100 * extra / base:.0f}%)"
        for v in variants.values()
        if (extra := loldu_extra_gflop(v.model, tokens)) > 0
    ]
    return (
        f"Cost model (`loldu.forward_cost`, input gradient counted everywhere): the frozen linear layers do ~{base:.3g} GFLOP "
        f"per step (forward + input gradient); LoLDU adds {'; '.join(parts)} (packed/lu: triangular nonzeros; lu replaces the "
        "base product of its layers, so its extra can be negative)."
    )


def auto_paths(model: nn.Module, tokens: int) -> list[str]:
    """The forward paths ``auto`` takes in this model's LoLDU layers during training."""
    return sorted(
        {
            layer.forward_path(torch.empty(tokens, layer.in_features, requires_grad=True))
            for _, layer in loldu_modules(model)
        }
    )


def noise_note(variants: dict[str, TrainingVariant], times: dict[str, float], auto_key: str, tokens: int) -> str:
    """Where ``auto`` runs the same code as a forced mode, their time ratio is pure measurement noise."""
    paths = auto_paths(variants[auto_key].model, tokens)
    twin = auto_key.replace("auto", paths[0])
    if len(paths) != 1 or twin not in times:
        return f"auto took the paths {', '.join(paths)}."
    return (
        f"auto took the {paths[0]} path in every layer, the same code as the '{variants[twin].label}' row: "
        f"their time ratio ({times[auto_key] / times[twin]:.2f}x) is the run-to-run noise."
    )


def encoder_training(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 1: full training steps on the roberta-base architecture."""
    base = build_encoder(shapes, device, seed)
    batch = encoder_batch(shapes, base.config.vocab_size, device, seed)
    variants = encoder_variants(base, shapes, batch)
    title = (
        f"1. Training step, {'roberta-base' if not shapes.encoder_overrides else 'tiny roberta'} "
        f"({base.config.num_hidden_layers} layers, hidden {base.config.hidden_size}), batch {shapes.batch} x {shapes.seq_len} tokens, "
        f"adapters on {', '.join(shapes.targets)}"
    )
    table, times, memory = training_table(title, variants, "lora_ref", warmup=warmup, steps=steps, device=device)
    ref, full, low = shapes.lora_reference_rank, shapes.full_rank, shapes.low_rank
    table.notes += [
        "Every variant trains the classification head too (PEFT LoRA included), so differences come from the adapters alone.",
        "The floor freezes everything but the head and makes the embeddings' output require grad, so backward runs through every layer with no adapter.",
        f"naive / LoLDU r={full} auto step time: {times['naive'] / times['loldu_full_auto']:.2f}x.",
        cost_model_note(variants, shapes.batch * shapes.seq_len, "floor"),
        noise_note(variants, times, "loldu_full_auto", shapes.batch * shapes.seq_len),
    ]
    targets = [
        Target(
            f"encoder: LoLDU r={full} auto step time / LoRA r={ref}",
            times["loldu_full_auto"] / times["lora_ref"],
            "<=",
            1.10,
        ),
        Target(
            f"encoder: LoLDU r={full} auto step time / LoRA r={full}",
            times["loldu_full_auto"] / times["lora_full"],
            "<=",
            1.00,
        ),
        Target(
            f"encoder: LoLDU r={low} auto step time / LoRA r={ref}",
            times["loldu_low_auto"] / times["lora_ref"],
            "<=",
            1.05,
        ),
        Target(
            f"encoder: LoLDU r={full} storage=packed step time / LoRA r={ref}",
            times["loldu_full_packed"] / times["lora_ref"],
            "<=",
            1.10,
        ),
        Target(
            f"encoder: LoLDU r={full} storage=lu step time / LoRA r={ref}",
            times["loldu_full_lu"] / times["lora_ref"],
            "<=",
            1.10,
        ),
        Target(
            f"encoder: LoLDU r={full} auto peak memory / LoRA r={ref}",
            memory["loldu_full_auto"].peak / memory["lora_ref"].peak,
            "<=",
            1.10,
        ),
        Target(
            f"encoder: LoLDU r={low} auto peak memory / LoRA r={ref}",
            memory["loldu_low_auto"].peak / memory["lora_ref"].peak,
            "<=",
            1.10,
        ),
    ]
    del variants, base
    gc.collect()
    return table, targets


def projection_training(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 2: one LLaMA-shaped projection at the paper's instruction-tuning rank."""
    variants = projection_variants(shapes, device, seed)
    dim, r = shapes.layer_dim, shapes.layer_rank
    title = f"2. Training step, one LLaMA-shaped layer ({dim} x {dim} nn.Linear, batch 1 x {shapes.layer_tokens} tokens), r={r}"
    table, times, memory = training_table(title, variants, "lora_ref", warmup=warmup, steps=steps, device=device)
    table.notes += [
        "The layer's input requires grad (as inside a network), so every variant also computes the input gradient.",
        noise_note(variants, times, "loldu_auto", shapes.layer_tokens),
        cost_model_note(variants, shapes.layer_tokens, "floor"),
        f"naive / LoLDU auto step time: {times['naive'] / times['loldu_auto']:.2f}x; "
        f"naive / LoLDU auto peak memory: {memory['naive'].peak / memory['loldu_auto'].peak:.2f}x.",
    ]
    targets = [
        Target(
            f"layer {dim}x{dim}: naive / LoLDU r={r} auto step time", times["naive"] / times["loldu_auto"], ">=", 5.0
        )
    ]
    del variants
    gc.collect()
    return table, targets


def initialisation_time(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 3: LoLDU's LU-based init against PEFT's SVD-based PiSSA init on the same weights."""
    base = build_encoder(shapes, device, seed)
    targets, r = shapes.targets, shapes.full_rank

    def on_fresh_model(apply: Callable[[nn.Module], object]) -> Callable[[], Callable[[], object]]:
        """A factory the timer calls untimed: it copies the model, and only ``apply`` is timed."""

        def factory() -> Callable[[], object]:
            # Own copies of the targeted weights: PiSSA rewrites them with its residual.
            model = shared_copy(base, lambda name: is_target_weight(name, targets))  # noqa: F821 (`del base` runs after the last call)
            return lambda: apply(model)

        return factory

    def untimed_setup(run: Callable[[], object]) -> Callable[[], Callable[[], object]]:
        return lambda: run

    target_weights = [
        p for name, p in base.named_parameters() if is_target_weight(name, targets) and name.endswith(".weight")
    ]
    factories: dict[str, Callable[[], Callable[[], object]]] = {
        "loldu": on_fresh_model(lambda model: add_loldu(model, targets, r, "auto")),
        "pissa": on_fresh_model(lambda model: add_lora(model, targets, r, init="pissa")),
        "pissa_niter_4": on_fresh_model(lambda model: add_lora(model, targets, r, init="pissa_niter_4")),
        "lu_kernel": untimed_setup(lambda: [torch.linalg.lu_factor_ex(w.float()) for w in target_weights]),
        "svd_kernel": untimed_setup(lambda: [torch.linalg.svd(w.float(), full_matrices=False) for w in target_weights]),
    }
    labels = {
        "loldu": f"LoLDU inject r={r} (LU + wrap)",
        "pissa": f"PEFT PiSSA r={r} (full SVD)",
        "pissa_niter_4": f"PEFT PiSSA r={r} pissa_niter_4 (randomised SVD)",
        "lu_kernel": "kernel only: torch.linalg.lu_factor_ex",
        "svd_kernel": "kernel only: torch.linalg.svd",
    }
    timings = interleaved_timings(factories, warmup=warmup, steps=steps, device=device, fresh=True, progress="3. init")
    times = {key: t.wall_median for key, t in timings.items()}
    cpu = {key: t.cpu_median for key, t in timings.items()}
    shape = tuple(target_weights[0].shape)
    table = Table(
        f"3. Adapter initialisation on {len(target_weights)} {shape[0]} x {shape[1]} weights ({', '.join(targets)}), r={r}",
        ["method", "ms (median)", "min-max ms", "time / LoLDU inject", "CPU-time ratio"],
    )
    for key, label in labels.items():
        table.rows.append(
            [
                label,
                milliseconds(times[key]),
                _spread(timings[key]),
                ratio(times[key], times["loldu"]),
                ratio(cpu[key], cpu["loldu"]),
            ]
        )
    table.notes.append(
        f"{steps} timed runs after {warmup} warm-up, round-robin; each run starts from a fresh model copy made outside the timer."
    )
    del base
    gc.collect()
    return table, [Target(f"init: PiSSA (full SVD) / LoLDU inject r={r}", times["pissa"] / times["loldu"], ">=", 5.0)]


def _structure(model: nn.Module) -> list[tuple[str, ...]]:
    """What decides which kernels run: every module's type and every parameter's shape, stride and dtype."""
    modules = [(name, type(module).__name__) for name, module in model.named_modules()]
    params = [(name, str(tuple(p.shape)), str(p.stride()), str(p.dtype)) for name, p in model.named_parameters()]
    return modules + params


def merged_inference(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 4: a merged and unloaded LoLDU model must run exactly as fast as the base model."""
    base = build_encoder(shapes, device, seed)
    batch = encoder_batch(shapes, base.config.vocab_size, device, seed)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    targets, r = shapes.targets, shapes.full_rank

    def trained_loldu() -> nn.Module:
        model = add_loldu(shared_copy(base, lambda name: is_target_weight(name, targets)), targets, r, "auto")  # noqa: F821 (`del base` runs after the last call)
        # Move z off its init so merging folds a non-zero update into the weights.
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, layer in loldu_modules(model):
                layer.z.add_(0.01 * torch.randn(layer.z.shape, generator=generator).to(layer.z.device))
        return model

    models = {
        "base": shared_copy(base, lambda name: False),
        "unmerged": trained_loldu(),
        "merged": unload(trained_loldu()),
    }
    for model in models.values():
        model.eval()

    def forward(model: nn.Module) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            with torch.no_grad():
                return model(**inputs).logits

        return call

    logit_gap = (forward(models["merged"])() - forward(models["unmerged"])()).abs().max().item()
    wrappers_left = sum(1 for _ in loldu_modules(models["merged"]))
    same_structure = _structure(models["merged"]) == _structure(models["base"])
    timings = interleaved_timings(
        {key: forward(model) for key, model in models.items()},
        warmup=warmup,
        steps=steps,
        device=device,
        progress="4. inference",
    )
    times = {key: t.wall_median for key, t in timings.items()}
    cpu = {key: t.cpu_median for key, t in timings.items()}
    labels = {
        "base": "base model",
        "unmerged": f"LoLDU r={r} unmerged (adapter active)",
        "merged": f"LoLDU r={r} merged + unloaded",
    }
    table = Table(
        f"4. Inference latency (eval, no grad), batch {shapes.batch} x {shapes.seq_len} tokens",
        ["model", "ms (median)", "min-max ms", "vs base", "CPU-time ratio"],
        [
            [
                labels[key],
                milliseconds(times[key]),
                _spread(timings[key]),
                ratio(times[key], times["base"]),
                ratio(cpu[key], cpu["base"]),
            ]
            for key in labels
        ],
    )
    table.notes += [
        f"{steps} timed forwards after {warmup} warm-up, round-robin.",
        f"Merged + unloaded model: {wrappers_left} LoLDU wrappers left; module types, parameter shapes and strides "
        f"{'identical to' if same_structure else 'DIFFERENT from'} the base model, so it runs the same kernels and any "
        f"time difference is measurement noise; max |logits(merged) - logits(unmerged)| = {logit_gap:.2e}.",
    ]
    del models, base
    gc.collect()
    return table, [
        Target(f"inference: LoLDU r={r} merged + unloaded / base latency", times["merged"] / times["base"], "<=", 1.01)
    ]


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> str:
    return f"{float((approx.float() - exact.float()).norm() / exact.float().norm()):.1e}"


def storage_training(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 5: a LLaMA-shaped q/v pair at the paper's rank (and at full rank), per storage option."""
    variants = storage_variants(shapes, device, seed)
    dim, r, tokens = shapes.layer_dim, shapes.layer_rank, shapes.layer_tokens
    title = f"5. Factor storage: training step on a LLaMA-shaped q/v pair (2 x {dim} x {dim} nn.Linear, batch 1 x {tokens} tokens)"
    table, times, memory = training_table(title, variants, "lora_ref", warmup=warmup, steps=steps, device=device)
    original = variants["floor"].model.q_proj.weight
    errors = [f"float32 factors (as stored): {_relative_error(variants['lu'].model.q_proj.base_weight(), original)}"]
    # What half-precision factors would give (the config refuses them for lu; this is why).
    packed = ldu_decompose_packed(original)
    for dtype in (torch.float16, torch.bfloat16):
        rounded = dataclasses.replace(
            packed, packed=packed.packed.to(dtype).float(), diag=packed.diag.to(dtype).float()
        )
        errors.append(f"{str(dtype).replace('torch.', '')} factors: {_relative_error(rounded.reconstruct(), original)}")
    del packed, rounded
    ref = memory["lora_ref"].weights
    table.notes += [
        "`weights+buffers MiB` is the resident memory: frozen weights, factors, permutations and adapter vectors (2 layers).",
        f"Resident memory vs {variants['lora_ref'].label}: "
        + "; ".join(f"{v.label} {memory[k].weights / ref:.2f}x" for k, v in variants.items())
        + ".",
        "storage=lu keeps no W0: the packed LU of W0 stands in for it. Relative Frobenius error of the weight it represents "
        "(P L diag(d) U1 against W0, q_proj): "
        + "; ".join(errors)
        + ". Half-precision lu factors are refused by the config for this reason.",
        "Auto paths taken: "
        + "; ".join(
            f"{v.label}: {', '.join(auto_paths(v.model, tokens))}"
            for k, v in variants.items()
            if any(True for _ in loldu_modules(v.model))
        )
        + ".",
        "The estimated peak leaves out short-lived temporaries; a merged path also holds one m x n weight per layer while it runs.",
    ]
    targets = [
        Target(
            f"q/v pair {dim}: LoLDU r={r} lu resident memory / LoRA r={shapes.lora_reference_rank}",
            memory["lu"].weights / ref,
            "<=",
            1.10,
        ),
        Target(
            f"q/v pair {dim}: LoLDU r={r} lu step time / LoRA r={shapes.lora_reference_rank}",
            times["lu"] / times["lora_ref"],
            "<=",
            1.25,
        ),
        Target(
            f"q/v pair {dim}: LoLDU r={r} dense step time / LoRA r={shapes.lora_reference_rank}",
            times["dense"] / times["lora_ref"],
            "<=",
            1.25,
        ),
    ]
    del variants
    gc.collect()
    return table, targets


def _triangular_cases(
    m: int, n: int, r: int, tokens: int, device: torch.device, seed: int
) -> dict[str, Callable[[], object]]:
    """The dense and block-triangular form of each product, on the factors of one random weight."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(m, n, generator=generator).to(device)
    dense = ldu_decompose(weight, r)
    lower, upper = dense.lower, dense.upper
    packed = ldu_decompose_packed(weight).packed
    scale = torch.randn(r, generator=generator).to(device)
    x = torch.randn(tokens, n, generator=generator).to(device)
    gram = torch.randn(m, n, generator=generator).to(device)
    return {
        "build dense": lambda: (lower * scale) @ upper,
        "build block": lambda: triangular.lower_scaled_upper(packed, scale),
        "v-grad dense": lambda: ((lower.t() @ gram) * upper).sum(dim=1),
        "v-grad block": lambda: triangular.diag_of_lower_t_gram_upper(packed, gram, r),
        "products dense": lambda: ((x @ upper.t()) * scale) @ lower.t(),
        "products block": lambda: triangular.lower_mm(
            packed, triangular.upper_mm(packed, x.t(), r) * scale[:, None], r
        ),
    }


def triangular_products(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 6: block-triangular against dense products, per shape (the kernels of the packed storages)."""
    hidden = shapes.encoder_overrides.get("hidden_size", 768)
    cases = [
        (hidden, hidden, shapes.full_rank, shapes.batch * shapes.seq_len),
        (shapes.layer_dim, shapes.layer_dim, shapes.layer_rank, shapes.layer_tokens),
        (shapes.layer_dim, shapes.layer_dim, shapes.layer_dim, shapes.layer_tokens),
    ]
    table = Table(
        "6. Block-triangular products (storage=packed/lu) against dense products (storage=dense)",
        [
            "m x n, r, tokens",
            "product",
            "dense ms",
            "block ms",
            "speed-up",
            "CPU-time speed-up",
            "flop ratio (dense / nonzero)",
        ],
    )
    operations = {
        "build": ("W update L diag(s) U (merged path)", lambda m, n, r, t: m * n * r / triangular_build_macs(m, n, r)),
        "v-grad": (
            "rowsum((L^T G) * U) (v's gradient, merged path)",
            lambda m, n, r, t: m * n * r / triangular_build_macs(m, n, r),
        ),
        "products": (
            "(U x) * s then L (factored path, per step)",
            lambda m, n, r, t: r * (m + n) / triangular_product_macs(m, n, r),
        ),
    }
    speedups = {}
    for m, n, r, tokens in cases:
        timings = interleaved_timings(
            _triangular_cases(m, n, r, tokens, device, seed),
            warmup=warmup,
            steps=steps,
            device=device,
            progress=f"6. {m}x{n} r={r}",
        )
        for op, (label, flop_ratio) in operations.items():
            dense, block = timings[f"{op} dense"], timings[f"{op} block"]
            speedups[(m, r, op)] = dense.wall_median / block.wall_median
            table.rows.append(
                [
                    f"{m} x {n}, r={r}, {tokens}",
                    label,
                    milliseconds(dense.wall_median),
                    milliseconds(block.wall_median),
                    f"{dense.wall_median / block.wall_median:.2f}x",
                    f"{dense.cpu_median / block.cpu_median:.2f}x",
                    f"{flop_ratio(m, n, r, tokens):.2f}x",
                ]
            )
    table.notes += [
        f"{steps} timed calls per product after {warmup} warm-up, round-robin within each shape; random weights, float32.",
        f"Blocks: {triangular.TARGET_BLOCKS} per triangle, at least {triangular.MIN_BLOCK} rows (`loldu.triangular.block_size`).",
        "Dense: the products the dense storage runs today (P L_r and U_r as full matrices).",
    ]
    m, r = hidden, shapes.full_rank
    return table, [Target(f"triangular: build speed-up at {m} x {m}, r={r}", speedups[(m, r, "build")], ">=", 1.0)]
