"""The instruct task family on tiny-llama: configs, training, generations, and every adapter on a causal LM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from loldu_lightning.adapters import build_adapter
from loldu_lightning.builders.schema import model_options
from loldu_lightning.cli.config import validate_config
from loldu_lightning.generation import generate_texts
from loldu_lightning.models import byte_level_tokenizer, load_causal_lm
from loldu_lightning.train import train
from tests.helpers import compose_config, logged_values

TINY = ["task=instruct/alpaca", "model=tiny-llama", "trainer=cpu", "callbacks.lr_monitor=false"]
PROMPTS = ["<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n", "Hi"]


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return load_causal_lm(model_options(compose_config(TINY).model, "instruct"))


def _adapter(name: str):
    options = {"name": name}
    if name in ("loldu", "lora"):
        options.update(rank=4, alpha=4, target_modules=["q_proj", "v_proj"])
    return build_adapter(options)


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Move every trainable parameter, as training would, so the adapter is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))


def test_config_composes_and_the_paper_experiment_is_table_viii() -> None:
    cfg = compose_config(TINY)
    validate_config(cfg)
    assert (cfg.task.family, cfg.task.monitor, cfg.task.mode) == ("instruct", "val/loss", "min")
    assert list(cfg.model.target_modules) == ["q_proj", "v_proj"] and list(cfg.model.head_modules) == []
    paper = compose_config(["experiment=paper/llama2_alpaca"])
    validate_config(paper)
    assert paper.model.name_or_path == "meta-llama/Llama-2-7b-hf" and paper.trainer.precision == "bf16-mixed"
    assert (paper.data.batch_size, paper.trainer.accumulate_grad_batches) == (1, 128)
    assert (paper.optimizer.lr, paper.trainer.max_epochs, paper.data.max_length, paper.seed) == (1e-3, 3, 256, 42)
    assert (paper.adapter.name, paper.adapter.rank, paper.adapter.alpha) == ("loldu", 1024, 1024)
    assert list(paper.adapter.target_modules) == ["q_proj", "v_proj"]


def test_one_optimizer_step_changes_only_z_and_sigma() -> None:
    model = _adapter("loldu").apply(_tiny_model(), ())
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable and all(name.endswith((".z", ".sigma")) for name in trainable)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ids = torch.randint(0, 256, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
    optimizer.step()
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed == set(trainable)


@pytest.mark.parametrize("name", ["loldu", "lora", "full"])
def test_merge_then_generate_equals_unmerged_generate(name: str) -> None:
    tokenizer = byte_level_tokenizer()
    adapter = _adapter(name)
    model = adapter.apply(_tiny_model(), ())
    _perturb(model)
    unmerged = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=12)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model.eval()(input_ids=ids).logits
        merged = adapter.merge(model)
        assert not adapter.has_adapter_layers(merged)
        torch.testing.assert_close(merged(input_ids=ids).logits, logits, atol=1e-4, rtol=1e-4)
    assert generate_texts(merged, tokenizer, PROMPTS, max_new_tokens=12) == unmerged


@pytest.mark.parametrize("name", ["loldu", "lora", "full"])
def test_adapter_save_load_round_trip_on_a_causal_lm(name: str, tmp_path: Path) -> None:
    adapter = _adapter(name)
    model = adapter.apply(_tiny_model(seed=3), ())
    _perturb(model)
    adapter.save(model, tmp_path / "adapter", (), base_model_name="tiny-llama")
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        expected = model.eval()(input_ids=ids).logits
        loaded = _adapter(name).load(_tiny_model(seed=3), tmp_path / "adapter")
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, expected)


def test_tiny_llama_trains_on_real_alpaca_with_generations(shared_data: Path, tmp_path: Path) -> None:
    overrides = [
        *TINY,
        f"data.path={shared_data / 'alpaca' / 'alpaca_5000.json'}",
        "data.prompt_format=chat",
        "data.max_length=192",
        "data.train_limit=48",
        "data.val_limit=16",
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",
        "trainer.log_every_n_steps=1",
        "adapter.rank=8",
        "adapter.alpha=8",
        "optimizer.lr=5e-2",
        "task.generation.num_prompts=2",
        "task.generation.max_new_tokens=8",
    ]
    result = train(compose_config(overrides, tmp_path))
    assert result["status"] == "completed"
    # 2 layers x (q_proj, v_proj) x (rank 8 + sigma); the tied LM head stays frozen
    assert (result["params"]["adapter"], result["params"]["head"]) == (2 * 2 * 9, 0)
    final = result["final"]
    assert final["step"] == 6  # 2 epochs x 6 micro-batches / 2 accumulated
    assert math.isclose(final["val/perplexity"], math.exp(final["val/loss"]), rel_tol=1e-5)
    best = json.loads((tmp_path / "metrics.json").read_text())["best"]
    losses = logged_values(tmp_path, "val/loss")  # one validation per epoch; the best is the lowest
    assert len(losses) == 2 and best["val/loss"] == pytest.approx(min(losses))
    assert best["epoch"] == losses.index(min(losses))
    for epoch in (0, 1):
        text = (tmp_path / "generations" / f"epoch_{epoch}.md").read_text()
        assert text.count("## Prompt") == 2 and "<|im_start|>assistant" in text and "**Response:**" in text
    assert (tmp_path / "adapter" / "best" / "adapter_model.safetensors").is_file()
