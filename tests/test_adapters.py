"""The adapter interface: every method applies, trains, saves, loads and merges the same way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import peft
import pytest
import torch
from peft import PeftModel
from transformers import RobertaForSequenceClassification, ViTForImageClassification

from loldu_lightning.adapters import (
    ADAPTERS,
    HEAD_FILE,
    build_adapter,
    count_parameters,
    resolve_head_modules,
    unwrap_model,
)
from loldu_lightning.cli.config import config_dir
from loldu_lightning.loldu.manifest import MANIFEST_NAME, AdapterManifest
from tests.helpers import compose_config
from tests.tiny_models import tiny_model

ROBERTA_TARGETS = ["query", "value"]
ADAPTER_CONF_DIR = Path(config_dir()) / "adapter"

# Small option values so every method fits the 32-wide test model and runs in well under a second.
ROBERTA_CONFIGS: dict[str, dict] = {
    "loldu": {"name": "loldu", "rank": 4, "alpha": 4, "target_modules": ROBERTA_TARGETS, "seed": 0},
    "lora": {"name": "lora", "rank": 4, "alpha": 8, "target_modules": ROBERTA_TARGETS},
    "pissa": {"name": "pissa", "rank": 4, "alpha": 4, "target_modules": ROBERTA_TARGETS},
    "vera": {"name": "vera", "rank": 8, "target_modules": ROBERTA_TARGETS},
    "fourierft": {"name": "fourierft", "n_frequency": 16, "scaling": 10.0, "target_modules": ROBERTA_TARGETS},
    "tinylora": {"name": "tinylora", "rank": 2, "u": 4, "target_modules": ROBERTA_TARGETS},
    "full": {"name": "full"},
    "linear_probe": {"name": "linear_probe"},
    "bitfit": {"name": "bitfit"},
}

# Which non-head parameters each method trains, recognised by name.
TRAINS: dict[str, Callable[[str], bool]] = {
    "loldu": lambda name: name.endswith((".z", ".sigma")),
    "lora": lambda name: ".lora_" in name,
    "pissa": lambda name: ".lora_" in name,
    "vera": lambda name: ".vera_lambda_" in name,
    "fourierft": lambda name: ".fourierft_spectrum" in name,
    "tinylora": lambda name: ".tinylora_v" in name,
    "full": lambda name: True,
    "linear_probe": lambda name: False,
    "bitfit": lambda name: name.endswith(".bias"),
}


# Exactly the files each layout's folder holds (PEFT adds its model card, README.md).
FOLDER_FILES: dict[str, set[str]] = {
    "loldu": {"adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME},
    "peft": {"adapter_config.json", "adapter_model.safetensors", "README.md", HEAD_FILE, MANIFEST_NAME},
    "parameters": {"adapter_model.safetensors", HEAD_FILE, MANIFEST_NAME},
}


def tiny_roberta(num_labels: int = 3) -> RobertaForSequenceClassification:
    """The same seed-initialised base every call (stands in for a pretrained checkpoint)."""
    return tiny_model(
        "tiny-roberta",
        vocab_size=100,
        intermediate_size=37,
        num_labels=num_labels,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def tiny_vit() -> ViTForImageClassification:
    return tiny_model(
        "tiny-vit",
        image_size=16,
        intermediate_size=37,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def roberta_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(3, 100, (4, 9), generator=generator), "labels": torch.tensor([0, 1, 2, 1])}


def vit_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(4, 3, 16, 16, generator=generator), "labels": torch.tensor([0, 1, 2, 1])}


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**{key: value for key, value in batch.items() if key != "labels"}).logits


def train_one_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    model.zero_grad()
    model(**batch).loss.backward()
    # Adam moves every parameter with a non-zero gradient by about lr, so the update is visible in the logits.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()


def assert_no_adapter_layers(model: torch.nn.Module) -> None:
    assert not isinstance(model, PeftModel)
    wrappers = [
        type(m).__name__ for m in model.modules() if type(m).__module__.startswith(("peft.", "loldu_lightning."))
    ]
    assert wrappers == []


def non_head_weights_differ(model: torch.nn.Module, reference: torch.nn.Module, head_prefix: str) -> bool:
    reference_state = reference.state_dict()
    return any(
        not torch.equal(tensor, reference_state[key])
        for key, tensor in model.state_dict().items()
        if not key.startswith(head_prefix)
    )


def run_round_trip(
    cfg: dict, make_model: Callable[[], torch.nn.Module], batch: dict[str, torch.Tensor], head: str, directory: Path
) -> None:
    """apply -> backward -> step -> save -> load into a fresh base -> same logits -> merge -> same logits."""
    adapter = build_adapter(cfg)
    model = adapter.apply(make_model(), [head])

    train_one_step(model, batch)
    trains = TRAINS[cfg["name"]]
    for name, parameter in unwrap_model(model).named_parameters():
        expected = name.startswith(f"{head}.") or trains(name)
        assert parameter.requires_grad == expected, name
        assert (parameter.grad is not None) == expected, name
    head_grads = [p.grad for p in unwrap_model(model).get_submodule(head).parameters()]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in head_grads)
    trained = logits_of(model, batch)

    adapter.save(model, directory, [head], base_model_name="tiny-test-model")
    assert {p.name for p in directory.iterdir()} == FOLDER_FILES[adapter.layout]
    assert AdapterManifest.read(directory) == AdapterManifest(cfg["name"], adapter.layout, "tiny-test-model")

    loaded = build_adapter(cfg).load(make_model(), directory)
    torch.testing.assert_close(logits_of(loaded, batch), trained, atol=1e-5, rtol=0)

    merged = adapter.merge(model)
    assert_no_adapter_layers(merged)
    assert type(merged) is type(make_model())
    torch.testing.assert_close(logits_of(merged, batch), trained, atol=1e-5, rtol=0)
    # The folded update is really there (the linear probe alone leaves the backbone untouched).
    assert non_head_weights_differ(merged, make_model(), f"{head}.") == (cfg["name"] != "linear_probe")


def test_every_registered_adapter_is_tested():
    assert set(ROBERTA_CONFIGS) == set(ADAPTERS)


@pytest.mark.parametrize("name", sorted(ROBERTA_CONFIGS))
def test_roberta_round_trip(name: str, tmp_path: Path):
    run_round_trip(ROBERTA_CONFIGS[name], tiny_roberta, roberta_batch(), "classifier", tmp_path / name)


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "loldu", "rank": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"], "seed": 0},
        {"name": "lora", "rank": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
    ],
    ids=lambda cfg: cfg["name"],
)
def test_vit_round_trip(cfg: dict, tmp_path: Path):
    run_round_trip(cfg, tiny_vit, vit_batch(), "classifier", tmp_path)


def test_loldu_adapter_count_is_rank_plus_one_per_module():
    adapter = build_adapter(ROBERTA_CONFIGS["loldu"])
    model = adapter.apply(tiny_roberta(), ["classifier"])
    counts = count_parameters(model, ["classifier"])
    head = sum(p.numel() for p in model.classifier.parameters())
    assert counts["adapter"] == (4 + 1) * 4  # rank 4, query+value in 2 layers
    assert counts["head"] == head
    assert counts["trainable"] == counts["adapter"] + head


def test_baseline_parameter_counts():
    total = sum(p.numel() for p in tiny_roberta().parameters())
    head = sum(p.numel() for p in tiny_roberta().classifier.parameters())

    probe = build_adapter({"name": "linear_probe"})
    counts = count_parameters(probe.apply(tiny_roberta(), ["classifier"]), ["classifier"])
    assert counts == {"adapter": 0, "head": head, "trainable": head, "total": total}

    full = build_adapter({"name": "full"})
    counts = count_parameters(full.apply(tiny_roberta(), ["classifier"]), ["classifier"])
    assert counts == {"adapter": total - head, "head": head, "trainable": total, "total": total}

    lora = build_adapter(ROBERTA_CONFIGS["lora"])
    counts = count_parameters(lora.apply(tiny_roberta(), ["classifier"]), ["classifier"])
    lora_size = 4 * 4 * (32 + 32)  # 4 modules, r = 4, A (r x 32) + B (32 x r)
    assert counts == {"adapter": lora_size, "head": head, "trainable": lora_size + head, "total": total + lora_size}


def test_pissa_saves_an_equivalent_plain_lora(tmp_path: Path):
    adapter = build_adapter(ROBERTA_CONFIGS["pissa"])
    model = adapter.apply(tiny_roberta(), ["classifier"])
    adapter.save(model, tmp_path, ["classifier"])
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    # Rank doubles ([B | -B0][A ; A0]); alpha doubles with it so alpha / r is unchanged.
    assert (saved["peft_type"], saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == ("LORA", 8, 8, True)


def test_head_files_hold_the_full_head(tmp_path: Path):
    adapter = build_adapter(ROBERTA_CONFIGS["lora"])
    adapter.save(adapter.apply(tiny_roberta(), ["classifier"]), tmp_path, ["classifier"])
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / HEAD_FILE))) == {
        f"classifier.{key}" for key in tiny_roberta().classifier.state_dict()
    }


def test_head_resolution_rules():
    model = tiny_roberta()
    assert resolve_head_modules(model, ["classifier", "out_proj"]) == ("classifier",)
    assert resolve_head_modules(model, ["classifier.out_proj"]) == ("classifier.out_proj",)
    with pytest.raises(ValueError, match="'score' matches no module"):
        resolve_head_modules(model, ["score"])
    with pytest.raises(ValueError, match="list of module names"):
        resolve_head_modules(model, "classifier")


def test_unknown_head_is_rejected_by_apply():
    with pytest.raises(ValueError, match="'score'"):
        build_adapter({"name": "bitfit"}).apply(tiny_roberta(), ["score"])


@pytest.mark.parametrize("name", ["lora", "loldu"])
def test_adapter_layers_inside_the_head_are_rejected(name: str):
    cfg = dict(ROBERTA_CONFIGS[name], target_modules=["dense"])  # also matches classifier.dense
    with pytest.raises(ValueError, match="head module 'classifier"):
        build_adapter(cfg).apply(tiny_roberta(), ["classifier"])


def test_unknown_adapter_name_lists_the_registry():
    with pytest.raises(ValueError) as error:
        build_adapter({"name": "lorra"})
    assert all(name in str(error.value) for name in ADAPTERS)
    with pytest.raises(ValueError, match="no 'name'"):
        build_adapter({"r": 8})


@pytest.mark.parametrize(
    ("cfg", "expected_in_message"),
    [
        ({"name": "loldu", "rnak": 8}, ["rnak", "rank", "alpha", "init", "scaling", "residual"]),
        ({"name": "lora", "r": 8}, ["'r'", "'rank'", "'alpha'", "'dropout'", "'target_modules'", "adapter.rank="]),
        ({"name": "vera", "d_init": 0.1}, ["d_init", "projection_prng_key", "d_initial"]),
        ({"name": "pissa", "n_iter": 4}, ["n_iter", "niter"]),
        ({"name": "full", "r": 8}, ["'r'", "allowed options are []"]),
    ],
)
def test_unknown_option_lists_the_allowed_keys(cfg: dict, expected_in_message: list[str]):
    with pytest.raises(ValueError) as error:
        build_adapter(cfg)
    assert all(fragment in str(error.value) for fragment in expected_in_message), str(error.value)


@pytest.mark.parametrize(
    ("cfg", "expected_in_message"),
    [
        ({"name": "loldu", "rank": 4, "init": "unifrom"}, ["unifrom", "uniform", "zeros", "ldu"]),
        ({"name": "loldu", "rank": 4, "scaling": "learnt"}, ["learnt", "learned", "fixed", "none"]),
        ({"name": "lora", "rank": 0}, ["'rank'", ">= 1"]),
        ({"name": "pissa", "niter": -1}, ["'niter'"]),
        ({"name": "vera", "dropout": 1.5}, ["'dropout'"]),
        ({"name": "tinylora", "weight_tying": 2.0}, ["'weight_tying'"]),
        ({"name": "fourierft", "target_modules": []}, ["'target_modules'"]),
    ],
)
def test_bad_option_values_name_the_allowed_values(cfg: dict, expected_in_message: list[str]):
    with pytest.raises(ValueError) as error:
        build_adapter(cfg)
    assert all(fragment in str(error.value) for fragment in expected_in_message), str(error.value)


def test_tinylora_needs_a_peft_that_has_it(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delattr(peft, "TinyLoraConfig")
    with pytest.raises(ValueError, match="TinyLoraConfig.*lacks"):
        build_adapter({"name": "tinylora"})


@pytest.mark.parametrize("path", sorted(ADAPTER_CONF_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_packaged_configs_build(path: Path):
    """Each adapter file, composed as a run composes it (over its generated defaults in conf/schema/)."""
    root = compose_config([f"adapter={path.stem}", "model=tiny-roberta"])
    adapter = build_adapter(root.adapter)
    assert adapter.name == path.stem
    if "target_modules" in root.adapter:
        assert list(adapter.options.target_modules) == ["query", "value"]


def test_every_adapter_has_a_packaged_config():
    assert {path.stem for path in ADAPTER_CONF_DIR.glob("*.yaml")} == set(ADAPTERS)


def test_save_names_its_heads_and_needs_an_applied_model(tmp_path: Path):
    lora = build_adapter(ROBERTA_CONFIGS["lora"])
    with pytest.raises(ValueError, match="expected the PeftModel returned by apply\\(\\) or load\\(\\)"):
        lora.save(tiny_roberta(), tmp_path, ["classifier"])
    with pytest.raises(ValueError, match="head module 'clasifier' matches no module"):
        lora.save(lora.apply(tiny_roberta(), ["classifier"]), tmp_path, ["clasifier"])


def test_load_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_adapter(ROBERTA_CONFIGS["lora"]).load(tiny_roberta(), tmp_path / "missing")

    lora = build_adapter(ROBERTA_CONFIGS["lora"])
    lora.save(lora.apply(tiny_roberta(), ["classifier"]), tmp_path / "lora", ["classifier"])
    with pytest.raises(ValueError, match="holds a LORA adapter"):
        build_adapter(ROBERTA_CONFIGS["vera"]).load(tiny_roberta(), tmp_path / "lora")

    bitfit = build_adapter({"name": "bitfit"})
    bitfit.save(bitfit.apply(tiny_roberta(), ["classifier"]), tmp_path / "bitfit", ["classifier"])
    with pytest.raises(ValueError, match="holds a 'bitfit' adapter"):
        build_adapter({"name": "full"}).load(tiny_roberta(), tmp_path / "bitfit")

    with pytest.raises(ValueError, match="same number of labels"):
        build_adapter({"name": "bitfit"}).load(tiny_roberta(num_labels=5), tmp_path / "bitfit")


def make_pre_manifest(directory: Path, name: str) -> None:
    """Turn a folder saved now into one saved before adapter_manifest.json existed."""
    (directory / MANIFEST_NAME).unlink()
    if ADAPTERS[name].layout == "parameters":
        old = {"adapter_type": name, "base_model_name_or_path": "tiny-test-model", "library": "loldu_lightning"}
        (directory / "adapter_config.json").write_text(json.dumps(old, indent=2) + "\n")


@pytest.mark.parametrize(("name", "layout"), [("loldu", "loldu"), ("lora", "peft"), ("bitfit", "parameters")])
def test_folders_saved_before_the_manifest_still_load(name: str, layout: str, tmp_path: Path):
    adapter = build_adapter(ROBERTA_CONFIGS[name])
    model = adapter.apply(tiny_roberta(), ["classifier"])
    train_one_step(model, roberta_batch())
    adapter.save(model, tmp_path, ["classifier"], base_model_name="tiny-test-model")
    make_pre_manifest(tmp_path, name)
    assert MANIFEST_NAME not in {p.name for p in tmp_path.iterdir()}

    assert AdapterManifest.read(tmp_path) == AdapterManifest(name, layout, "tiny-test-model")
    loaded = build_adapter(ROBERTA_CONFIGS[name]).load(tiny_roberta(), tmp_path)
    torch.testing.assert_close(logits_of(loaded, roberta_batch()), logits_of(model, roberta_batch()), atol=1e-5, rtol=0)
    if name == "bitfit":  # the old subset files name their method too, and the wrong one is refused
        with pytest.raises(ValueError, match="holds a 'bitfit' adapter, not 'full'"):
            build_adapter({"name": "full"}).load(tiny_roberta(), tmp_path)


def test_a_folder_in_another_layout_is_refused_before_loading(tmp_path: Path):
    loldu = build_adapter(ROBERTA_CONFIGS["loldu"])
    loldu.save(loldu.apply(tiny_roberta(), ["classifier"]), tmp_path, ["classifier"])
    with pytest.raises(ValueError, match="holds a 'loldu' adapter, not 'lora'"):
        build_adapter(ROBERTA_CONFIGS["lora"]).load(tiny_roberta(), tmp_path)
    AdapterManifest("loldu", "peft").write(tmp_path)  # as `python -m loldu_lightning.export peft` labels its output
    with pytest.raises(ValueError, match="in the 'peft' layout.*'loldu' loads the 'loldu' layout"):
        build_adapter(ROBERTA_CONFIGS["loldu"]).load(tiny_roberta(), tmp_path)


def test_merge_needs_the_model_apply_returned():
    with pytest.raises(ValueError, match="PeftModel"):
        build_adapter(ROBERTA_CONFIGS["lora"]).merge(tiny_roberta())
