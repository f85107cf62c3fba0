"""Cost of a resumable checkpoint: how long `trainer.save_checkpoint` takes and how big the file is.

    python -m benchmarks.checkpoint_cost [--repeats 5] [--llama-layers 1,2,4] [--out docs/results/checkpoint_cost.md]
    python -m benchmarks.checkpoint_cost --quick     # toy shapes: a smoke run, writes nothing unless --out

Each case goes the way `train()` goes: a transformers model built from its config with random weights
(`models.load_model` with a `tiny` config, no download), the task's LightningModule (GlueTask or
InstructTask), the adapter from `adapters.build_adapter` applied by `AdapterCallback` at setup, the
step-checkpoint callbacks of `builders.callbacks.step_checkpoints` and `AtomicCheckpointIO`. One optimizer step
runs on a synthetic batch (so the optimizer and scheduler hold state, and the step checkpoint writes
`last.ckpt`), then `trainer.save_checkpoint` is timed `--repeats` times. The file is opened again to
say what it holds: the module's state (trainable parameters and persistent buffers only), the
optimizer state and the rest (loops, callbacks, configuration).

LLaMA-shaped cases keep every layer full width (hidden 4096, 32 heads: q_proj/v_proj are the
paper's 4096 x 4096) but may shrink the MLP and the vocabulary: those weights are frozen and never
saved, so the checkpoint holds the same tensors as the full model's with the same layer count. The
32-layer size is then computed from the measured per-layer growth, checked against a third layer count.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# Spinning OpenMP threads make LU 10-20x slower on shared cores (see benchmarks/README.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification  # noqa: E402

from benchmarks.results import Table, describe_machine  # noqa: E402
from loldu_lightning.adapters import build_adapter  # noqa: E402
from loldu_lightning.builders.callbacks import step_checkpoints  # noqa: E402
from loldu_lightning.callbacks.adapter import AdapterCallback, RNGStateCallback  # noqa: E402
from loldu_lightning.callbacks.fault_tolerance import RestoreLoaderPosition, RunRecord  # noqa: E402
from loldu_lightning.checkpoints import AtomicCheckpointIO, defining_config  # noqa: E402
from loldu_lightning.data.glue import glue_task  # noqa: E402
from loldu_lightning.models import load_model  # noqa: E402
from loldu_lightning.options import CheckpointOptions, ModelOptions  # noqa: E402
from loldu_lightning.tasks.base import AdaptedTask  # noqa: E402
from loldu_lightning.tasks.glue import GlueTask  # noqa: E402
from loldu_lightning.tasks.instruct import InstructTask  # noqa: E402

PAPER_LLAMA_LAYERS = 32
DEFAULT_OUT = REPO_ROOT / "docs" / "results" / "checkpoint_cost.md"
MIN_REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Case:
    """One checkpoint to measure: a model config (`models.load_model`'s `tiny` form), an adapter, a task."""

    key: str
    label: str
    family: str  # "glue" (GlueTask, sequence classification) or "instruct" (InstructTask, causal LM)
    model: dict[str, Any]
    adapter: dict[str, Any]
    head_modules: tuple[str, ...]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    batch: int
    seq_len: int
    precision: str = "32-true"

    @property
    def layers(self) -> int:
        return int(self.model["num_hidden_layers"])


def roberta_case(overrides: dict[str, Any] | None = None, rank: int = 768) -> Case:
    """The paper's GLUE setting: roberta-base, LoLDU r=768 alpha 768 on query/value, the classifier trained fully."""
    return Case(
        key="roberta",
        label=f"roberta-base, LoLDU r={rank} on query,value + classifier",
        family="glue",
        model={"model_type": "roberta", **(overrides or {})},
        adapter={"name": "loldu", "rank": rank, "alpha": rank, "target_modules": ["query", "value"]},
        head_modules=("classifier",),
        optimizer={"name": "adamw", "lr": 5e-4, "weight_decay": 0.0},
        scheduler={"name": "linear", "warmup_ratio": 0.06},
        batch=2,
        seq_len=16,
    )


def llama_case(layers: int, overrides: dict[str, Any] | None = None, rank: int = 1024) -> Case:
    """Table VIII: LLaMA2-7B layers in bf16 weights, LoLDU r=1024 alpha 1024 on q_proj/v_proj, no head."""
    model = {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "intermediate_size": 11008,
        "num_hidden_layers": layers,
        "dtype": "bfloat16",
        **(overrides or {}),
    }
    model["num_hidden_layers"] = layers
    return Case(
        key=f"llama{layers}",
        label=f"LLaMA2-7B-shaped, {layers} layer{'s' if layers > 1 else ''}, LoLDU r={rank} on q_proj,v_proj",
        family="instruct",
        model=model,
        adapter={"name": "loldu", "rank": rank, "alpha": rank, "target_modules": ["q_proj", "v_proj"]},
        head_modules=(),
        optimizer={"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
        scheduler={"name": "linear", "warmup_ratio": 0.03},
        # Two tokens give one next-token prediction: enough for gradients of every adapter parameter,
        # and bf16 matrix products are slow on CPUs without bf16 instructions. The batch never reaches the file.
        batch=1,
        seq_len=2,
        precision="bf16-mixed",
    )


# The MLP and the vocabulary are frozen and never saved: shrinking them changes no byte of the checkpoint.
LLAMA_SHRINK = {"intermediate_size": 1024, "vocab_size": 1024}

QUICK_ROBERTA = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 40,
}
QUICK_LLAMA = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "vocab_size": 100,
    "dtype": "bfloat16",
}


def build_module(case: Case) -> AdaptedTask:
    model_cfg = ModelOptions(name_or_path=case.key, tiny=dict(case.model))
    if case.family == "glue":
        info = glue_task("sst2")
        model = load_model(model_cfg, AutoModelForSequenceClassification, num_labels=info.num_labels)
        return GlueTask(model, info, case.head_modules, case.optimizer, case.scheduler)
    if case.family == "instruct":
        model = load_model(model_cfg, AutoModelForCausalLM)
        return InstructTask(model, case.head_modules, case.optimizer, case.scheduler)
    raise ValueError(f"case {case.key}: family must be 'glue' or 'instruct', got {case.family!r}")


def synthetic_batches(case: Case, vocab_size: int, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(3, vocab_size, (case.batch, case.seq_len), generator=generator)
        labels = torch.randint(0, 2, (case.batch,), generator=generator) if case.family == "glue" else ids.clone()
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def tensor_bytes(node: Any) -> int:
    """Bytes of every tensor inside a nested checkpoint structure."""
    if isinstance(node, torch.Tensor):
        return node.numel() * node.element_size()
    if isinstance(node, dict):
        return sum(tensor_bytes(value) for value in node.values())
    if isinstance(node, (list, tuple)):
        return sum(tensor_bytes(value) for value in node)
    return 0


@dataclasses.dataclass
class Measurement:
    case: Case
    save_seconds: list[float]
    file_bytes: int
    step_checkpoint_bytes: int
    state_dict_bytes: int
    optimizer_bytes: int
    state_keys: list[str]
    trainable_keys: list[str]
    frozen_keys: list[str]
    trainable_params: int
    total_params: int
    setup_seconds: float

    @property
    def median(self) -> float:
        return statistics.median(self.save_seconds)


def measure_case(case: Case, *, repeats: int, workdir: Path, seed: int = 0) -> Measurement:
    """Build the case, train one step with a Lightning Trainer, then time `trainer.save_checkpoint`."""
    started = time.perf_counter()
    L.seed_everything(seed, workers=True, verbose=False)
    module = build_module(case)
    total_params = sum(p.numel() for p in module.parameters())
    checkpoint_dir = workdir / case.key / "checkpoints"
    adapter_callback = AdapterCallback(build_adapter(case.adapter), workdir / case.key / "adapter")
    run_config = defining_config({"adapter": case.adapter, "model": case.model, "optimizer": case.optimizer})
    callbacks = [
        adapter_callback,
        RNGStateCallback(),
        # every step: the step after the first batch writes last.ckpt through the path training uses
        *step_checkpoints(CheckpointOptions(every_n_train_steps=1, every_n_minutes=None), checkpoint_dir),
        RestoreLoaderPosition(),
        RunRecord(run_config),
    ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        precision=case.precision,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(workdir / case.key),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
    )
    vocab_size = module.model.config.vocab_size
    # Two batches: a step checkpoint is never taken on an epoch's last batch (fault_tolerance.resumable_here).
    loader = DataLoader(synthetic_batches(case, vocab_size, 2, seed), batch_size=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*val_dataloader.*")
        trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != 1:
        raise RuntimeError(f"case {case.key}: expected one optimizer step, the trainer made {trainer.global_step}")
    step_checkpoint = checkpoint_dir / "last.ckpt"
    if not step_checkpoint.is_file():
        raise RuntimeError(f"case {case.key}: the step checkpoint {step_checkpoint} was not written")
    setup_seconds = time.perf_counter() - started

    target = checkpoint_dir / "timed.ckpt"
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        trainer.save_checkpoint(target)
        times.append(time.perf_counter() - begin)

    checkpoint = torch.load(target, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    named = dict(module.named_parameters())
    measurement = Measurement(
        case=case,
        save_seconds=times,
        file_bytes=target.stat().st_size,
        step_checkpoint_bytes=step_checkpoint.stat().st_size,
        state_dict_bytes=tensor_bytes(state),
        optimizer_bytes=tensor_bytes(checkpoint.get("optimizer_states", [])),
        state_keys=sorted(state),
        trainable_keys=sorted(name for name, p in named.items() if p.requires_grad),
        frozen_keys=sorted(name for name, p in named.items() if not p.requires_grad),
        trainable_params=sum(p.numel() for p in named.values() if p.requires_grad),
        total_params=total_params,
        setup_seconds=setup_seconds,
    )
    del trainer, module, checkpoint, state, named
    gc.collect()
    return measurement


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.3f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


@dataclasses.dataclass(frozen=True)
class LinearFit:
    """File size = fixed + per_layer x layers, from the smallest and largest measured layer counts."""

    fixed: float
    per_layer: float
    # (layers, measured bytes, predicted bytes) for every measured count
    checks: list[tuple[int, int, float]]

    def predict(self, layers: int) -> float:
        return self.fixed + self.per_layer * layers


def fit_layers(measurements: Sequence[Measurement]) -> LinearFit | None:
    points = sorted({m.case.layers: m.file_bytes for m in measurements}.items())
    if len(points) < 2:
        return None
    (l0, b0), (l1, b1) = points[0], points[-1]
    per_layer = (b1 - b0) / (l1 - l0)
    fixed = b0 - per_layer * l0
    return LinearFit(fixed, per_layer, [(layers, size, fixed + per_layer * layers) for layers, size in points])


def results_table(measurements: Sequence[Measurement], repeats: int) -> Table:
    table = Table(
        f"Checkpoint save cost (`trainer.save_checkpoint`, {repeats} saves each)",
        [
            "case",
            "trainable params",
            "file MiB",
            "module state MiB",
            "optimizer state MiB",
            "save ms (median)",
            "min-max ms",
            "step checkpoint MiB",
        ],
    )
    for m in measurements:
        table.rows.append(
            [
                m.case.label,
                f"{m.trainable_params:,}",
                mib(m.file_bytes),
                mib(m.state_dict_bytes),
                mib(m.optimizer_bytes),
                ms(m.median),
                f"{ms(min(m.save_seconds))}-{ms(max(m.save_seconds))}",
                mib(m.step_checkpoint_bytes),
            ]
        )
    return table


def scaling_table(fit: LinearFit, target_layers: int) -> Table:
    table = Table(
        "LLaMA2-7B-shaped checkpoint size against the layer count",
        ["layers", "file MiB (measured)", "file MiB (linear fit)", "difference bytes"],
    )
    for layers, size, predicted in fit.checks:
        table.rows.append([str(layers), mib(size), mib(predicted), f"{size - predicted:+,.0f}"])
    table.rows.append([f"{target_layers} (computed)", "not measured", mib(fit.predict(target_layers)), ""])
    table.notes.append(
        f"Fit through the smallest and largest measured counts: {fit.fixed:,.0f} bytes + {fit.per_layer:,.0f} bytes "
        f"per layer. The {target_layers}-layer row is computed from it, not measured."
    )
    return table


def parse_layers(text: str) -> list[int]:
    try:
        values = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--llama-layers takes comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"--llama-layers needs layer counts >= 1, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help=f"timed saves per case (default {MIN_REPEATS})")
    parser.add_argument(
        "--llama-layers",
        type=parse_layers,
        default=None,
        help="LLaMA-shaped layer counts to measure (default 1,2,4; three or more counts check that the size is linear)",
    )
    parser.add_argument(
        "--full-llama-mlp",
        action="store_true",
        help="keep intermediate_size 11008 and the 32,000-token vocabulary (more memory; the file is the same)",
    )
    parser.add_argument("--cases", default="roberta,llama", help="comma-separated subset of roberta,llama")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="toy shapes: a smoke run; the numbers mean nothing")
    parser.add_argument("--note", default=None, help="free text recorded under Machine (e.g. what else was running)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where checkpoints are written (default: a temp dir)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"Markdown output (default {DEFAULT_OUT}; none with --quick)"
    )
    args = parser.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else MIN_REPEATS)
    if args.repeats < 1 or (not args.quick and args.repeats < MIN_REPEATS):
        parser.error(f"--repeats must be >= {MIN_REPEATS} for a measurement (>= 1 with --quick), got {args.repeats}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    args.llama_layers = args.llama_layers or ([1, 2, 3] if args.quick else [1, 2, 4])
    cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(cases) - {"roberta", "llama"})
    if unknown or not cases:
        parser.error(f"--cases: unknown {unknown or 'empty list'}; choose from roberta,llama")
    args.cases = cases
    if args.out is None and not args.quick:
        args.out = DEFAULT_OUT
    return args


def cases_for(args: argparse.Namespace) -> list[Case]:
    cases = []
    if "roberta" in args.cases:
        cases.append(roberta_case(QUICK_ROBERTA, rank=32) if args.quick else roberta_case())
    if "llama" in args.cases:
        for layers in args.llama_layers:
            if args.quick:
                cases.append(llama_case(layers, QUICK_LLAMA, rank=16))
            else:
                cases.append(llama_case(layers, None if args.full_llama_mlp else LLAMA_SHRINK))
    return cases


def render(
    command: str, machine: dict[str, str], measurements: Sequence[Measurement], repeats: int, quick: bool
) -> str:
    parts = ["# Cost of a resumable checkpoint", "", f"Command: `{command}`  "]
    parts += [f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}", ""]
    if quick:
        parts += ["SMOKE RUN (--quick): toy shapes; the numbers mean nothing.", ""]
    parts += ["## Machine", ""] + [f"- {key}: {value}" for key, value in machine.items()] + [""]
    parts.append(results_table(measurements, repeats).to_markdown())
    llama = [m for m in measurements if m.case.family == "instruct"]
    fit = fit_layers(llama)
    if fit is not None:
        parts.append(scaling_table(fit, PAPER_LLAMA_LAYERS).to_markdown())
    parts += ["## What each file holds", ""]
    for m in measurements:
        saved_frozen = sorted(set(m.state_keys) & set(m.frozen_keys))
        missing = sorted(set(m.trainable_keys) - set(m.state_keys))
        buffers = [key for key in m.state_keys if key not in m.trainable_keys]
        parts.append(
            f"- {m.case.label}: {len(m.state_keys)} module tensors = {len(m.trainable_keys)} trainable parameters "
            f"(all present: {'yes' if not missing else 'no, missing ' + ', '.join(missing[:3])}) + {len(buffers)} "
            f"persistent buffers ({', '.join(sorted({k.rsplit('.', 1)[-1] for k in buffers})) or 'none'}); frozen "
            f"parameters saved: {len(saved_frozen)} of {len(m.frozen_keys)}. Model {m.total_params:,} parameters, "
            f"weights {m.case.model.get('dtype', 'float32')}. Build + LU + one step: {m.setup_seconds:.0f} s."
        )
    parts.append("")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    command = shlex.join(["python", "-m", "benchmarks.checkpoint_cost", *(sys.argv[1:] if argv is None else argv)])
    machine = describe_machine(torch.device("cpu"))
    machine["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    measurements = []
    with tempfile.TemporaryDirectory(prefix="checkpoint_cost_") as scratch:
        workdir = args.workdir or Path(scratch)
        started = time.perf_counter()
        for case in cases_for(args):
            print(f"measuring {case.label} ...", flush=True)
            measurement = measure_case(case, repeats=args.repeats, workdir=workdir)
            print(
                f"  {mib(measurement.file_bytes)} MiB, save median {ms(measurement.median)} ms "
                f"(min {ms(min(measurement.save_seconds))}, max {ms(max(measurement.save_seconds))})",
                flush=True,
            )
            measurements.append(measurement)
        machine["total wall time"] = f"{time.perf_counter() - started:.0f} s"
    if hasattr(os, "getloadavg"):
        machine["load average at end (1/5/15 min)"] = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    machine["checkpoint directory"] = (
        str(args.workdir) if args.workdir else f"a temporary directory under {tempfile.gettempdir()}"
    )
    if args.note:
        machine["note"] = args.note
    text = render(command, machine, measurements, args.repeats, args.quick)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
