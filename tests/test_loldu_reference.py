"""Every storage, forward mode and decomposition against the independent naive formulation, one layer
at a time and through inject, merge, unmerge and unload on a small model.

``benchmarks/naive_loldu.py`` rebuilds ``W = R + sigma P L_r diag(z) U_r`` densely from
``torch.linalg`` (dense permutation matrix, residual folded into the weight), sharing no code with
the library. With ``init=ldu`` both start from ``z = d``; both are then moved by the same relative
change of z and sigma. A relative change is used because the library makes the signs of the qr/svd
factors canonical and the naive code does not: flipping a component's sign flips its ``d`` too, so
``z (1 + e)`` is the same weight in both, and so is ``z * dL/dz``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmarks.naive_loldu import attach_naive_ldu
from loldu_lightning.loldu import (
    DECOMPOSITIONS,
    FORWARD_MODES,
    STORAGES,
    LoLDUConfig,
    LoLDULinear,
    inject,
    loldu_modules,
    merge,
    unload,
    unmerge,
)

SHAPES = {"square": (12, 12), "tall": (16, 9), "wide": (7, 13)}  # (out, in)
VARIANTS = [  # (decomposition, storage): svd and qr factors fit the dense storage only
    ("lu", "dense"),
    ("lu", "packed"),
    ("lu", "lu"),
    ("svd", "dense"),
    ("qr", "dense"),
]


def _pair(shape, decomposition, storage, mode):
    """(library layer, naive layer) from one float64 Linear, moved identically away from step 0."""
    out_features, in_features = shape
    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features, dtype=torch.float64)
    k = min(shape)
    rank = k if storage == "packed" else k - 2  # packed holds full-rank factors only
    config = LoLDUConfig(
        rank=rank,
        alpha=2.0 * rank,
        init="ldu",
        forward_mode=mode,
        storage=storage,
        decomposition=decomposition,
        decompose_dtype="float64",
    )
    naive = nn.Linear(in_features, out_features, dtype=torch.float64)
    naive.load_state_dict(base.state_dict())
    reference = attach_naive_ldu(naive, rank, alpha=2.0 * rank, decomposition=decomposition)
    layer = LoLDULinear(base, config, name="layer")
    change = 1 + 0.5 * torch.randn(rank, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.z.mul_(change.to(layer.z.dtype))
        reference.z.mul_(change)
        layer.sigma.mul_(1.5)
        reference.sigma.mul_(1.5)
    return layer, naive, reference


@pytest.mark.parametrize(("decomposition", "storage"), VARIANTS)
@pytest.mark.parametrize("mode", FORWARD_MODES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_outputs_and_gradients_match_the_naive_reference(decomposition, storage, mode, shape):
    layer, naive, reference = _pair(SHAPES[shape], decomposition, storage, mode)
    x = torch.randn(3, 4, layer.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.randn(3, 4, layer.out_features, dtype=torch.float64)

    x_lib = x.clone().requires_grad_(True)
    output = layer(x_lib)
    ((output - target) ** 2).sum().backward()
    x_ref = x.clone().requires_grad_(True)
    expected = naive(x_ref)
    ((expected - target) ** 2).sum().backward()

    # z is float32 in the library (its trainable vector), so agreement is to float32 rounding.
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_lib.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.sigma.grad.double().reshape(()), reference.sigma.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        (layer.z.grad * layer.z).double(), reference.z.grad * reference.z.detach(), atol=1e-4, rtol=1e-5
    )
    assert not torch.allclose(output, nn.functional.linear(x, layer.base_weight(), layer.bias), atol=1e-3)


@pytest.mark.parametrize(("decomposition", "storage"), VARIANTS)
def test_merged_weight_equals_the_naive_weight(decomposition, storage):
    layer, naive, _ = _pair(SHAPES["tall"], decomposition, storage, "auto")
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, naive.weight.detach(), atol=1e-5, rtol=1e-5)


def test_every_storage_mode_and_decomposition_is_compared_with_the_reference():
    """A storage, forward mode or decomposition added to the library must be added to VARIANTS too."""
    assert {storage for _, storage in VARIANTS} == set(STORAGES)
    assert {decomposition for decomposition, _ in VARIANTS} == set(DECOMPOSITIONS)
    assert all(storage in DECOMPOSITIONS[decomposition].storages for decomposition, storage in VARIANTS)
    assert set(FORWARD_MODES) == {"auto", "factored", "merged"}


class _Encoder(nn.Module):
    """Two adapted projections of different shapes between untouched layers, in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(10, 12, dtype=torch.float64)
        self.value = nn.Linear(12, 10, dtype=torch.float64)
        self.out = nn.Linear(10, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.value(torch.tanh(self.query(x)))))


@pytest.mark.parametrize(("decomposition", "storage"), VARIANTS)
@pytest.mark.parametrize("mode", FORWARD_MODES)
def test_injected_model_matches_the_naive_model_before_and_after_merging(decomposition, storage, mode):
    """Through `inject`, `merge`/`unmerge` and `unload`: every stage computes the naive model's outputs."""
    torch.manual_seed(0)
    model = _Encoder()
    base, naive = copy.deepcopy(model), copy.deepcopy(model)
    rank = 10 if storage == "packed" else 7  # both projections have min(m, n) = 10
    references = {
        name: attach_naive_ldu(getattr(naive, name), rank, alpha=2.0 * rank, decomposition=decomposition)
        for name in ("query", "value")
    }
    config = LoLDUConfig(
        rank=rank,
        alpha=2.0 * rank,
        init="ldu",
        target_modules=["query", "value"],
        forward_mode=mode,
        storage=storage,
        decomposition=decomposition,
        decompose_dtype="float64",
    )
    model = inject(model, config)
    layers = dict(loldu_modules(model))
    assert sorted(layers) == ["query", "value"]
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, layer in layers.items():
            change = 1 + 0.5 * torch.randn(rank, dtype=torch.float64, generator=generator)
            layer.z.mul_(change.to(layer.z.dtype))
            references[name].z.mul_(change)
            layer.sigma.mul_(0.75)
            references[name].sigma.mul_(0.75)
        x = torch.randn(5, 10, dtype=torch.float64, generator=generator)
        expected = naive(x)
        assert not torch.allclose(expected, base(x), atol=1e-3)  # the adapters moved the model
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        merge(model)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        unmerge(model)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
        plain = unload(model)
        assert not list(loldu_modules(plain)) and type(plain.query) is type(plain.value) is nn.Linear
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)
