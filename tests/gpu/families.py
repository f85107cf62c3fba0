"""The tiny training configuration of every task family, placed on the device under test.

Each family trains its tiny model (tiny-roberta, tiny-vit, tiny-llama, tiny-sd) for two optimizer
steps on the data the default suite uses (the real data under ../shared/data where present, else the
generated stand-ins in the same formats, tests/fixtures.py); instruct uses 32 generated records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .runtime import lightning_accelerator, require_diffusers, tiny_roberta_tokenizer

FAMILIES = ("glue", "vision", "instruct", "diffusion")
STEPS = 2


def trainer_overrides(device: torch.device, precision: str) -> list[str]:
    """trainer=gpu (one device) on the device under test, two steps, one validation batch."""
    return [
        "trainer=gpu",
        f"trainer.accelerator={lightning_accelerator(device)}",
        "trainer.devices=1",
        f"trainer.precision={precision}",
        "trainer.max_epochs=1",
        f"++trainer.max_steps={STEPS}",
        "++trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "callbacks.lr_monitor=false",
        "callbacks.throughput=0",
    ]


def _alpaca_file(tmp_path: Path) -> Path:
    """32 short records in Alpaca's JSON format: a precision check needs two batches, not the real corpus
    (reading and tokenizing its 5,000 records would be most of the family's time in a dry run)."""
    records = [
        {"instruction": f"Add {a} and {a + 3}.", "input": "", "output": f"The sum is {2 * a + 3}."} for a in range(32)
    ]
    path = tmp_path / "alpaca_standin.json"
    path.write_text(json.dumps(records))
    return path


def family_overrides(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Task, tiny model and data overrides of ``family``; data fixtures are requested only when needed."""
    batch = ["data.batch_size=4", "data.eval_batch_size=4"]
    if family == "glue":
        glue_root = request.getfixturevalue("glue_root")
        return [
            "task=glue/rte",
            f"data.data_dir={glue_root / 'RTE'}",
            "model=tiny-roberta",
            *tiny_roberta_tokenizer(),
            "data.train_limit=16",
            "data.val_limit=4",
            "data.max_length=64",
            "adapter.rank=8",
            "adapter.alpha=8",
            *batch,
        ]
    if family == "vision":
        images = request.getfixturevalue("image_folder_root")
        return [
            "task=vision/imagefolder",
            f"data.root={images}",
            "model=tiny-vit",
            "data.train_limit=16",
            "data.val_limit=4",
            "data.augment=false",
            "adapter.rank=8",
            "adapter.alpha=8",
            *batch,
        ]
    if family == "instruct":
        return [
            "task=instruct/alpaca",
            "model=tiny-llama",
            f"data.path={_alpaca_file(tmp_path)}",
            "data.max_length=256",  # byte-level tokens: the Alpaca template alone is about 150
            "data.val_size=4",
            "data.train_limit=16",
            "data.val_limit=4",
            "task.generation.num_prompts=0",
            "adapter.rank=8",
            "adapter.alpha=8",
            *batch,
        ]
    if family == "diffusion":
        require_diffusers()
        from tests.diffusion_helpers import tiny_sd_overrides

        sd_cache, subject = request.getfixturevalue("sd_cache"), request.getfixturevalue("dog")
        # trainer_overrides() chooses the trainer; Hydra refuses a second choice of the same group
        return [
            *(o for o in tiny_sd_overrides(sd_cache, subject) if not o.startswith("trainer=")),
            "sampling.enabled=false",
            f"++trainer.val_check_interval={STEPS}",
        ]
    raise ValueError(f"unknown task family {family!r}; one of {FAMILIES}")
