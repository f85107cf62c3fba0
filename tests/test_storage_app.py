"""adapter.storage from the Hydra config end to end: a tiny RoBERTa trained on the real RTE files
with storage=lu (W0 released, its LU factors stand in for it) and storage=packed (full rank),
checked against storage=dense: the same adapter computes the same outputs in every storage."""

from __future__ import annotations

import json
import shutil

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from loldu_lightning.adapters import build_adapter
from loldu_lightning.builders import build_task
from loldu_lightning.loldu import loldu_modules
from loldu_lightning.train import train
from tests.helpers import TINY_GLUE, compose_config


def _overrides(glue_root, storage, rank):
    return [
        *TINY_GLUE,
        "task=glue/rte",
        f"data.data_dir={glue_root / 'RTE'}",
        "adapter.decomposition=lu",  # the packed storages hold LU factors (the run default is svd)
        f"adapter.storage={storage}",
        f"adapter.rank={rank}",
    ]


def _loaded(overrides, tmp_path, adapter_dir):
    """The task's model rebuilt as train() builds it, with the adapter in ``adapter_dir`` loaded."""
    cfg = compose_config(overrides, tmp_path)
    L.seed_everything(cfg.seed, workers=True)  # train() does the same: the tiny model's base weights match
    module, datamodule = build_task(cfg)
    adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
    module.model = adapter.load(module.model, adapter_dir)
    return module.model.eval(), datamodule


def _as_storage(adapter_dir, target_dir, storage):
    """A copy of an adapter folder that asks for another storage (same decomposition, same z)."""
    shutil.copytree(adapter_dir, target_dir)
    path = target_dir / "adapter_config.json"
    document = json.loads(path.read_text())
    document["storage"] = storage
    path.write_text(json.dumps(document))
    return target_dir


@pytest.mark.parametrize(("storage", "rank"), [("lu", 8), ("packed", "full")])
def test_training_with_a_compact_storage_matches_dense_storage(glue_root, tmp_path, storage, rank):
    overrides = _overrides(glue_root, storage, rank)
    result = train(compose_config(overrides, tmp_path / "run"))
    assert result["status"] == "completed"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    width = 8 if storage == "lu" else 32  # tiny-roberta's q/v are 32 x 32; "full" = 32
    assert metrics["params"]["adapter"] == 2 * 2 * (width + 1)
    adapter_dir = tmp_path / "run" / "adapter" / "last"
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["storage"] == storage and saved["rank"] == rank and saved["decomposition"] == "lu"

    model, datamodule = _loaded(overrides, tmp_path / "load", adapter_dir)
    layers = dict(loldu_modules(model))
    assert len(layers) == 4 and {layer.storage for layer in layers.values()} == {storage}
    released = {name for name, layer in layers.items() if layer.base_layer.weight is None}
    assert released == (set(layers) if storage == "lu" else set())
    state = model.state_dict()
    assert all((f"{name}.base_layer.weight" in state) == (storage != "lu") for name in layers)
    assert all(torch.any(layer.scale_vector() != 0) for layer in layers.values())  # it trained

    dense_model, _ = _loaded(overrides, tmp_path / "dense", _as_storage(adapter_dir, tmp_path / "as_dense", "dense"))
    assert {layer.storage for _, layer in loldu_modules(dense_model)} == {"dense"}
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()[0]))  # one loader per validation split
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    with torch.no_grad():
        got, want = model(**inputs).logits, dense_model(**inputs).logits
    # lu: W0 is the product of its float32 factors, so agreement is to float32 rounding
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
