"""Section 7: what each ``adapter.decomposition`` (lu, svd, qr) costs, against LU, in one process.

Two parts, because the decomposition is paid once and the step every batch:

- initialisation: ``inject`` with each decomposition on the encoder's targeted weights at the
  paper's full rank (a fresh model copy per run, made outside the timer), and the bare kernels;
- a training step on a q/v pair of the encoder's width at that rank: the factors of all three have
  the same shapes (m x r and r x n, dense storage), so the step should cost the same.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch
from torch import nn

from loldu_lightning.loldu import DECOMPOSITIONS

from .measure import interleaved_timings
from .results import Table, Target, milliseconds, ratio
from .sections import _spread, training_table
from .shapes import BenchShapes
from .variants import (
    QVHost,
    TrainingVariant,
    _adapter_param_count,
    _make_step,
    _optimizer_for,
    add_loldu,
    build_encoder,
    is_target_weight,
    shared_copy,
)

KERNELS: dict[str, tuple[str, Callable[[torch.Tensor], object]]] = {
    "lu": ("torch.linalg.lu_factor_ex", torch.linalg.lu_factor_ex),
    "svd": ("torch.linalg.svd", lambda weight: torch.linalg.svd(weight, full_matrices=False)),
    "qr": ("torch.linalg.qr", torch.linalg.qr),
}
"""The LAPACK call behind each decomposition (``loldu.decompositions``): label and call."""


def _init_cases(base: nn.Module, targets: tuple[str, ...], r: int) -> dict[str, Callable[[], Callable[[], object]]]:
    """Factories the timer calls untimed; only the call they return is timed."""
    weights = [p for name, p in base.named_parameters() if is_target_weight(name, targets) and name.endswith(".weight")]

    def inject_with(decomposition: str) -> Callable[[], Callable[[], object]]:
        def factory() -> Callable[[], object]:
            model = shared_copy(base, lambda name: False)  # LoLDU never writes the shared W0
            return lambda: add_loldu(model, targets, r, "auto", decomposition=decomposition)

        return factory

    def kernel(decomposition: str) -> Callable[[], Callable[[], object]]:
        _, call = KERNELS[decomposition]
        return lambda: lambda: [call(weight.float()) for weight in weights]

    cases = {f"inject {name}": inject_with(name) for name in DECOMPOSITIONS}
    cases.update({f"kernel {name}": kernel(name) for name in DECOMPOSITIONS})
    return cases


def _step_variants(shapes: BenchShapes, device: torch.device, seed: int) -> dict[str, TrainingVariant]:
    """A q/v pair of the encoder's width, ``batch x seq_len`` tokens, one LoLDU per decomposition."""
    width = shapes.encoder_overrides.get("hidden_size", 768)
    torch.manual_seed(seed)
    base = QVHost(width).to(device).requires_grad_(False)
    tokens = shapes.batch * shapes.seq_len
    x = torch.randn(1, tokens, width, device=device, requires_grad=True)
    upstream = torch.randn(1, tokens, width, device=device)
    targets, r = ("q_proj", "v_proj"), shapes.full_rank

    def loss_fn(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        x.grad = None
        return model(x), upstream

    variants = {}
    for name in DECOMPOSITIONS:
        model = add_loldu(shared_copy(base, lambda _: False), targets, r, "auto", decomposition=name)
        model.train()
        optimizer = _optimizer_for(model)
        variants[name] = TrainingVariant(
            f"LoLDU r={r} decomposition={name}",
            model,
            optimizer,
            _make_step(model, optimizer, loss_fn),
            _adapter_param_count(model, None),
        )
    return variants


def decomposition_cost(
    shapes: BenchShapes, *, warmup: int, steps: int, device: torch.device, seed: int
) -> tuple[Table, list[Target]]:
    """Section 7: init time and training step per decomposition, ratios against LU."""
    base = build_encoder(shapes, device, seed)
    targets, r = shapes.targets, shapes.full_rank
    count = sum(
        1 for name, _ in base.named_parameters() if is_target_weight(name, targets) and name.endswith(".weight")
    )
    width = shapes.encoder_overrides.get("hidden_size", 768)
    timings = interleaved_timings(
        _init_cases(base, targets, r), warmup=min(warmup, 1), steps=steps, device=device, fresh=True, progress="7. init"
    )
    del base
    gc.collect()
    init = {key: t.wall_median for key, t in timings.items()}

    variants = _step_variants(shapes, device, seed)
    steps_table, step_times, _ = training_table(
        f"7b. training step on a q/v pair {width} x {width}",
        variants,
        "lu",
        warmup=warmup,
        steps=steps,
        device=device,
    )
    table = Table(
        f"7. Decompositions (adapter.decomposition): initialisation on {count} {width} x {width} weights "
        f"({', '.join(targets)}) and a training step on a {width} x {width} q/v pair "
        f"({shapes.batch * shapes.seq_len} tokens), r={r}",
        ["decomposition", "what is timed", "ms (median)", "min-max ms", "time / lu", "CPU-time ratio"],
    )
    for kind in ("inject", "kernel"):
        for name in DECOMPOSITIONS:
            key, lu_key = f"{kind} {name}", f"{kind} lu"
            what = "inject (decompose + wrap)" if kind == "inject" else f"kernel only: {KERNELS[name][0]}"
            table.rows.append(
                [
                    name,
                    what,
                    milliseconds(init[key]),
                    _spread(timings[key]),
                    ratio(init[key], init[lu_key]),
                    ratio(timings[key].cpu_median, timings[lu_key].cpu_median),
                ]
            )
    for row, name in zip(steps_table.rows, variants, strict=True):
        # training_table's columns: variant, params, median, spread, time vs ref, CPU ratio, ...
        table.rows.append([name, "training step (forward + backward + AdamW)", row[2], row[3], row[4], row[5]])
    table.notes += [
        f"Initialisation: {steps} timed runs after {min(warmup, 1)} warm-up, round-robin; each inject starts from a "
        "fresh model copy made outside the timer. Kernels run in float32 on the same weights.",
        steps_table.notes[0],
        "The factors of every decomposition have the same shapes in the dense storage, so a training step does the "
        "same work; svd and qr cannot use the packed storages (their factors are not triangular).",
    ]
    del variants
    gc.collect()
    return table, [
        Target(
            f"decompositions: training step svd / lu at {width}, r={r}",
            step_times["svd"] / step_times["lu"],
            "<=",
            1.25,
        ),
        Target(
            f"decompositions: training step qr / lu at {width}, r={r}", step_times["qr"] / step_times["lu"], "<=", 1.25
        ),
    ]
