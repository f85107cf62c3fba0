"""What length grouping does to SST-2's training batches, without training: how sentence length and label
go together, the share of real (not padding) tokens per setting, and how far each batch's positive share
strays from the training set's. Uses the same samples, tokenizer, max length and sampler as the grid.

    python docs/results/length_grouping/batch_composition.py > docs/results/length_grouping/batch_composition.md
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from loldu_lightning.cli.config_tree import package_path
from loldu_lightning.data.glue import GlueDataModule
from loldu_lightning.data.loaders import EpochShuffleSampler
from loldu_lightning.models import load_tokenizer
from loldu_lightning.options import GlueDataOptions, ModelOptions

BATCH = 32
SEEDS = (42, 1, 2)
SHARED_SST2 = Path(os.environ.get("LOLDU_SHARED_DATA", Path(__file__).resolve().parents[3].parent / "shared" / "data"))
SAMPLES = {  # budget -> (train examples, folder), as in measure.py
    "b1k": (1000, package_path("data/quickstart/sst2")),
    "quickstart": (5000, package_path("data/quickstart/sst2")),
    "b20k": (20000, str(SHARED_SST2 / "glue" / "SST-2")),
}
SETTINGS = {"plain": "plain", "megabatch 2": 2, "megabatch 4": 4, "megabatch 8": 8, "grouped (default)": None}


def batches(lengths: list[int], seed: int, setting) -> list[list[int]]:
    if setting == "plain":
        order = EpochShuffleSampler(len(lengths), seed).order(0)
    else:
        order = EpochShuffleSampler(len(lengths), seed, lengths=lengths, batch_size=BATCH, megabatch=setting).order(0)
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


def main() -> None:
    tokenizer = load_tokenizer(ModelOptions(name_or_path="minilm"))
    print("| budget | examples | positive share by length quartile (short to long) |")
    print("|---|---|---|")
    rows = []
    for budget, (limit, folder) in SAMPLES.items():
        options = GlueDataOptions(data_dir=folder, max_length=64, batch_size=BATCH, train_limit=limit)
        module = GlueDataModule("sst2", tokenizer, options, seed=42)
        module.setup("fit")
        train = module.datasets["train"]
        lengths = [len(ids) for ids in train.encodings["input_ids"]]
        labels = train.labels.tolist()
        by_length = sorted(range(len(lengths)), key=lengths.__getitem__)
        quarter = len(by_length) // 4
        shares = [sum(labels[i] for i in by_length[k * quarter : (k + 1) * quarter]) / quarter for k in range(4)]
        print(f"| {budget} | {len(lengths)} | {', '.join(f'{s:.3f}' for s in shares)} |")
        overall = sum(labels) / len(labels)
        for name, setting in SETTINGS.items():
            real, padded, strays = [], [], []
            for seed in SEEDS:
                for batch in batches(lengths, seed, setting):
                    sizes = [lengths[i] for i in batch]
                    real.append(sum(sizes))
                    padded.append(max(sizes) * len(sizes))
                    strays.append(abs(sum(labels[i] for i in batch) / len(batch) - overall))
            rows.append((budget, name, sum(real) / sum(padded), statistics.mean(strays)))
    print()
    print("| budget | setting | real tokens / padded tokens | mean abs(batch positive share - set's) |")
    print("|---|---|---|---|")
    for budget, name, ratio, stray in rows:
        print(f"| {budget} | {name} | {ratio:.3f} | {stray:.3f} |")
    print(f"\n(first epoch's order, seeds {', '.join(map(str, SEEDS))}, batch {BATCH}, max length 64; seed-42 samples)")


if __name__ == "__main__":
    main()
