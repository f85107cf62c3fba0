"""model=mpnet-base: the paper's GLUE adapter shape (r=768 on 24 matrices of 768 x 768) on MPNet.

A tiny random MPNet runs the paper's GLUE experiment end to end through train(), so the module-name
aliases (query,value -> q,v) are checked on every clone. The real all-mpnet-base-v2 checks (identity at
init, merge equivalence, only z and sigma train, Table I's counts) skip when its five packages are absent.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForSequenceClassification

from loldu_lightning.adapters import count_parameters
from loldu_lightning.builders.adapter import run_adapter
from loldu_lightning.builders.schema import model_options, run_options
from loldu_lightning.cli.config import validate_config
from loldu_lightning.loldu import LoLDULinear
from loldu_lightning.models import load_model, load_tokenizer, resolve_name_or_path
from loldu_lightning.models.packages import MPNET_BASE, MissingPartsError, find_installed_parts
from loldu_lightning.train import train
from tests.helpers import compose_config

PAPER_MRPC = ["experiment=paper/glue_mrpc", "model=mpnet-base", "trainer=cpu"]
TINY_MPNET = (
    "model.tiny={model_type:mpnet,vocab_size:30527,hidden_size:32,num_hidden_layers:2,num_attention_heads:2,"
    "intermediate_size:64,max_position_embeddings:514,pad_token_id:0}"
)


def test_the_paper_mrpc_experiment_trains_a_tiny_mpnet_through_the_aliases(glue_root, tmp_path):
    overrides = [
        *PAPER_MRPC,
        TINY_MPNET,
        "model.tokenizer=minilm",  # BERT's vocabulary (30,522 < 30,527), pad id 0 as above
        "debug=fast",
        f"data.glue_root={glue_root}",
        "data.max_length=64",
        "adapter.rank=8",  # a 32 x 32 projection has rank 32 at most
        "adapter.alpha=8",
        "callbacks.lr_monitor=false",
    ]
    result = train(compose_config(overrides, tmp_path))
    assert result["status"] == "completed" and result["task"] == "glue/mrpc"
    assert result["params"]["adapter"] == 2 * 2 * (8 + 1)  # 2 layers x (q, v) x (r + 1)
    assert result["params"]["head"] == 32 * 32 + 32 + 32 * 2 + 2  # classifier.dense + classifier.out_proj
    config = (tmp_path / "adapter" / "last" / "adapter_config.json").read_text()
    assert '"q"' in config and '"v"' in config and '"query"' not in config


# -- the real all-mpnet-base-v2 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_mrpc(glue_root) -> list[str]:
    return [*PAPER_MRPC, f"data.glue_root={glue_root}"]


@pytest.fixture(scope="module")
def mpnet(paper_mrpc):
    """The real model with a 2-label head (seeded) and a batch of two sentence pairs.

    Loading takes tens of seconds on 2 cores, so the tests share it; the LoLDU test merges its
    adapter into the weights and must stay the last one to use it.
    """
    try:
        find_installed_parts(MPNET_BASE)
    except MissingPartsError as error:
        pytest.skip(str(error))
    cfg = compose_config(paper_mrpc)
    torch.manual_seed(0)
    model = load_model(model_options(cfg.model), AutoModelForSequenceClassification, num_labels=2).eval()
    tokenizer = load_tokenizer(model_options(cfg.model))
    batch = tokenizer(
        ["The company said profits rose.", "He left early."],
        ["Profits went up, the company reported.", "The meeting ran late into the night."],
        padding=True,
        return_tensors="pt",
    )
    return model, dict(batch)


def _outputs(model, batch) -> torch.Tensor:
    """The encoder's last hidden states and the logits, in one tensor (the new head's logits alone are tiny)."""
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    return torch.cat([output.hidden_states[-1].flatten(), output.logits.flatten()])


def test_the_real_model_is_mpnet_base_with_its_pretrained_encoder(mpnet):
    model, _ = mpnet
    assert type(model).__name__ == "MPNetForSequenceClassification"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (12, 768)
    folder = resolve_name_or_path(MPNET_BASE.key)
    with safe_open(f"{folder}/model.safetensors", framework="pt") as weights:
        key = next(k for k in weights.keys() if k.endswith("encoder.layer.11.attention.attn.v.weight"))
        assert torch.equal(model.mpnet.encoder.layer[11].attention.attn.v.weight, weights.get_tensor(key))


def test_loldu_at_rank_768_on_real_mpnet(mpnet, paper_mrpc):
    """Identity at init, only z and sigma (and the head) train, 18,456 numbers, and merging keeps the function."""
    model, batch = mpnet
    cfg = compose_config(paper_mrpc)
    validate_config(cfg)
    adapter = run_adapter(run_options(cfg))
    before = _outputs(model, batch)
    adapted = adapter.apply(model, cfg.model.head_modules)
    try:
        layers = {name: m for name, m in adapted.named_modules() if isinstance(m, LoLDULinear)}
        assert len(layers) == 24 and all(name.endswith(("attn.q", "attn.v")) for name in layers)
        assert all(tuple(m.z.shape) == (768,) for m in layers.values())
        torch.testing.assert_close(_outputs(adapted, batch), before, rtol=0, atol=1e-5)

        counts = count_parameters(adapted, cfg.model.head_modules)
        assert counts["adapter"] == 24 * (768 + 1) == 18_456  # Table I: 0.0184M
        assert counts["head"] == 768 * 768 + 768 + 768 * 2 + 2
        trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
        assert all(name.endswith((".z", ".sigma")) or name.startswith("classifier.") for name in trainable)

        adapted.zero_grad()
        adapted(**batch, labels=torch.tensor([1, 0])).loss.backward()
        with_grad = {name for name, p in adapted.named_parameters() if p.grad is not None}
        assert with_grad == trainable

        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for layer in layers.values():  # a trained-looking adapter: move every z and sigma
                layer.z.add_(0.05 * layer.z.abs().mean() * torch.randn(layer.z.shape, generator=generator))
                layer.sigma.mul_(1.1)
        trained = _outputs(adapted, batch)
        assert (trained - before).abs().max() > 0.01  # the update does change the function (measured 0.039)
        merged = adapter.merge(adapted)
        assert not adapter.has_adapter_layers(merged)
        torch.testing.assert_close(_outputs(merged, batch), trained, rtol=0, atol=1e-5)  # measured 3.7e-7
    except BaseException:
        adapter.merge(adapted)
        raise


def test_trainable_counts_of_each_arm_match_table1(paper_mrpc):
    """LoRA r=8 and 16 and the linear probe on MPNet's real config (LoLDU's 18,456: the test above)."""
    try:
        find_installed_parts(MPNET_BASE)
    except MissingPartsError as error:
        pytest.skip(str(error))
    expected = {
        ("lora", ()): 24 * 8 * (768 + 768),  # 294,912: Table I's 0.3M
        ("lora", ("adapter.rank=16", "adapter.alpha=16")): 24 * 16 * (768 + 768),
        ("linear_probe", ()): 0,
    }
    for (method, extra), adapter_count in expected.items():
        cfg = compose_config([*paper_mrpc, f"experiment/paper/table1_glue_method={method}", *extra])
        config = AutoConfig.from_pretrained(resolve_name_or_path(cfg.model.name_or_path), num_labels=2)
        with torch.device("meta"):  # counting needs shapes, not weights
            model = AutoModelForSequenceClassification.from_config(config)
        validate_config(cfg)
        adapted = run_adapter(run_options(cfg)).apply(model, cfg.model.head_modules)
        counts = count_parameters(adapted, cfg.model.head_modules)
        assert counts["adapter"] == adapter_count, (method, extra)
        assert counts["head"] == 768 * 768 + 768 + 768 * 2 + 2
