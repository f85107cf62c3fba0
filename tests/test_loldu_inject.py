"""inject(): target matching, freezing, gradients, clear errors, and every supported architecture."""

import copy

import pytest
import torch
from torch import nn

from loldu_lightning.loldu import LoLDUConfig, LoLDULinear, inject, loldu_modules, resolve_target_modules
from tests.tiny_models import tiny_model

transformers = pytest.importorskip("transformers")


# smaller than the configs' tiny models (16 wide), so the float64 comparisons below stay fast
def _tiny_roberta_classifier(seed: int = 0) -> nn.Module:
    return tiny_model(
        "tiny-roberta",
        seed=seed,
        vocab_size=60,
        hidden_size=16,
        intermediate_size=32,
        max_position_embeddings=40,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _tiny_vit(seed: int = 0) -> nn.Module:
    return tiny_model(
        "tiny-vit",
        seed=seed,
        image_size=8,
        patch_size=4,
        hidden_size=16,
        intermediate_size=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def _tiny_llama(seed: int = 0) -> nn.Module:
    return tiny_model(
        "tiny-llama",
        seed=seed,
        vocab_size=60,
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )


def _tiny_gpt2(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=60,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


class _UNetOutput(nn.Module):
    """Calls a diffusers UNet with fixed conditioning so every architecture takes one input tensor."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample):
        context = torch.linspace(-1, 1, sample.shape[0] * 3 * 16).reshape(sample.shape[0], 3, 16).to(sample.dtype)
        return self.unet(sample, 10, encoder_hidden_states=context).sample


def _tiny_unet(seed: int = 0) -> nn.Module:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return _UNetOutput(unet).eval()


def _ids(batch=2, length=6):
    return torch.randint(0, 60, (batch, length), generator=torch.Generator().manual_seed(1))


ARCHITECTURES = {
    # name: (builder, target_modules, example input, output of the model call)
    "roberta": (_tiny_roberta_classifier, ["query", "value"], lambda: _ids(), lambda out: out.logits),
    "vit": (_tiny_vit, ["q_proj", "v_proj"], lambda: torch.randn(2, 3, 8, 8), lambda out: out.logits),
    "llama": (_tiny_llama, ["q_proj", "v_proj"], lambda: _ids(), lambda out: out.logits),
    "gpt2": (_tiny_gpt2, ["c_attn"], lambda: _ids(), lambda out: out.logits),
    "unet": (_tiny_unet, ["to_q", "to_k", "to_v", "to_out.0"], lambda: torch.randn(1, 4, 8, 8), lambda out: out),
}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_architecture_adapts_trains_and_agrees_across_forward_paths(architecture):
    build, targets, make_input, output_of = ARCHITECTURES[architecture]
    # float64, so that comparing the two paths is not drowned by float32 rounding that deep random
    # networks (the UNet's group norms especially) amplify.
    base = build().double()
    model = inject(copy.deepcopy(base), LoLDUConfig(rank=4, alpha=8, init="normal", target_modules=targets))
    layers = dict(loldu_modules(model))
    assert layers and all(any(name == t or name.endswith("." + t) for t in targets) for name in layers)
    x = make_input()
    x = x.double() if x.is_floating_point() else x

    with torch.no_grad():
        torch.testing.assert_close(output_of(model(x)), output_of(base(x)), atol=1e-12, rtol=0)
        for layer in layers.values():
            layer.z.add_(torch.randn_like(layer.z))
        adapted = {}
        for mode in ("factored", "merged"):
            for layer in layers.values():
                layer.forward_mode = mode
            adapted[mode] = output_of(model(x))
    assert not torch.allclose(adapted["factored"], output_of(base(x)), atol=1e-4)
    torch.testing.assert_close(adapted["merged"], adapted["factored"], atol=1e-9, rtol=1e-9)

    output_of(model(x)).square().mean().backward()
    assert all(layer.z.grad is not None and layer.z.grad.abs().sum() > 0 for layer in layers.values())


def test_gpt2_conv1d_weight_is_seen_transposed():
    model = inject(_tiny_gpt2(), LoLDUConfig(rank=5, target_modules=["c_attn"]))
    layer = model.transformer.h[0].attn.c_attn
    assert isinstance(layer, LoLDULinear)
    assert (layer.out_features, layer.in_features) == (48, 16)
    assert torch.equal(layer.base_weight(), layer.base_layer.weight.t())


def test_list_targets_match_whole_names_or_dotted_suffixes():
    names = resolve_target_modules(_tiny_roberta_classifier(), ["query", "attention.output.dense"])
    assert names == [
        "roberta.encoder.layer.0.attention.self.query",
        "roberta.encoder.layer.0.attention.output.dense",
        "roberta.encoder.layer.1.attention.self.query",
        "roberta.encoder.layer.1.attention.output.dense",
    ]
    # "dense" must not match "classifier.out_proj"-like names that merely contain it
    assert all(name.endswith(".dense") for name in resolve_target_modules(_tiny_roberta_classifier(), ["dense"]))


def test_regex_targets_use_fullmatch():
    model = _tiny_roberta_classifier()
    assert resolve_target_modules(model, r".*layer\.1\..*(query|value)") == [
        "roberta.encoder.layer.1.attention.self.query",
        "roberta.encoder.layer.1.attention.self.value",
    ]
    with pytest.raises(ValueError, match="matched no module"):
        resolve_target_modules(model, "query")  # a regex string must match the whole name


@pytest.mark.parametrize(
    ("build", "head"), [(_tiny_roberta_classifier, "classifier"), (_tiny_llama, "lm_head"), (_tiny_gpt2, "lm_head")]
)
def test_all_linear_skips_output_heads(build, head):
    model = build()
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
    ]
    heads = [name for name in linear if name == head or name.startswith(head + ".")]
    assert heads
    assert resolve_target_modules(model, "all-linear") == [name for name in linear if name not in heads]


def test_exclude_modules_removes_matches():
    names = resolve_target_modules(_tiny_roberta_classifier(), "all-linear", exclude_modules=["key", "dense"])
    assert names and all(name.endswith((".query", ".value")) for name in names)


def test_nothing_matched_lists_the_linear_layers():
    with pytest.raises(ValueError, match=r"matched no module.*roberta\.encoder\.layer\.0\.attention\.self\.query"):
        inject(_tiny_roberta_classifier(), LoLDUConfig(rank=2, target_modules=["q_proj"]))


def test_matching_a_non_linear_module_names_it_and_its_type():
    with pytest.raises(ValueError, match=r"'roberta\.encoder\.layer\.0\.attention\.self' of type RobertaSelfAttention"):
        inject(_tiny_roberta_classifier(), LoLDUConfig(rank=2, target_modules=["self"]))


def test_diffusers_to_out_list_must_be_targeted_by_its_linear():
    with pytest.raises(ValueError, match="to_out' of type ModuleList.*to_out.0"):
        inject(_tiny_unet(), LoLDUConfig(rank=2, target_modules=["to_out"]))


def test_rank_above_the_smallest_dimension_names_module_shape_and_range_and_leaves_model_untouched():
    model = _tiny_roberta_classifier()
    with pytest.raises(
        ValueError, match=r"rank 17 .*'roberta\.encoder\.layer\.0\.attention\.self\.query'.*16 x 16.*1\.\.16"
    ):
        inject(model, LoLDUConfig(rank=17, target_modules=["query"]))
    assert not list(loldu_modules(model))
    assert all(p.requires_grad for p in model.parameters())


def test_full_rank_uses_each_matrix_smallest_dimension():
    model = inject(_tiny_roberta_classifier(), LoLDUConfig(rank="full", target_modules=["query", "intermediate.dense"]))
    ranks = {
        name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]: layer.rank for name, layer in loldu_modules(model)
    }
    assert ranks == {"self.query": 16, "intermediate.dense": 16}


def test_injecting_twice_is_refused():
    model = inject(_tiny_roberta_classifier(), LoLDUConfig(rank=2))
    with pytest.raises(ValueError, match="already has 4 LoLDU layer"):
        inject(model, LoLDUConfig(rank=2))


def test_inject_freezes_every_base_parameter():
    model = inject(_tiny_roberta_classifier(), LoLDUConfig(rank=3, scaling="fixed"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(".z") for name in trainable)
    assert len(trainable) == 4


def test_only_adapter_vectors_and_the_unfrozen_head_get_gradients_and_change():
    model = inject(_tiny_roberta_classifier(), LoLDUConfig(rank=8, alpha=8))
    model.classifier.requires_grad_(True)
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.endswith((".z", ".sigma")) or name.startswith("classifier.")
    }
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    buffers_before = {name: b.clone() for name, b in model.named_buffers()}
    # Adam moves every parameter with a non-zero gradient by about lr, however small the gradient.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    loss = nn.functional.cross_entropy(model(_ids()).logits, torch.tensor([0, 2]))
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == expected
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert changed == expected
    assert all(torch.equal(buffer, buffers_before[name]) for name, buffer in model.named_buffers())
