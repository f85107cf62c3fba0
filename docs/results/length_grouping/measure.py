"""The length-grouping grid (README.md beside this file): one training run at a time, each under the
machine-wide measurement lock, each appended to results.csv as it finishes, so the grid can be stopped
and resumed (a row already in results.csv is not run again).

    python docs/results/length_grouping/measure.py                # the whole grid, cheapest budget first
    python docs/results/length_grouping/measure.py --budget b1k   # one budget
    python docs/results/length_grouping/measure.py --dry-run      # print the commands that would run

Every run is `python -m loldu_lightning` (the quickstart's MiniLM, SST-2, batch 32, max length 64,
lr 1e-3, linear schedule with 6% warmup, full dev set) with the overrides below and OMP_NUM_THREADS=2,
inside the machine-wide lock (`flock /tmp/loldu_measure.lock python measure.py --hold ...`), one run at
a time. Other measurements share the lock; a short run (30 s on a quiet machine) would spend far
longer waiting for it than running, so one acquisition runs the grid's next runs one after another
and releases the lock before starting a run once `--hold` seconds (default 300) have passed. The wall
time is the training process's (model load, tokenizing, fit, validation, checkpoints); the load
average is read as it starts and ends. Set LOLDU_SOURCE=<folder with src/ and conf/> to
run a frozen copy of the code (PYTHONPATH), so that edits of the checkout cannot change a run mid-grid.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
RESULTS = HERE / "results.csv"
RUN_METRICS = HERE / "runs"  # each run's metrics.json, named by its key
LOCK = "/tmp/loldu_measure.lock"
SHARED_SST2 = Path(os.environ.get("LOLDU_SHARED_DATA", REPO.parent / "shared" / "data")) / "glue" / "SST-2"

# budget -> overrides. 1,000 x 1 epoch and the quickstart's 5,000 x 2 read the quickstart's sample of
# SST-2 shipped in the package; 20,000 x 1 (12.5 default megabatches of 50 batches) reads the GLUE
# release's train.tsv at the quickstart's max length.
BUDGETS = {
    "b1k": ["trainer.max_epochs=1", "data.train_limit=1000"],
    "quickstart": [],
    "b20k": [
        "task=glue/sst2",
        "model=minilm",
        f"data.data_dir={SHARED_SST2}",
        "data.max_length=64",
        "data.train_limit=20000",
        "trainer.max_epochs=1",
    ],
}
SETTINGS = {
    "grouped": ["data.group_by_length=true"],  # transformers' megabatch: epoch/4 batches, at most 50
    "megabatch4": ["data.group_by_length=true", "data.length_group_megabatch=4"],
    "plain": ["data.group_by_length=false"],
}
ADAPTERS = {
    "loldu": [],  # the run default (svd diagonal, full rank, lr_scale of the decomposition)
    "lora16": ["adapter=lora", "adapter.rank=16", "adapter.alpha=16"],
}
SEEDS = [42, 1, 2]
FIELDS = [
    "budget",
    "setting",
    "adapter",
    "seed",
    "accuracy_best",
    "accuracy_final",
    "best_epoch",
    "wall_s",
    "train_s",
    "load_start",
    "load_end",
    "finished_utc",
    "command",
]


def key(budget: str, setting: str, adapter: str, seed: int) -> str:
    return f"{budget}-{setting}-{adapter}-s{seed}"


def overrides(budget: str, setting: str, adapter: str, seed: int, run_dir: Path) -> list[str]:
    return [
        *BUDGETS[budget],
        *ADAPTERS[adapter],
        *SETTINGS[setting],
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
    ]


def grid(budgets: list[str]) -> list[tuple[str, str, str, int]]:
    """Cheapest budget first; inside a budget seed by seed, so a stopped grid holds whole seeds."""
    return [
        (budget, setting, adapter, seed)
        for budget in budgets
        for seed in SEEDS
        for adapter in ADAPTERS
        for setting in SETTINGS
    ]


def pending(budgets: list[str]) -> list[tuple[str, str, str, int]]:
    finished = done()
    return [run for run in grid(budgets) if key(*run) not in finished]


def done() -> set[str]:
    if not RESULTS.is_file():
        return set()
    with RESULTS.open() as handle:
        return {key(r["budget"], r["setting"], r["adapter"], int(r["seed"])) for r in csv.DictReader(handle)}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_one(budget: str, setting: str, adapter: str, seed: int, runs_root: Path) -> None:
    """One run, inside the lock (the caller holds it); appends its row to results.csv."""
    name = key(budget, setting, adapter, seed)
    run_dir = runs_root / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a stopped run starts over
    command = [sys.executable, "-m", "loldu_lightning", *overrides(budget, setting, adapter, seed, run_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", HF_HUB_OFFLINE="1")
    source = os.environ.get("LOLDU_SOURCE")
    if source:
        env["PYTHONPATH"] = str(Path(source) / "src")
    load_start = loadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("status") != "completed":
        raise SystemExit(f"{name}: the run did not complete ({metrics.get('error')})")
    RUN_METRICS.mkdir(exist_ok=True)
    (RUN_METRICS / f"{name}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    row = {
        "budget": budget,
        "setting": setting,
        "adapter": adapter,
        "seed": seed,
        "accuracy_best": round(metrics["best"]["val/accuracy"], 4),
        "accuracy_final": round(metrics["final"]["val/accuracy"], 4),
        "best_epoch": metrics["best"].get("epoch"),
        "wall_s": round(wall, 1),
        "train_s": metrics["time_s"],
        "load_start": load_start,
        "load_end": loadavg(),
        "finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m loldu_lightning " + " ".join(overrides(budget, setting, adapter, seed, Path("<dir>"))),
    }
    new_file = not RESULTS.is_file()
    with RESULTS.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints: ~90 MB a run; metrics.json is kept in runs/
    print(f"{name}: accuracy {row['accuracy_best']} wall {row['wall_s']} s (load {load_start})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", action="append", choices=list(BUDGETS), help="only these budgets (repeatable)")
    parser.add_argument("--runs-root", default="/tmp/loldu_length_grouping", help="run folders (deleted after)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--hold", type=float, default=300, help="seconds after which no new run starts in one lock")
    parser.add_argument("--locked", action="store_true", help=argparse.SUPPRESS)  # the lock is held: run
    args = parser.parse_args()
    runs_root = Path(args.runs_root)
    budgets = args.budget or list(BUDGETS)
    if args.dry_run:
        for budget, setting, adapter, seed in pending(budgets):
            print(
                "python -m loldu_lightning "
                + " ".join(overrides(budget, setting, adapter, seed, runs_root / key(budget, setting, adapter, seed)))
            )
        return
    if args.locked:
        start = time.perf_counter()
        for run in pending(budgets):
            if time.perf_counter() - start >= args.hold:
                break
            run_one(*run, runs_root)
        return
    while pending(budgets):
        locked = [sys.executable, str(Path(__file__).resolve()), "--locked", "--hold", str(args.hold)]
        locked += ["--runs-root", str(runs_root), *(f"--budget={budget}" for budget in budgets)]
        subprocess.run(["flock", LOCK, *locked], check=True)


if __name__ == "__main__":
    main()
