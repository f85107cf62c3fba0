"""Load test of the adapter server on localhost: requests per second and latency against the number of
distinct adapters in use, on the real MiniLM.

    python -m benchmarks.serve_load --out docs/results/serve_load.md
    python -m benchmarks.serve_load --adapters 4 --levels 1,4 --requests 32   # a smoke run, writes nothing

It writes ``--adapters`` LoLDU adapters of MiniLM (r=full on query/value, each with its own 2-label
classifier head; one made with ``save_adapter``, the others its copies with random z and heads:
the values do not change the cost), starts ``python -m loldu_lightning.serve`` on a free localhost
port, and for each level k sends ``--requests`` requests (SST-2 dev sentences) with
``--concurrency`` in flight, request i naming adapter ``i mod k``. Every level is bounded by
``--requests`` and ``--max-seconds``; the server is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
for path in (REPO_ROOT, REPO_ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import httpx  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from loldu_lightning.loldu import ADAPTER_WEIGHTS_NAME, LoLDUConfig, inject, save_adapter  # noqa: E402
from loldu_lightning.serve.process import served  # noqa: E402

SENTENCES = REPO_ROOT / "src" / "loldu_lightning" / "data" / "quickstart" / "sst2" / "dev.tsv"


def write_adapters(root: Path, count: int, seed: int) -> None:
    from transformers import AutoModelForSequenceClassification

    from loldu_lightning.models import minilm_path

    model = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    inject(model, LoLDUConfig(rank="full", target_modules=["query", "value"]))
    first = save_adapter(model, root / "a0", base_model_name="minilm", modules_to_save=["classifier"])
    tensors = load_file(str(first / ADAPTER_WEIGHTS_NAME))
    generator = torch.Generator().manual_seed(seed)
    for i in range(1, count):
        folder = root / f"a{i}"
        shutil.copytree(first, folder)
        changed = {
            key: (value + torch.randn(value.shape, generator=generator) * 0.05)
            if key.endswith(".z") or key.startswith("modules_to_save.")
            else value
            for key, value in tensors.items()
        }
        save_file(changed, str(folder / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt", "method": "loldu"})


async def run_level(
    url: str, sentences: list[str], k: int, requests: int, concurrency: int, max_seconds: float
) -> dict:
    latencies: list[float] = []
    failures = 0
    batch_sizes: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while not queue.empty() and time.perf_counter() < deadline:
            i = queue.get_nowait()
            body = {"adapter": f"a{i % k}", "inputs": sentences[i % len(sentences)]}
            sent = time.perf_counter()
            response = await client.post(f"{url}/predict", json=body, timeout=120)
            latencies.append(time.perf_counter() - sent)
            if response.status_code != 200:
                failures += 1
            else:
                batch_sizes.append(response.json()["batch"]["size"])

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "k": k,
        "done": len(latencies),
        "failures": failures,
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))] * 1000,
        "mean_batch": statistics.mean(batch_sizes) if batch_sizes else 0.0,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adapters", type=int, default=256, help="adapters loaded by the server")
    parser.add_argument("--levels", default="1,16,256", help="distinct adapters in use per level")
    parser.add_argument("--requests", type=int, default=512, help="requests per level (bound)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--max-seconds", type=float, default=120, help="time bound per level")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    levels = [int(k) for k in args.levels.split(",")]
    if max(levels) > args.adapters:
        parser.error("--levels: a level cannot use more adapters than --adapters loads")
    with open(SENTENCES, encoding="utf-8") as handle:
        sentences = [row["sentence"] for row in csv.DictReader(handle, delimiter="\t")]
    load_at_start = open("/proc/loadavg").read().split()[:3]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        write_adapters(root / "adapters", args.adapters, args.seed)
        arguments = [
            "--model", "minilm", "--adapters", str(root / "adapters"), "--max-batch-size", str(args.max_batch_size),
            "--batch-timeout", str(args.batch_timeout), "--accelerator", "cpu", "--log-level", "warning",
        ]  # fmt: skip
        with served(arguments, root / "server.log", timeout_s=600) as url:
            loaded = httpx.get(f"{url}/adapters", timeout=60).json()
            results = []
            for k in levels:
                asyncio.run(run_level(url, sentences, k, min(64, args.requests), args.concurrency, 60))  # warm-up
                results.append(
                    asyncio.run(run_level(url, sentences, k, args.requests, args.concurrency, args.max_seconds))
                )
                print(results[-1], flush=True)
            stats = httpx.get(f"{url}/stats", timeout=60).json()
    per_adapter = loaded["bytes"]["a0"]
    lines = [
        "# Adapter server load test (MiniLM, localhost)",
        "",
        f"Command: `python -m benchmarks.serve_load {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, CPU; "
        f"load average at start {' '.join(load_at_start)}; server: --max-batch-size {args.max_batch_size} "
        f"--batch-timeout {args.batch_timeout}; client: {args.concurrency} requests in flight.",
        "",
        f"{len(loaded['adapters'])} LoLDU adapters loaded (r=full on query/value, 2-label head each); memory per "
        f"loaded adapter: {per_adapter:,} bytes (update vectors {12 * 384 * 4:,} + head {per_adapter - 12 * 384 * 4:,}).",
        "",
        "| distinct adapters in use | requests | failed | requests/s | p50 ms | p99 ms | mean batch size |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['k']:,} | {r['done']:,} | {r['failures']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | "
        f"{r['mean_batch']:.1f} |"
        for r in results
    ]
    lines += ["", f"Server counters at the end: {stats}.", ""]
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
