"""merge / unmerge / unload / enable / disable after real training steps."""

import copy

import pytest
import torch
from torch import nn

from loldu_lightning.loldu import (
    LoLDUConfig,
    LoLDULinear,
    disable,
    enable,
    inject,
    loldu_modules,
    merge,
    unload,
    unmerge,
)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(12, 12)
        self.value = nn.Linear(12, 12)
        self.classifier = nn.Linear(12, 3)

    def forward(self, x):
        return self.classifier(torch.tanh(self.value(torch.tanh(self.query(x)))))


STORAGES = ["dense", "packed", "lu"]


def _trained(scaling: str = "learned", storage: str = "dense"):
    """A base model and a copy whose adapters took a few optimizer steps (z has moved)."""
    torch.manual_seed(0)
    base = Toy()
    rank = "full" if storage == "packed" else 8  # packed holds full-rank factors only
    model = inject(
        copy.deepcopy(base), LoLDUConfig(rank=rank, alpha=8, init="normal", scaling=scaling, storage=storage)
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    layers = dict(loldu_modules(model))
    assert all(layer.scale_vector().abs().max() > 1e-3 for layer in layers.values())  # the update is not zero
    return base, model, torch.randn(6, 12)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("scaling", ["learned", "fixed", "none"])
def test_merge_and_unmerge_reproduce_the_adapted_outputs(scaling, storage):
    base, model, x = _trained(scaling, storage)
    with torch.no_grad():
        adapted = model(x)
        original_weight = model.query.base_weight().clone()
        merge(model)
        assert all(layer.merged for _, layer in loldu_modules(model))
        assert not torch.allclose(model.query.base_layer.weight, original_weight)
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)
        unmerge(model)
        torch.testing.assert_close(model.query.base_weight(), original_weight, atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)


def test_merging_twice_warns_and_changes_nothing():
    _, model, _ = _trained()
    merge(model)
    weights = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.warns(UserWarning, match="already merged"):
        merge(model)
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("storage", STORAGES)
def test_unload_with_merge_leaves_plain_layers_computing_the_adapted_function(storage):
    _, model, x = _trained(storage=storage)
    with torch.no_grad():
        adapted = model(x)
        unload(model, merge=True)
        assert not list(loldu_modules(model))
        assert type(model.query) is nn.Linear and type(model.value) is nn.Linear
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("merged_first", [False, True])
def test_unload_without_merge_restores_the_base_model(merged_first, storage):
    base, model, x = _trained(storage=storage)
    if merged_first:
        merge(model)
    unload(model, merge=False)
    assert type(model.query) is nn.Linear
    torch.testing.assert_close(model.query.weight, base.query.weight, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("storage", STORAGES)
def test_disable_gives_exactly_the_base_output_and_enable_brings_the_adapter_back(storage):
    base, model, x = _trained(storage=storage)
    with torch.no_grad():
        adapted = model(x)
        disable(model)
        if storage == "lu":  # no W0 kept: the base output is its float32 factors' product
            torch.testing.assert_close(model(x), base(x), atol=2e-6, rtol=0)
        else:
            assert torch.equal(model(x), base(x))
        enable(model)
        assert torch.equal(model(x), adapted)


@pytest.mark.parametrize("storage", STORAGES)
def test_disabling_a_merged_model_unmerges_it_with_a_warning(storage):
    base, model, x = _trained(storage=storage)
    merge(model)
    with pytest.warns(UserWarning, match="unmerges"):
        disable(model)
    assert not any(layer.merged for _, layer in loldu_modules(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), atol=1e-6, rtol=0)


def test_after_unload_the_model_can_be_adapted_again():
    _, model, _ = _trained()
    unload(model, merge=False)
    inject(model, LoLDUConfig(rank=4))
    assert isinstance(model.query, LoLDULinear)


@pytest.mark.parametrize("operation", [merge, unmerge, unload, enable, disable])
def test_model_operations_need_adapters(operation):
    with pytest.raises(ValueError, match="no LoLDU layers"):
        operation(Toy())
