"""Adapter files: save -> load round trip, the two files plus the manifest, fingerprints and clear failures."""

import copy
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from loldu_lightning.loldu import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    LoLDUConfig,
    adapter_state_dict,
    inject,
    load_adapter,
    loldu_modules,
    merge,
    save_adapter,
    weight_fingerprint,
)
from loldu_lightning.loldu.manifest import MANIFEST_NAME, AdapterManifest
from tests.tiny_models import tiny_model


def _tiny_roberta(seed: int = 0, hidden: int = 16) -> nn.Module:
    return tiny_model(
        "tiny-roberta",
        seed=seed,
        vocab_size=60,
        hidden_size=hidden,
        intermediate_size=32,
        max_position_embeddings=40,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


IDS = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(5))


def _trained(config: LoLDUConfig):
    """(pristine base, adapted model with trained adapters and head)."""
    base = _tiny_roberta()
    model = inject(copy.deepcopy(base), config)
    model.classifier.requires_grad_(True)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(IDS).logits, torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    return base, model


CONFIG = LoLDUConfig(rank=6, alpha=12, init="normal", target_modules=["query", "value"])
STORAGES = ["dense", "packed", "lu"]


def _config(storage: str, **changes) -> LoLDUConfig:
    """CONFIG with ``storage`` (packed holds full-rank factors only: rank 16 = the tiny q/v width)."""
    rank = 16 if storage == "packed" else changes.pop("rank", CONFIG.rank)
    return dataclasses.replace(CONFIG, storage=storage, rank=rank, **changes)


@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip_reproduces_outputs_with_only_two_small_files(tmp_path, storage):
    config = _config(storage)
    base, model = _trained(config)
    save_adapter(model, tmp_path, base_model_name="tiny-roberta", modules_to_save=["classifier"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MANIFEST_NAME]
    )
    assert AdapterManifest.read(tmp_path) == AdapterManifest("loldu", "loldu", "tiny-roberta")

    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME))
    adapter_keys = {key: value for key, value in tensors.items() if not key.startswith("modules_to_save.")}
    assert len(adapter_keys) == 4 * 3
    rank = config.rank
    assert sum(value.numel() for value in adapter_keys.values()) == 4 * (rank + 1 + rank)  # O(r) per module
    assert {key for key in tensors if key.startswith("modules_to_save.")} == {
        f"modules_to_save.classifier.{key}" for key in model.classifier.state_dict()
    }

    fresh = copy.deepcopy(_tiny_roberta())  # same base weights; the head gets its saved values
    with torch.no_grad():
        fresh.classifier.out_proj.weight.normal_()
    load_adapter(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, atol=1e-6, rtol=0)
        assert not torch.allclose(fresh(IDS).logits, base(IDS).logits, atol=1e-4)
    assert [name for name, _ in loldu_modules(fresh)] == [name for name, _ in loldu_modules(model)]


def test_config_json_is_data_only_and_records_fingerprints(tmp_path):
    _, model = _trained(CONFIG)
    save_adapter(model, tmp_path, modules_to_save=["classifier"])
    document = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert document["method"] == "loldu" and document["format_version"] == 1
    assert document["rank"] == 6 and document["alpha"] == 12.0 and document["target_modules"] == ["query", "value"]
    assert document["base_model_revision"] is None and document["modules_to_save"] == ["classifier"]
    names = [name for name, _ in loldu_modules(model)]
    assert document["target_modules_resolved"] == names
    assert set(document["fingerprints"]) == set(names) == set(document["zero_pivots"])
    first = document["fingerprints"][names[0]]
    assert first["shape"] == [16, 16] and len(first["weight"]) == 64 and len(first["perm"]) == 64
    class_names = {type(module).__name__ for module in model.modules()} | {"LoLDUConfig", "Tensor", "Parameter"}
    text = (tmp_path / ADAPTER_CONFIG_NAME).read_text()
    assert not [name for name in class_names if name in text]


def test_loading_into_a_different_base_model_is_refused_and_leaves_it_untouched(tmp_path):
    _, model = _trained(CONFIG)
    save_adapter(model, tmp_path)
    other = _tiny_roberta(seed=1)
    expected = (
        r"'roberta\.encoder\.layer\.0\.attention\.self\.query' weight sha256.*different base model.*save_factors=True"
    )
    with pytest.raises(ValueError, match=expected):
        load_adapter(other, tmp_path)
    assert not list(loldu_modules(other))


def test_loading_into_a_differently_shaped_model_names_the_shapes(tmp_path):
    _, model = _trained(CONFIG)
    save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match=r"shape \(out x in\) differs \(expected \[16, 16\], found \[24, 24\]\)"):
        load_adapter(_tiny_roberta(hidden=24), tmp_path)


@pytest.mark.parametrize("storage", STORAGES)
def test_a_different_pivot_order_is_refused_unless_the_factors_were_saved(tmp_path, storage):
    for save_factors in (False, True):
        directory = tmp_path / str(save_factors)
        _, model = _trained(_config(storage, save_factors=save_factors))
        save_adapter(model, directory, modules_to_save=["classifier"])
        config_path = directory / ADAPTER_CONFIG_NAME
        document = json.loads(config_path.read_text())
        first = document["target_modules_resolved"][0]
        document["fingerprints"][first]["perm"] = "0" * 64  # what another machine's pivoting would look like
        config_path.write_text(json.dumps(document))
        fresh = _tiny_roberta()
        if save_factors:
            load_adapter(fresh, directory)
            with torch.no_grad():
                torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, atol=1e-6, rtol=0)
                layer = dict(loldu_modules(fresh))[first]
                for key in layer.factor_names():
                    torch.testing.assert_close(getattr(layer, key), getattr(dict(loldu_modules(model))[first], key))
        else:
            with pytest.raises(ValueError, match="pivot order.*save_factors=True"):
                load_adapter(fresh, directory)
            assert not list(loldu_modules(fresh))
            assert all(p.requires_grad for p in fresh.parameters())


@pytest.mark.parametrize(
    ("storage", "factors"),
    [("dense", ("lower", "upper", "perm")), ("packed", ("packed", "perm")), ("lu", ("packed", "diag", "perm"))],
)
def test_save_factors_stores_the_factors_too(storage, factors):
    _, model = _trained(_config(storage, save_factors=True))
    state = adapter_state_dict(model)
    name = next(name for name, _ in loldu_modules(model))
    assert {key.split(".")[-1] for key in state if key.startswith(f"{name}.")} == {"z", "sigma", "c", *factors}
    assert state[f"{name}.perm"].dtype == torch.int64


def test_missing_directory_or_files_raise_file_not_found_naming_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_adapter(_tiny_roberta(), tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_NAME):
        load_adapter(_tiny_roberta(), tmp_path)
    _, model = _trained(CONFIG)
    save_adapter(model, tmp_path)
    (tmp_path / ADAPTER_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=ADAPTER_WEIGHTS_NAME):
        load_adapter(_tiny_roberta(), tmp_path)


def test_saving_a_merged_model_or_a_model_without_adapters_is_refused(tmp_path):
    _, model = _trained(CONFIG)
    merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match="no LoLDU layers"):
        save_adapter(_tiny_roberta(), tmp_path)
    with pytest.raises(ValueError, match="missing_head"):
        unmerged = _trained(CONFIG)[1]
        save_adapter(unmerged, tmp_path, modules_to_save=["missing_head"])


def test_a_foreign_config_file_is_refused(tmp_path):
    (tmp_path / ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (tmp_path / ADAPTER_WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(ValueError, match="'lora' adapter .*not a LoLDU adapter"):
        load_adapter(_tiny_roberta(), tmp_path)
    # LoLDU saved through PEFT: the error says how to load or convert it
    (tmp_path / ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "LOLDU", "r": 8}))
    with pytest.raises(ValueError, match="PEFT's layout .*loldu_lightning.export native"):
        load_adapter(_tiny_roberta(), tmp_path)


def test_a_folder_saved_before_the_manifest_loads(tmp_path):
    _, model = _trained(CONFIG)
    save_adapter(model, tmp_path, base_model_name="tiny-roberta", modules_to_save=["classifier"])
    (tmp_path / MANIFEST_NAME).unlink()
    fresh = load_adapter(_tiny_roberta(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, atol=1e-6, rtol=0)


def test_weight_fingerprint_ignores_layout_and_dtype_but_not_values():
    weight = torch.randn(5, 3)
    assert weight_fingerprint(weight) == weight_fingerprint(weight.t().contiguous().t())
    assert weight_fingerprint(weight.double()) == weight_fingerprint(weight)
    changed = weight.clone()
    changed[0, 0] += 1e-3
    assert weight_fingerprint(changed) != weight_fingerprint(weight)
