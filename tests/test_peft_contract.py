"""LoLDU through PEFT keeps PEFT's contract for a tuner, on five kinds of model.

The properties are those PEFT's own suite checks for every method: the model is unchanged at
init, only the adapter trains, safetensors save/load round-trips, merge/unmerge and
merge_and_unload agree with the unmerged forward, disable_adapter gives the base model, several
adapters coexist and can be deleted, and half-precision base models work.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import transformers
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

import loldu_lightning.peft  # noqa: F401  (registers LoLDU with PEFT)
from loldu_lightning.peft import LoLDULayer, LoLDUPeftConfig
from tests.tiny_models import tiny_model


@dataclass
class Case:
    build: Any  # seed -> model
    inputs: dict[str, torch.Tensor]
    targets: list[str]
    modules_to_save: list[str] | None = None


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))


def _gpt2(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


_IDS = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(1))
CASES = {
    "mlp": Case(_mlp, {"input": torch.randn(4, 10, generator=torch.Generator().manual_seed(2))}, ["0", "2"], ["4"]),
    "gpt2-conv1d": Case(_gpt2, {"input_ids": _IDS}, ["c_attn", "c_fc"]),
    "tiny-roberta": Case(
        lambda seed: tiny_model("tiny-roberta", seed=seed, num_labels=2),
        {"input_ids": _IDS, "attention_mask": torch.ones_like(_IDS)},
        ["query", "value"],
        ["classifier"],
    ),
    "tiny-llama": Case(
        lambda seed: tiny_model("tiny-llama", seed=seed),
        {"input_ids": _IDS},
        ["q_proj", "v_proj"],
    ),
    "tiny-vit": Case(
        lambda seed: tiny_model("tiny-vit", seed=seed, num_labels=3),
        {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))},
        ["query", "value", "q_proj", "v_proj"],
        ["classifier"],
    ),
}


def run(model: nn.Module, case: Case) -> torch.Tensor:
    dtype = next(model.parameters()).dtype  # half-precision models take half-precision features
    inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in case.inputs.items()}
    if "input" in inputs:
        return model(inputs["input"])
    return model(**inputs).logits


def config_for(case: Case, **overrides: Any) -> LoLDUPeftConfig:
    values: dict[str, Any] = {"r": 4, "loldu_alpha": 8, "target_modules": case.targets}
    values["modules_to_save"] = case.modules_to_save
    return LoLDUPeftConfig(**{**values, **overrides})


def train_steps(model: nn.Module, case: Case, steps: int = 3, lr: float = 0.5) -> None:
    """A few SGD steps so the adapter (and any head copy) is far from its init."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        out = run(model, case).float()
        (out**2).mean().backward()
        optimizer.step()


def loldu_values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if ".loldu_adapter." in name}


def adapter_effect(model: nn.Module, case: Case, initial: dict[str, torch.Tensor]) -> float:
    """How far the trained z and sigma alone move the adapted layers' outputs: the same model and
    inputs, with the LoLDU parameters put back to `initial` (where each update is zero). Measured at
    the layers, so a trained head copy neither counts as the adapter's effect nor hides it."""
    params = dict(model.named_parameters())
    layers = [m for m in model.modules() if isinstance(m, LoLDULayer)]

    def layer_outputs() -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach())) for layer in layers]
        try:
            run(model, case)
        finally:
            for hook in hooks:
                hook.remove()
        return outputs

    trained = loldu_values(model)
    with torch.no_grad():
        adapted = layer_outputs()
        for name, value in initial.items():
            params[name].copy_(value)
        untrained = layer_outputs()
        for name, value in trained.items():
            params[name].copy_(value)
    return max((a.float() - b.float()).abs().max().item() for a, b in zip(adapted, untrained, strict=True))


@pytest.fixture(params=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


def test_unchanged_at_init_and_only_loldu_parameters_get_gradients(case):
    base = case.build(0)
    expected = run(base, case).detach()
    model = get_peft_model(copy.deepcopy(base), config_for(case))
    out = run(model, case)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    out.float().square().mean().backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    adapters = {name for name in trainable if ".loldu_adapter.default." in name}
    heads = trainable - adapters
    assert adapters and all(name.endswith((".z", ".sigma")) for name in adapters)
    assert all(".modules_to_save.default." in name for name in heads) and bool(heads) == bool(case.modules_to_save)
    layers = [m for m in model.modules() if isinstance(m, LoLDULayer)]
    assert len(adapters) == 2 * len(layers)  # z and sigma per adapted matrix


def test_merge_unmerge_disable_merge_and_unload_and_unload(case):
    base = case.build(0)
    base_out = run(base, case).detach()
    model = get_peft_model(copy.deepcopy(base), config_for(case))
    initial = loldu_values(model)
    train_steps(model, case)
    model.eval()
    # the adapter's own effect, with a trained head held fixed (its change is not the adapter's)
    assert adapter_effect(model, case, initial) > 1e-4, (
        "training did not move the adapter; the checks below prove nothing"
    )
    with torch.no_grad():
        adapted = run(model, case)

        model.merge_adapter()
        assert all(layer.merged for layer in model.modules() if isinstance(layer, LoLDULayer))
        torch.testing.assert_close(run(model, case), adapted, rtol=1e-4, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(run(model, case), adapted, rtol=1e-4, atol=1e-5)

        with model.disable_adapter():
            disabled = run(model, case)
        if case.modules_to_save is None:  # a trained head copy stays out of the base model too
            torch.testing.assert_close(disabled, base_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(run(model, case), adapted, rtol=0, atol=1e-6)

        merged = copy.deepcopy(model).merge_and_unload(safe_merge=True)
        assert not any(isinstance(m, LoLDULayer) for m in merged.modules())
        assert {type(m) for m in merged.modules()} == {type(m) for m in base.modules()}
        torch.testing.assert_close(run(merged, case), adapted, rtol=1e-4, atol=1e-5)

        unloaded = copy.deepcopy(model).unload()
        assert {type(m) for m in unloaded.modules()} == {type(m) for m in base.modules()}
        if case.modules_to_save is None:
            torch.testing.assert_close(run(unloaded, case), base_out, rtol=0, atol=1e-6)


def test_safetensors_round_trip_keeps_only_z_sigma_c_and_heads(case, tmp_path):
    model = get_peft_model(case.build(0), config_for(case))
    train_steps(model, case)
    model.eval()
    with torch.no_grad():
        expected = run(model, case)
    model.save_pretrained(tmp_path)

    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    layers = [name for name, m in model.base_model.model.named_modules() if isinstance(m, LoLDULayer)]
    adapter_keys = {f"base_model.model.{name}.loldu_adapter.{key}" for name in layers for key in ("z", "sigma", "c")}
    assert adapter_keys <= set(saved)
    others = set(saved) - adapter_keys
    assert all(
        any(key.startswith(f"base_model.model.{head}.") for head in case.modules_to_save or []) for key in others
    )
    assert bool(others) == bool(case.modules_to_save)
    document = json.loads((tmp_path / "adapter_config.json").read_text())
    assert document["peft_type"] == "LOLDU" and set(document["fingerprints"]) == set(layers)

    loaded = PeftModel.from_pretrained(case.build(0), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(run(loaded, case), expected, rtol=0, atol=0)


def test_several_named_adapters_switch_and_delete(case):
    base = case.build(0)
    base_out = run(base, case).detach()
    model = get_peft_model(copy.deepcopy(base), config_for(case))
    train_steps(model, case)
    model.eval()
    with torch.no_grad():
        first = run(model, case)

    model.add_adapter("second", config_for(case, init_weights="normal", seed=7))
    with torch.no_grad():
        assert torch.equal(run(model, case), first)  # adding an adapter does not activate it
    model.set_adapter("second")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".second" in name for name in trainable)
    train_steps(model, case, lr=0.3)
    model.eval()
    with torch.no_grad():
        second = run(model, case)
        assert (second - first).abs().max() > 1e-4
        model.set_adapter("default")
        torch.testing.assert_close(run(model, case), first, rtol=0, atol=1e-6)

        model.delete_adapter("default")
        assert model.active_adapters == ["second"]
        assert not any(".default" in name for name, _ in model.named_parameters())
        torch.testing.assert_close(run(model, case), second, rtol=0, atol=1e-6)
        with model.disable_adapter():
            if case.modules_to_save is None:
                torch.testing.assert_close(run(model, case), base_out, rtol=0, atol=1e-6)


def test_two_active_adapters_add_their_updates(tmp_path):
    case = CASES["mlp"]
    base = case.build(0)
    model = get_peft_model(copy.deepcopy(base), config_for(case, modules_to_save=None))
    train_steps(model, case)
    model.add_adapter("second", config_for(case, modules_to_save=None, seed=3))
    model.set_adapter("second")
    train_steps(model, case)
    model.eval()
    layer = model.base_model.model[0]
    x = case.inputs["input"]
    with torch.no_grad():
        layer.set_adapter(["default", "second"])
        both = layer(x)
        expected = layer.base_layer(x) + sum(x @ layer.get_delta_weight(name).t() for name in ("default", "second"))
        torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)
        model.base_model.merge_adapter(["default", "second"])
        torch.testing.assert_close(layer(x), both, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_base_models(case, dtype):
    base = case.build(0).to(dtype)
    base_out = run(base, case).detach()
    model = get_peft_model(copy.deepcopy(base), config_for(case))
    adapter = next(m for m in model.modules() if isinstance(m, LoLDULayer)).loldu_adapter["default"]
    # the trained vectors stay float32, the frozen factors take the weight's dtype (as loldu.inject does)
    assert adapter.z.dtype == torch.float32 and adapter.dense_factors()[0].dtype == dtype
    torch.testing.assert_close(run(model, case), base_out, rtol=0, atol=0)
    train_steps(model, case, steps=2, lr=0.5)
    assert all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        adapted = run(model, case)
        model.merge_adapter()
        tolerance = {"rtol": 0.05, "atol": 0.05} if dtype == torch.bfloat16 else {"rtol": 0.01, "atol": 0.01}
        torch.testing.assert_close(run(model, case), adapted, **tolerance)
        model.unmerge_adapter()
        with model.disable_adapter():
            if case.modules_to_save is None:
                torch.testing.assert_close(run(model, case), base_out, **tolerance)
