"""Mixed adapter batches: each example its own LoLDU adapter, natively (AdapterBank) and through
PEFT's adapter_names=, for classification and generate; every example must get what it gets alone."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers
from peft import get_peft_model

import loldu_lightning.peft  # noqa: F401  (registers LoLDU with PEFT)
from loldu_lightning.loldu import BASE, AdapterBank, LoLDUConfig, inject, load_adapter, loldu_modules, save_adapter
from loldu_lightning.peft import LoLDUPeftConfig
from tests.tiny_models import tiny_model

ATOL = 1e-5  # float32; only the matrix products' summation order differs from a batch of one


def tiny_roberta(num_labels: int = 2) -> transformers.RobertaForSequenceClassification:
    return tiny_model(
        "tiny-roberta", vocab_size=100, intermediate_size=48, max_position_embeddings=40, num_labels=num_labels
    )


def tiny_llama() -> transformers.LlamaForCausalLM:
    return tiny_model(
        "tiny-llama", vocab_size=120, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2
    )


def trained_like(model: torch.nn.Module, seed: int, targets: list[str], rank: int = 4) -> torch.nn.Module:
    """A LoLDU adapter with values far from its init (as after training), head perturbed too."""
    inject(model, LoLDUConfig(rank=rank, target_modules=targets, seed=seed, init="uniform", residual="ldu"))
    generator = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".z") or "classifier" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


IDS = torch.randint(3, 100, (6, 9), generator=torch.Generator().manual_seed(1))
CHOICE = ["a0", "a2", BASE, "a1", "a2", "a0"]


@pytest.fixture(scope="module")
def roberta_adapters(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for i in range(3):
        model = trained_like(tiny_roberta(), i, ["query", "value"])
        save_adapter(model, root / f"a{i}", modules_to_save=["classifier"])
    return root


def alone_logits(root: Path, name: str, ids: torch.Tensor) -> torch.Tensor:
    model = tiny_roberta()
    if name != BASE:
        load_adapter(model, root / name)
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_native_classification_each_example_gets_its_own_adapter(roberta_adapters: Path) -> None:
    bank = AdapterBank.for_adapter(tiny_roberta(), roberta_adapters / "a0")
    for i in range(3):
        bank.load(f"a{i}", roberta_adapters / f"a{i}")
    with torch.no_grad(), bank.select(CHOICE):
        mixed = bank.model(input_ids=IDS).logits
    for row, name in enumerate(CHOICE):
        alone = alone_logits(roberta_adapters, name, IDS[row : row + 1])[0]
        torch.testing.assert_close(mixed[row], alone, atol=ATOL, rtol=0)
    # The adapters really differ: one adapter for every example gives other outputs.
    with torch.no_grad(), bank.select(["a0"] * len(CHOICE)):
        same = bank.model(input_ids=IDS).logits
    assert (same[1] - mixed[1]).abs().max() > 1e-2
    # Outside select the bank's model is the base model with its own head.
    with torch.no_grad():
        torch.testing.assert_close(bank.model(input_ids=IDS[2:3]).logits[0], mixed[2], atol=ATOL, rtol=0)


def test_native_heads_of_different_widths_are_padded(roberta_adapters: Path, tmp_path: Path) -> None:
    three = trained_like(tiny_roberta(num_labels=3), 7, ["query", "value"])
    save_adapter(three, tmp_path / "three", modules_to_save=["classifier"])
    bank = AdapterBank.for_adapter(tiny_roberta(), roberta_adapters / "a0")
    bank.load("a0", roberta_adapters / "a0")
    bank.load("three", tmp_path / "three")
    with torch.no_grad(), bank.select(["three", "a0"]):
        mixed = bank.model(input_ids=IDS[:2]).logits
    with torch.no_grad():
        alone = three(input_ids=IDS[:1]).logits[0]
    torch.testing.assert_close(mixed[0], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed[1, :2], alone_logits(roberta_adapters, "a0", IDS[1:2])[0], atol=ATOL, rtol=0)
    assert torch.isnan(mixed[1, 2])


def test_native_add_remove_and_refusals(roberta_adapters: Path, tmp_path: Path) -> None:
    bank = AdapterBank.for_adapter(tiny_roberta(), roberta_adapters / "a0")
    bank.load("a0", roberta_adapters / "a0")
    bank.load("a1", roberta_adapters / "a1")
    assert bank.names == ["a0", "a1"] and len(bank) == 2
    # 4 modules x rank 4 float32 numbers, plus the head (32 x 32 + 32 + 2 x 32 + 2 float32)
    assert bank.bytes_per_adapter("a0") == 4 * 4 * 4 + (32 * 32 + 32 + 2 * 32 + 2) * 4
    with torch.no_grad(), bank.select(["a1"]):
        before = bank.model(input_ids=IDS[:1]).logits
    bank.remove("a0")
    with pytest.raises(KeyError, match="no adapter named 'a0'"), bank.select(["a0"]):
        pass
    with torch.no_grad(), bank.select(["a1"]):  # the rows moved; a1 still gets its own
        torch.testing.assert_close(bank.model(input_ids=IDS[:1]).logits, before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="loaded already"):
        bank.load("a1", roberta_adapters / "a1")
    # another rank
    save_adapter(trained_like(tiny_roberta(), 3, ["query", "value"], rank=8), tmp_path / "r8")
    with pytest.raises(ValueError, match="rank 8 on module .* this bank serves rank 4"):
        bank.load("r8", tmp_path / "r8")
    # another base model
    other = tiny_roberta()
    with torch.no_grad():
        other.roberta.encoder.layer[0].attention.self.query.weight.add_(1e-3)
    save_adapter(trained_like(other, 4, ["query", "value"]), tmp_path / "other")
    with pytest.raises(ValueError, match="base weight of module .* differs"):
        bank.load("other", tmp_path / "other")
    assert bank.names == ["a1"]


def test_native_generate_greedy_and_beam_search(tmp_path: Path) -> None:
    for i in range(2):
        save_adapter(trained_like(tiny_llama(), i, ["q_proj", "v_proj"]), tmp_path / f"g{i}")
    bank = AdapterBank.for_adapter(tiny_llama(), tmp_path / "g0")
    bank.load("g0", tmp_path / "g0")
    bank.load("g1", tmp_path / "g1")
    prompts = torch.randint(3, 120, (3, 6), generator=torch.Generator().manual_seed(2))
    choice = ["g1", "g0", BASE]
    for kwargs in ({"do_sample": False}, {"do_sample": False, "num_beams": 2}):
        with torch.no_grad(), bank.select(choice):
            mixed = bank.model.generate(prompts, max_new_tokens=6, min_new_tokens=6, pad_token_id=0, **kwargs)
        for row, name in enumerate(choice):
            model = tiny_llama()
            if name != BASE:
                load_adapter(model, tmp_path / name)
            with torch.no_grad():
                alone = model.generate(
                    prompts[row : row + 1], max_new_tokens=6, min_new_tokens=6, pad_token_id=0, **kwargs
                )
            assert torch.equal(mixed[row], alone[0]), (name, kwargs)
        assert not torch.equal(mixed[0], mixed[1])


def peft_model_with(base: torch.nn.Module, targets: list[str], heads: list[str] | None) -> torch.nn.Module:
    """A PEFT model with adapters a0, a1, a2 whose values are far from their init."""
    model = None
    for i in range(3):
        config = LoLDUPeftConfig(r=4, target_modules=targets, modules_to_save=heads, seed=i, residual="ldu")
        if model is None:
            model = get_peft_model(base, config, adapter_name="a0")
        else:
            model.add_adapter(f"a{i}", config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".z" in name or "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def test_peft_adapter_names_in_forward() -> None:
    # PEFT mixes modules_to_save copies of Linear layers only: name the RoBERTa head's two Linear layers.
    model = peft_model_with(tiny_roberta(), ["query", "value"], ["classifier.dense", "classifier.out_proj"])
    with torch.no_grad():
        mixed = model(input_ids=IDS, adapter_names=CHOICE).logits
        for row, name in enumerate(CHOICE):
            if name == BASE:
                with model.disable_adapter():
                    alone = model(input_ids=IDS[row : row + 1]).logits[0]
            else:
                model.set_adapter(name)
                alone = model(input_ids=IDS[row : row + 1]).logits[0]
            torch.testing.assert_close(mixed[row], alone, atol=ATOL, rtol=0)
        model.set_adapter("a0")
        assert (model(input_ids=IDS).logits[1] - mixed[1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="non-existing adapter\\(s\\): nope"):
        model(input_ids=IDS[:1], adapter_names=["nope"])
    with pytest.raises(ValueError, match="Length of `adapter_names`"):
        model(input_ids=IDS[:2], adapter_names=["a0"])
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(input_ids=IDS[:1], adapter_names=["a0"])


def test_peft_adapter_names_in_generate() -> None:
    model = peft_model_with(tiny_llama(), ["q_proj", "v_proj"], None)
    prompts = torch.randint(3, 120, (4, 6), generator=torch.Generator().manual_seed(3))
    choice = ["a2", BASE, "a0", "a1"]
    for kwargs in ({"do_sample": False}, {"do_sample": False, "num_beams": 2}):
        with torch.no_grad():
            mixed = model.generate(
                input_ids=prompts, adapter_names=choice, max_new_tokens=5, min_new_tokens=5, pad_token_id=0, **kwargs
            )
            for row, name in enumerate(choice):
                one = {"input_ids": prompts[row : row + 1], "max_new_tokens": 5, "min_new_tokens": 5, "pad_token_id": 0}
                if name == BASE:
                    with model.disable_adapter():
                        alone = model.generate(**one, **kwargs)
                else:
                    model.set_adapter(name)
                    alone = model.generate(**one, **kwargs)
                assert torch.equal(mixed[row], alone[0]), (name, kwargs)


def test_peft_adapters_of_different_ranks_share_a_batch() -> None:
    base = tiny_roberta()
    model = get_peft_model(base, LoLDUPeftConfig(r=4, target_modules=["query"], seed=0, residual="ldu"), "small")
    model.add_adapter("large", LoLDUPeftConfig(r=16, target_modules=["query"], seed=1, residual="ldu"))
    model.eval()
    with torch.no_grad():
        mixed = model(input_ids=IDS[:2], adapter_names=["large", "small"]).logits
        for row, name in enumerate(["large", "small"]):
            model.set_adapter(name)
            torch.testing.assert_close(mixed[row], model(input_ids=IDS[row : row + 1]).logits[0], atol=ATOL, rtol=0)


def test_benchmark_quick_run_writes_its_table(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "mixed.md"
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchmarks.mixed_batches", "--quick", "--sections", "minilm", "--out", str(out)]
    subprocess.run(command, cwd=repo, check=True, capture_output=True, timeout=600)
    report = out.read_text()
    assert "| 1 |" in report and "| 4 |" in report  # one row per count of distinct adapters (--quick: 1 and 4)
    assert "Memory per loaded adapter (its own tensors): LoLDU 21,512 bytes" in report  # 12 x 384 x 4 + head


@pytest.mark.slow
def test_real_smollm2_mixed_generate_equals_each_adapter_alone() -> None:
    """The instruct model itself: three random LoLDU adapters (r=full on q_proj/v_proj) and the base in
    one greedy generate, each row against its adapter alone (prompts of one length: no padding)."""
    pytest.importorskip("gguf", reason="SmolLM2 is a GGUF file: pip install gguf")
    from benchmarks.smollm2 import load_smollm2

    try:
        base = load_smollm2(torch.device("cpu")).eval()
    except FileNotFoundError as error:
        pytest.skip(str(error).splitlines()[0])
    bank = AdapterBank(copy.deepcopy(base), LoLDUConfig(rank="full", target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    scales = {}
    for i in range(3):
        scales[f"s{i}"] = {n: torch.randn(layer.rank, generator=generator) * 0.3 for n, layer in bank.layers.items()}
        bank.add(f"s{i}", scales[f"s{i}"])
    prompts = torch.randint(1000, 40000, (4, 8), generator=generator)
    choice = ["s0", "s2", BASE, "s1"]
    options = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": base.config.eos_token_id}
    with torch.no_grad(), bank.select(choice):
        mixed = bank.model.generate(prompts, **options)
    alone_model = copy.deepcopy(base)
    inject(alone_model, LoLDUConfig(rank="full", target_modules=["q_proj", "v_proj"], forward_mode="factored"))
    layers = dict(loldu_modules(alone_model))
    for row, name in enumerate(choice):
        with torch.no_grad():
            for module, layer in layers.items():  # v = sigma z - c: set c so that v is the adapter's vector
                layer.c.copy_(layer.sigma * layer.z - (scales[name][module] if name != BASE else 0))
            alone = alone_model.generate(prompts[row : row + 1], **options)
        assert torch.equal(mixed[row], alone[0]), name
