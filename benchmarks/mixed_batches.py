"""Mixed adapter batches: examples per second against the number of distinct adapters in a batch.

    python -m benchmarks.mixed_batches --out docs/results/mixed_batches.md
    python -m benchmarks.mixed_batches --quick          # tiny counts and batches: a smoke run, writes nothing

Every example of a batch names its own adapter. LoLDU serves the batch with ``loldu.AdapterBank``
(one gather of each example's ``sigma z - c``, docs/library.md); PEFT LoRA with
``adapter_names=`` (one pass per distinct adapter in every adapted layer). Both sit on the same
frozen base, in the same process, with the same batch, run round-robin (one warm-up call each,
then ``--repeats`` timed calls, median):

- MiniLM (all-MiniLM-L6-v2) sequence classification: a batch of ``--batch`` examples of
  ``--seq-len`` tokens, adapters on query/value (LoLDU r=full, LoRA r=16) plus a per-adapter
  classifier head (``modules_to_save``), 1, 16, 256 and 1,024 distinct adapters;
- SmolLM2-135M-Instruct greedy ``generate``: ``--gen-batch`` prompts of ``--gen-prompt`` tokens,
  ``--gen-new`` new tokens, adapters on q_proj/v_proj (LoLDU r=full, LoRA r=16), 1, 16 and
  ``--gen-batch`` distinct adapters (a batch cannot hold more adapters than examples).

Adapter values are random (no training changes the cost). Memory per loaded adapter is the bytes of
its own tensors (LoLDU: one float32 per kept component per matrix, LoRA: A and B, both: the head).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/README.md

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch import nn  # noqa: E402

from loldu_lightning.loldu import AdapterBank, LoLDUConfig  # noqa: E402

LORA_RANK = 16


def loldu_bank(base: nn.Module, targets: list[str], count: int, heads: list[str], seed: int) -> AdapterBank:
    """A bank with ``count`` random LoLDU adapters (r=full)."""
    bank = AdapterBank(base, LoLDUConfig(rank="full", target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    shapes = {head: {k: v.shape for k, v in bank.model.get_submodule(head).state_dict().items()} for head in heads}
    for i in range(count):
        scales = {name: torch.randn(layer.rank, generator=generator) * 0.01 for name, layer in bank.layers.items()}
        states = {
            head: {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in head_shapes.items()}
            for head, head_shapes in shapes.items()
        }
        bank.add(f"a{i}", scales, states)
    return bank


def lora_model(base: nn.Module, targets: list[str], count: int, heads: list[str]) -> nn.Module:
    """A PEFT model with ``count`` random LoRA r=16 adapters."""
    config = LoraConfig(r=LORA_RANK, target_modules=targets, modules_to_save=heads or None, init_lora_weights=False)
    model = get_peft_model(base, config, adapter_name="a0")
    for i in range(1, count):
        model.add_adapter(f"a{i}", config)
    return model.eval()


def lora_bytes(model: nn.Module, name: str) -> int:
    return sum(p.numel() * p.element_size() for key, p in model.named_parameters() if f".{name}." in key)


def timed(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall-clock seconds of each call; one warm-up each, then round-robin repeats."""
    seconds: dict[str, list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()
        for _ in range(repeats):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in seconds.items()}


def minilm_section(args: argparse.Namespace) -> list[str]:
    from transformers import AutoModelForSequenceClassification

    from loldu_lightning.models import minilm_path

    def base() -> nn.Module:
        torch.manual_seed(args.seed)
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2).eval()

    targets, heads, count = ["query", "value"], ["classifier"], max(args.counts)
    bank = loldu_bank(base(), targets, count, heads, args.seed)
    lora = lora_model(base(), targets, count, heads)
    plain = base()
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(1000, 30000, (args.batch, args.seq_len), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    rows = []
    for k in args.counts:
        names = [f"a{i % k}" for i in range(args.batch)]

        def run_loldu(names: list[str] = names) -> object:
            with bank.select(names):
                return bank.model(**batch).logits

        def run_lora(names: list[str] = names) -> object:
            return lora(**batch, adapter_names=names).logits

        calls = {"loldu": run_loldu, "lora": run_lora}
        if k == args.counts[0]:
            calls["base"] = lambda: plain(**batch).logits
        times = timed(calls, args.repeats)
        if "base" in times:
            base_rate = args.batch / times["base"]
        rows.append((k, args.batch / times["loldu"], args.batch / times["lora"]))
        print(f"minilm k={k}: {rows[-1]}", flush=True)
    table = [
        f"### MiniLM classification: {args.batch} examples x {args.seq_len} tokens per batch, adapters on query/value + "
        "classifier head",
        "",
        f"Base model alone (no adapter): {base_rate:,.0f} examples/s.",
        "",
        f"| distinct adapters in the batch | LoLDU r=full (AdapterBank) examples/s | PEFT LoRA r={LORA_RANK} "
        "(adapter_names) examples/s | LoLDU / LoRA |",
        "|---:|---:|---:|---:|",
    ]
    table += [f"| {k:,} | {lo:,.0f} | {lr:,.0f} | {lo / lr:.2f}x |" for k, lo, lr in rows]
    table += [
        "",
        _memory_line(bank.bytes_per_adapter("a0"), lora_bytes(lora, "a0")),
        "",
    ]
    return table


def smollm2_section(args: argparse.Namespace) -> list[str]:
    from benchmarks.smollm2 import load_smollm2

    targets = ["q_proj", "v_proj"]
    original = load_smollm2(torch.device("cpu")).eval()
    count = args.gen_batch
    bank = loldu_bank(copy.deepcopy(original), targets, count, [], args.seed)
    lora = lora_model(copy.deepcopy(original), targets, count, [])
    generator = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(1000, 40000, (args.gen_batch, args.gen_prompt), generator=generator)
    options = {
        "attention_mask": torch.ones_like(prompts),
        "max_new_tokens": args.gen_new,
        "min_new_tokens": args.gen_new,
        "do_sample": False,
        "pad_token_id": original.config.eos_token_id,
    }
    counts = sorted({k for k in (1, 16, args.gen_batch) if k <= args.gen_batch})
    rows = []
    for k in counts:
        names = [f"a{i % k}" for i in range(args.gen_batch)]

        def run_loldu(names: list[str] = names) -> object:
            with bank.select(names):
                return bank.model.generate(prompts, **options)

        def run_lora(names: list[str] = names) -> object:
            return lora.generate(input_ids=prompts, adapter_names=names, **options)

        calls = {"loldu": run_loldu, "lora": run_lora}
        if k == counts[0]:
            calls["base"] = lambda: original.generate(prompts, **options)
        times = timed(calls, args.gen_repeats)
        if "base" in times:
            base_rate = args.gen_batch / times["base"]
        rows.append((k, args.gen_batch / times["loldu"], args.gen_batch / times["lora"]))
        print(f"smollm2 k={k}: {rows[-1]}", flush=True)
    table = [
        f"### SmolLM2-135M-Instruct greedy generate: {args.gen_batch} prompts x {args.gen_prompt} tokens, "
        f"{args.gen_new} new tokens, adapters on q_proj/v_proj",
        "",
        f"Base model alone (no adapter): {base_rate:,.1f} prompts/s.",
        "",
        f"| distinct adapters in the batch | LoLDU r=full (AdapterBank) prompts/s | PEFT LoRA r={LORA_RANK} "
        "(adapter_names) prompts/s | LoLDU / LoRA |",
        "|---:|---:|---:|---:|",
    ]
    table += [f"| {k:,} | {lo:,.1f} | {lr:,.1f} | {lo / lr:.2f}x |" for k, lo, lr in rows]
    table += [
        "",
        _memory_line(bank.bytes_per_adapter("a0"), lora_bytes(lora, "a0")),
        "",
    ]
    return table


def _memory_line(loldu_bytes: int, lora_bytes_: int) -> str:
    return (
        f"Memory per loaded adapter (its own tensors): LoLDU {loldu_bytes:,} bytes, LoRA r={LORA_RANK} "
        f"{lora_bytes_:,} bytes ({lora_bytes_ / loldu_bytes:.1f}x LoLDU's)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1,16,256,1024", help="distinct adapters per MiniLM batch")
    parser.add_argument("--batch", type=int, default=1024, help="MiniLM examples per batch")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed MiniLM calls per variant after one warm-up")
    parser.add_argument("--gen-batch", type=int, default=256, help="SmolLM2 prompts per batch (= most adapters)")
    parser.add_argument("--gen-prompt", type=int, default=8)
    parser.add_argument("--gen-new", type=int, default=4)
    parser.add_argument("--gen-repeats", type=int, default=2)
    parser.add_argument("--sections", default="minilm,smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="toy counts and batches, writes nothing unless --out")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",")]
    if args.quick:
        args.counts, args.batch, args.seq_len, args.repeats = [1, 4], 8, 8, 1
        args.gen_batch, args.gen_prompt, args.gen_new, args.gen_repeats = 4, 4, 2, 1
    if max(args.counts) > args.batch:
        parser.error(f"--counts: at most --batch ({args.batch}) distinct adapters fit in a batch")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    lines = [
        "# Mixed adapter batches: throughput against distinct adapters per batch",
        "",
        f"Command: `python -m benchmarks.mixed_batches {shlex.join(argv if argv is not None else sys.argv[1:])}`",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, "
        f"{args.threads} threads, CPU; load average at start {' '.join(load)}.",
        "",
    ]
    sections = args.sections.split(",")
    if "minilm" in sections:
        lines += minilm_section(args)
    if "smollm2" in sections:
        lines += smollm2_section(args)
    lines.append(f"Run time: {time.perf_counter() - started:.0f} s.")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
