"""adapter.storage from the Hydra config end to end: a tiny RoBERTa trained on the real RTE files
with storage=lu (W0 released, its LU factors stand in for it) and storage=packed (full rank)."""

from __future__ import annotations

import json

import pytest
from helpers import TINY_GLUE, compose_config

from loldu_lightning.train import train


@pytest.mark.parametrize(("storage", "rank"), [("lu", 8), ("packed", "full")])
def test_training_with_a_compact_storage_runs_end_to_end(glue_root, tmp_path, storage, rank):
    overrides = [
        *TINY_GLUE,
        "task=glue/rte",
        f"data.data_dir={glue_root / 'RTE'}",
        f"adapter.storage={storage}",
        f"adapter.rank={rank}",
    ]
    result = train(compose_config(overrides, tmp_path))
    assert result["status"] == "completed"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["objective"] <= 1.0
    width = 8 if storage == "lu" else 32  # tiny-roberta's q/v are 32 x 32; "full" = 32
    assert metrics["params"]["adapter"] == 2 * 2 * (width + 1)
    saved = json.loads((tmp_path / "adapter" / "last" / "adapter_config.json").read_text())
    assert saved["storage"] == storage and saved["rank"] == rank
