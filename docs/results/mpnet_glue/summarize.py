"""One markdown row per run of run.sh: arm, trainable numbers, dev metrics beside the majority class
of the same dev sample, and the run's time.

    python docs/results/mpnet_glue/summarize.py <out dir of run.sh> [glue root]
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from loldu_lightning.data.glue import glue_task, read_glue_tsv


def _overrides(run: Path) -> dict[str, str]:
    items = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return dict(item.split("=", 1) for item in items)


def _arm(run: Path) -> str:
    adapter = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["adapter"]
    if adapter["name"] == "loldu":
        return f"LoLDU r={adapter['rank']} alpha={adapter['alpha']}"
    if adapter["name"] == "lora":
        return f"LoRA r={adapter['rank']} alpha={adapter['alpha']}"
    return adapter["name"]


def _lr(run: Path) -> str:
    config = OmegaConf.load(run / ".hydra" / "config.yaml")  # the rate is an interpolation into the table
    return f"{OmegaConf.select(config, 'optimizer.lr'):g}"


def _majority(glue_root: Path, task: str, limit: int | None, seed: int) -> float:
    """The majority class's share of the dev sample the run evaluated (data.val_limit, seeded like the data module)."""
    info = glue_task(task)
    examples = read_glue_tsv(glue_root / info.directory / "dev.tsv", info)  # the tasks here have one dev split
    if limit is not None and limit < len(examples):
        examples = random.Random(seed + 1).sample(examples, limit)
    return max(Counter(label for _, _, label in examples).values()) / len(examples)


def main(out: Path, glue_root: Path) -> None:
    print(
        "| task | arm | adapter numbers | head numbers | dev accuracy | dev F1 | dev loss | majority class of the sample "
        "| train() time | lr |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for metrics_file in sorted(out.glob("*/*/metrics.json")):
        run = metrics_file.parent
        metrics, overrides = json.loads(metrics_file.read_text()), _overrides(run)
        task = metrics["task"].split("/")[1]
        final = metrics["final"]
        limit = overrides.get("data.val_limit")
        limit = None if limit in (None, "null") else int(limit)  # null: the whole dev set
        majority = _majority(glue_root, task, limit, int(overrides.get("seed", 0)))
        f1 = f"{100 * final['val/f1']:.2f}" if "val/f1" in final else ""
        print(
            f"| {task} | {_arm(run)} | {metrics['params']['adapter']:,} | {metrics['params']['head']:,} | "
            f"{100 * final['val/accuracy']:.2f} | {f1} | {final['val/loss']:.4f} | {100 * majority:.2f} | {metrics['time_s'] / 60:.1f} min | "
            f"{_lr(run)} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/glue"))
