"""LoLDU as a PEFT method: same numbers as loldu.inject, registration, fingerprints, every option."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel, get_peft_model
from peft.utils import PeftType
from safetensors.torch import load_file, save_file

import loldu_lightning.peft as loldu_peft
from loldu_lightning import loldu
from loldu_lightning.peft import PEFT_FIELD_NAMES, LoLDULayer, LoLDUPeftConfig
from loldu_lightning.peft.registration import check_peft_version
from tests.tiny_models import tiny_model

REPO = Path(__file__).resolve().parents[1]  # a child interpreter imports tests.tiny_models from here
TINY_ROBERTA = dict(vocab_size=100, intermediate_size=48, max_position_embeddings=40, num_labels=2)


def tiny_roberta(seed: int = 0) -> transformers.RobertaForSequenceClassification:
    return tiny_model("tiny-roberta", seed=seed, **TINY_ROBERTA)


IDS = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "options",
    [
        {"rank": 8, "alpha": 16, "init": "uniform"},
        {"rank": "full", "init": "normal", "scaling": "fixed", "residual": "ldu", "forward_mode": "merged"},
        {"rank": 5, "init": "ldu", "decomposition": "svd", "storage": "dense"},
        {"rank": "full", "storage": "packed", "forward_mode": "factored"},
    ],
    ids=["uniform", "fixed-ldu-merged", "svd", "packed"],
)
def test_peft_path_and_native_inject_agree_on_outputs_and_gradients(options):
    native_config = loldu.LoLDUConfig(target_modules=["query", "value"], seed=11, **options)
    native = loldu.inject(tiny_roberta(), native_config)
    peft_model = get_peft_model(tiny_roberta(), LoLDUPeftConfig.from_loldu_config(native_config))

    outputs = []
    for model in (native, peft_model):
        logits = model(input_ids=IDS).logits
        (logits**2).sum().backward()
        outputs.append(logits)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)

    native_layers = dict(loldu.loldu_modules(native))
    peft_layers = {
        name: module.loldu_adapter["default"]
        for name, module in peft_model.base_model.model.named_modules()
        if isinstance(module, LoLDULayer)
    }
    assert set(peft_layers) == set(native_layers) and len(native_layers) == 4
    for name, layer in native_layers.items():
        twin = peft_layers[name]
        assert torch.equal(twin.z, layer.z) and torch.equal(twin.c, layer.c)
        assert torch.equal(twin.z.grad, layer.z.grad)
        if isinstance(layer.sigma, torch.nn.Parameter):
            assert torch.equal(twin.sigma.grad, layer.sigma.grad)
        else:
            assert not isinstance(twin.sigma, torch.nn.Parameter)


def test_every_loldu_option_has_a_peft_field():
    peft_fields = {field.name for field in dataclasses.fields(LoLDUPeftConfig)}
    missing = [name for name in loldu.LoLDUConfig.field_names() if PEFT_FIELD_NAMES.get(name, name) not in peft_fields]
    assert not missing, f"add these loldu.LoLDUConfig options to LoLDUPeftConfig: {missing}"
    config = LoLDUPeftConfig(r="full", loldu_alpha=3.0, init_weights="zeros", decomposition="qr", seed=4)
    native = config.to_loldu_config()
    assert (native.rank, native.alpha, native.init, native.decomposition, native.seed) == (
        "full",
        3.0,
        "zeros",
        "qr",
        4,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"init_weights": "gaussian"}, "unknown init 'gaussian'.*init_weights = init"),
        ({"init_loldu_weights": "gaussian"}, "unknown init 'gaussian'.*init_weights = init"),
        ({"init_weights": "zeros", "init_loldu_weights": "ones"}, "init_loldu_weights is the older name"),
        ({"init_weights": 0.5}, "init_weights must be True, False or the name"),
        ({"init_weights": False, "residual": "authors"}, "init_weights=False sets residual 'ldu'"),
        ({"r": 0}, "rank must be >= 1"),
        ({"bias": "lora_only"}, "unknown bias 'lora_only'; allowed values: none, all, loldu_only"),
        ({"storage": "lu", "dtype": "bfloat16"}, "storage 'lu'"),
    ],
)
def test_bad_options_fail_when_the_config_is_built(fields, message):
    with pytest.raises(ValueError, match=message):
        LoLDUPeftConfig(target_modules=["query"], **fields)


def update_at_creation(config: LoLDUPeftConfig) -> float:
    """The largest ||delta W|| / ||W0|| over the adapted layers of a freshly created model."""
    model = get_peft_model(tiny_roberta(), config)
    layers = [module for module in model.modules() if isinstance(module, LoLDULayer)]
    return max(float(layer.get_delta_weight("default").norm() / layer.base_layer.weight.norm()) for layer in layers)


def test_init_weights_true_keeps_the_base_model_and_false_does_not():
    assert update_at_creation(LoLDUPeftConfig(r=4, target_modules=["query"])) == 0.0
    assert update_at_creation(LoLDUPeftConfig(r=4, target_modules=["query"], init_weights="normal")) == 0.0
    moved = LoLDUPeftConfig(r=4, target_modules=["query"], init_weights=False)
    assert (moved.residual, moved.to_loldu_config().init) == ("ldu", "uniform")
    assert update_at_creation(moved) > 0.1  # the top-4 LU components of W0 replaced by random ones


@pytest.mark.parametrize("bias", ["loldu_only", "all"])
def test_bias_trains_and_travels_with_the_adapter(bias, tmp_path):
    model = get_peft_model(tiny_roberta(), LoLDUPeftConfig(r=4, target_modules=["query"], bias=bias))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    biases = {name for name in trainable if name.endswith(".bias")}
    adapted = {name for name in biases if ".query.base_layer." in name}
    assert len(adapted) == 2 and (biases == adapted) == (bias == "loldu_only")
    assert trainable - biases == {name for name in trainable if name.endswith((".z", ".sigma"))}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in biases:
                parameter.add_(0.5)
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_roberta(), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, expected)


@pytest.mark.parametrize("autocast", [True, False])
def test_adapter_dtype_follows_peft_autocast_adapter_dtype(autocast):
    base = tiny_roberta().to(torch.bfloat16)
    with torch.no_grad():
        base_logits = base(input_ids=IDS).logits
    model = get_peft_model(base, LoLDUPeftConfig(r=4, target_modules=["query"]), autocast_adapter_dtype=autocast)
    layer = next(module for module in model.modules() if isinstance(module, LoLDULayer))
    adapter = layer.loldu_adapter["default"]
    expected = torch.float32 if autocast else torch.bfloat16
    assert {adapter.z.dtype, adapter.sigma.dtype, adapter.c.dtype} == {expected}
    assert adapter.z.requires_grad and isinstance(adapter.sigma, torch.nn.Parameter)
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, base_logits)  # sigma0 = 1, so exact in either dtype


def test_a_folder_written_with_init_loldu_weights_and_a_0d_sigma_still_loads(tmp_path):
    """Adapter folders saved before init_weights and the length-1 sigma: the config alias and the
    0-d sigma are read, through PEFT and through the native converter, with the same logits."""
    model = get_peft_model(tiny_roberta(), LoLDUPeftConfig(r=4, target_modules=["query"], init_weights="normal"))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1)
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    config_path, weights_path = tmp_path / "adapter_config.json", tmp_path / "adapter_model.safetensors"
    document = json.loads(config_path.read_text())
    assert document["init_weights"] == "normal" and document["init_loldu_weights"] is None
    del document["init_weights"]
    document["init_loldu_weights"] = "normal"
    config_path.write_text(json.dumps(document))
    tensors = load_file(weights_path)
    sigmas = [key for key in tensors if key.endswith(".sigma")]
    assert sigmas and all(tensors[key].shape == (1,) for key in sigmas)
    save_file({key: value.reshape(()) if key in sigmas else value for key, value in tensors.items()}, weights_path)

    loaded = PeftModel.from_pretrained(tiny_roberta(), tmp_path).eval()
    assert loaded.peft_config["default"].init_weights == "normal"
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, expected)

    from loldu_lightning.export import peft_to_native

    native = loldu.load_adapter(tiny_roberta(), peft_to_native(tmp_path, tmp_path / "native"))
    assert json.loads((tmp_path / "native" / "adapter_config.json").read_text())["init"] == "normal"
    with torch.no_grad():
        assert torch.equal(native(input_ids=IDS).logits, expected)


def test_registration_is_idempotent_and_survives_a_reimport():
    loldu_peft.register()
    reloaded = importlib.reload(loldu_peft.registration)
    reloaded.register()
    assert PeftType("LOLDU") is PeftType.LOLDU and list(PeftType).count(PeftType.LOLDU) == 1
    model = get_peft_model(tiny_roberta(), LoLDUPeftConfig(r=2, target_modules=["query"]))
    assert model.peft_type == PeftType.LOLDU


def test_an_unsupported_peft_version_gets_one_clear_error():
    with pytest.raises(ImportError, match=r"supports PEFT >= 0\.21\.0, < 0\.22\.0; found PEFT 0\.20\.0.*pip install"):
        check_peft_version("0.20.0")
    check_peft_version("0.21.2")


def test_loading_onto_another_base_model_names_the_module(tmp_path):
    model = get_peft_model(tiny_roberta(0), LoLDUPeftConfig(r=4, target_modules=["query", "value"]))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"module 'roberta\.encoder\.layer\.0\.attention\.self\.query' weight sha256"):
        PeftModel.from_pretrained(tiny_roberta(1), tmp_path)
    # one layer, with the first layer's weights of the original: the second layer's modules are missing
    small = transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(**{**tiny_roberta(0).config.to_dict(), "num_hidden_layers": 1})
    )
    small.load_state_dict(tiny_roberta(0).state_dict(), strict=False)
    with pytest.raises(ValueError, match=r"it was made for modules this model lacks.*layer\.1\.attention\.self\.query"):
        PeftModel.from_pretrained(small, tmp_path)


@pytest.mark.parametrize("storage", ["dense", "packed"])
def test_saved_factors_travel_with_the_adapter_and_load_under_another_name(storage, tmp_path):
    rank = "full" if storage == "packed" else 4
    config = LoLDUPeftConfig(r=rank, target_modules=["query"], save_factors=True, storage=storage)
    model = get_peft_model(tiny_roberta(), config)
    layer = model.base_model.model.roberta.encoder.layer[0].attention.self.query.loldu_adapter["default"]
    with torch.no_grad():
        layer.z.add_(0.5)
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "adapter_model.safetensors")))
    prefix = "base_model.model.roberta.encoder.layer.0.attention.self.query.loldu_adapter."
    assert {prefix + f"factor_storage.{name}" for name in layer.factor_names()} <= keys
    assert not any(".default." in key for key in keys)

    loaded = PeftModel.from_pretrained(tiny_roberta(), tmp_path, adapter_name="other")
    twin = loaded.base_model.model.roberta.encoder.layer[0].attention.self.query.loldu_adapter["other"]
    for name, tensor in layer.factor_tensors().items():
        assert torch.equal(twin.factor_tensors()[name], tensor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, rtol=0, atol=0)


def test_storage_lu_releases_w0_and_gives_it_back(tmp_path):
    base = tiny_roberta()
    expected = base(input_ids=IDS).logits.detach()
    model = get_peft_model(copy.deepcopy(base), LoLDUPeftConfig(r=4, target_modules=["query"], storage="lu"))
    query = model.base_model.model.roberta.encoder.layer[0].attention.self.query
    assert query.base_layer.weight is None
    torch.testing.assert_close(model(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        query.loldu_adapter["default"].z.add_(1.0)
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cannot hold several adapters when one uses storage 'lu'"):
        model.add_adapter("second", LoLDUPeftConfig(r=2, target_modules=["query"]))
    unloaded = model.unload()
    assert unloaded.roberta.encoder.layer[0].attention.self.query.weight is not None
    torch.testing.assert_close(unloaded(input_ids=IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_non_finite_update_is_refused_by_safe_merge():
    model = get_peft_model(tiny_roberta(), LoLDUPeftConfig(r=4, target_modules=["query"]))
    with torch.no_grad():
        model.base_model.model.roberta.encoder.layer[1].attention.self.query.loldu_adapter["default"].z[0] = float(
            "nan"
        )
    with pytest.raises(ValueError, match=r"merging adapter 'default' into module '.*layer\.1\.attention\.self\.query'"):
        model.merge_and_unload(safe_merge=True)


def test_default_targets_come_from_the_model_type():
    model = get_peft_model(tiny_roberta(), LoLDUPeftConfig(r=2))
    assert model.peft_config["default"].target_modules == {"query", "value"}
    with pytest.raises(ValueError, match="no default for model type"):
        torch.manual_seed(0)
        gpt = transformers.GPTNeoXForCausalLM(
            transformers.GPTNeoXConfig(
                vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
            )
        )
        get_peft_model(gpt, LoLDUPeftConfig(r=2))


def test_fresh_processes_load_a_saved_adapter_and_unpickle_a_model(tmp_path):
    """One fresh interpreter (what a spawned DDP worker is) does both: it unpickles a LoLDU model before
    anything imports the integration, then loads a saved adapter with PeftModel.from_pretrained after it."""
    import pickle

    model = get_peft_model(tiny_roberta(), LoLDUPeftConfig(r=4, target_modules=["query", "value"], seed=5))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1)
        torch.save(model(input_ids=IDS).logits, tmp_path / "expected.pt")
    model.save_pretrained(tmp_path / "adapter")
    # the PEFT type first: unpickling meets PeftType.LOLDU before any class of the integration
    (tmp_path / "model.pkl").write_bytes(pickle.dumps((model.peft_type, model)))
    script = textwrap.dedent(
        f"""
        import pickle, sys, torch, transformers
        ids = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(0))
        expected = torch.load(r"{tmp_path / "expected.pt"}")
        peft_type, model = pickle.loads(open(r"{tmp_path / "model.pkl"}", "rb").read())
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, expected)
        print("unpickled", peft_type, peft_type is model.peft_type)

        from peft import PeftModel
        import loldu_lightning.peft
        sys.path.insert(0, r"{REPO}")
        from tests.tiny_models import tiny_model
        base = tiny_model("tiny-roberta", **{TINY_ROBERTA!r})
        loaded = PeftModel.from_pretrained(base, r"{tmp_path / "adapter"}")
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits, expected)
        print("loaded, same logits")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unpickled PeftType.LOLDU True" in result.stdout and "loaded, same logits" in result.stdout
