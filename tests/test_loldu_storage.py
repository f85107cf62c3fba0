"""Factor storage options (dense / packed / lu) and the block-triangular products behind them.

The exactness of every storage against the dense definition (outputs, gradients, identity at
init, merge/unmerge/unload, adapter files, half precision) is tested in the existing test files,
parametrised over ``STORAGES``; this file covers what only the packed storages have.
"""

import copy

import pytest
import torch
from torch import nn

from loldu_lightning.adapters import build_adapter
from loldu_lightning.loldu import (
    LoLDUConfig,
    LoLDULinear,
    inject,
    ldu_decompose,
    ldu_decompose_packed,
    loldu_modules,
    merge,
    packed_function,
    triangular,
    unload,
)
from loldu_lightning.loldu.forward_cost import choose_packed_path, triangular_build_macs, triangular_product_macs
from loldu_lightning.loldu.packed_function import packed_linear

SHAPES = [(9, 9), (13, 6), (5, 11), (40, 40)]


def _packed(shape, seed=0):
    """(packed, L (m x k), U (k x n)) of a random float64 matrix, L unit lower, U upper."""
    m, n = shape
    weight = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    packed, _ = torch.linalg.lu_factor(weight)
    k = min(m, n)
    return packed, torch.tril(packed[:, :k], -1) + torch.eye(m, k, dtype=packed.dtype), torch.triu(packed[:k])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block", [None, 1, 4, 1000])
def test_block_triangular_products_equal_the_dense_products(shape, block):
    packed, lower, upper = _packed(shape)
    m, n = shape
    generator = torch.Generator().manual_seed(1)

    def rand(*size):
        return torch.randn(*size, dtype=torch.float64, generator=generator)

    for c in sorted({1, min(shape) // 2, min(shape)}):
        x, s, g, v, gram = rand(n, 3), rand(c, 3), rand(m, 3), rand(c), rand(m, n)
        torch.testing.assert_close(triangular.upper_mm(packed, x, c, block), upper[:c] @ x)
        torch.testing.assert_close(triangular.lower_mm(packed, s, c, block), lower[:, :c] @ s)
        torch.testing.assert_close(triangular.lower_t_mm(packed, g, c, block), lower[:, :c].t() @ g)
        torch.testing.assert_close(triangular.upper_t_mm(packed, s, c, block), upper[:c].t() @ s)
        torch.testing.assert_close(triangular.lower_scaled_upper(packed, v, block), (lower[:, :c] * v) @ upper[:c])
        torch.testing.assert_close(
            triangular.diag_of_lower_t_gram_upper(packed, gram, c, block),
            ((lower[:, :c].t() @ gram) * upper[:c]).sum(1),
        )


def test_products_accept_a_token_major_input_as_a_transposed_view():
    packed, _, upper = _packed((24, 24))
    x = torch.randn(7, 24, dtype=torch.float64)
    torch.testing.assert_close(triangular.upper_mm(packed, x.t(), 24, 5), upper @ x.t())


@pytest.mark.parametrize("kind", ["random", "zero_row", "rank_deficient"])
@pytest.mark.parametrize("shape", [(10, 10), (14, 8), (8, 14)])
def test_packed_decomposition_reconstructs_the_weight_and_agrees_with_the_dense_one(kind, shape):
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    if kind == "zero_row":
        weight[2] = 0
    if kind == "rank_deficient":
        weight = torch.randn(shape[0], 3) @ torch.randn(3, shape[1])
    packed = ldu_decompose_packed(weight)
    dense = ldu_decompose(weight)
    assert torch.isfinite(packed.packed).all() and packed.zero_pivots == dense.zero_pivots
    torch.testing.assert_close(packed.reconstruct(), weight, atol=1e-5, rtol=1e-5)
    k = min(shape)
    lower = torch.tril(packed.packed[:, :k], -1) + torch.eye(shape[0], k)
    torch.testing.assert_close(lower[packed.perm], dense.lower)
    torch.testing.assert_close(torch.triu(packed.packed[:k]), dense.upper)
    torch.testing.assert_close(packed.diag, dense.diag)


@pytest.mark.parametrize("path", ["factored", "merged"])
@pytest.mark.parametrize(("storage", "shape"), [("packed", (5, 5)), ("packed", (6, 4)), ("lu", (4, 6)), ("lu", (5, 5))])
@pytest.mark.parametrize("formulas", [True, False])
def test_packed_function_passes_gradcheck(monkeypatch, path, storage, shape, formulas):
    """Every backward formula (rebuild vs thin products, gram vs per token) against finite differences."""
    monkeypatch.setattr(packed_function, "recompute_packed_weight_for_input_grad", lambda *args: formulas)
    monkeypatch.setattr(packed_function, "packed_gram_for_scale_grad", lambda *args: formulas)
    m, n = shape
    generator = torch.Generator().manual_seed(0)
    packed, pivots = torch.linalg.lu_factor(torch.randn(m, n, dtype=torch.float64, generator=generator))
    perm = torch.randperm(m, generator=generator)
    k = min(m, n)
    r = k if storage == "packed" else k - 1

    def tensor(*size):
        return torch.randn(*size, dtype=torch.float64, generator=generator, requires_grad=True)

    x, scale, bias = tensor(2, 3, n), tensor(r), tensor(m)
    weight = tensor(m, n) if storage == "packed" and path == "merged" else None
    diag = torch.rand(k, dtype=torch.float64, generator=generator) + 0.5 if storage == "lu" else None
    inputs = (x, scale, bias) if weight is None else (x, scale, bias, weight)

    def function(x, scale, bias, weight=None):
        return packed_linear(x, scale, weight, bias, packed, perm, torch.argsort(perm), diag, path, torch.float64)

    assert torch.autograd.gradcheck(function, inputs)


def test_packed_storage_needs_full_rank_and_names_the_module():
    with pytest.raises(ValueError, match=r"storage 'packed'.*full rank 8.*'q'.*rank 4.*'dense'.*'lu'"):
        LoLDULinear(nn.Linear(8, 8), LoLDUConfig(rank=4, storage="packed"), name="q")


def test_unknown_storage_and_half_precision_lu_are_config_errors():
    with pytest.raises(ValueError, match="unknown storage 'compact'; allowed values: dense, packed, lu"):
        LoLDUConfig(rank=4, storage="compact")
    with pytest.raises(ValueError, match="storage 'lu'.*float32.*bfloat16"):
        LoLDUConfig(rank=4, storage="lu", dtype="bfloat16")
    adapter = build_adapter({"name": "loldu", "rank": 4, "storage": "lu", "target_modules": ["query"]})
    assert adapter.options.storage == "lu"
    with pytest.raises(ValueError, match="unknown storage 'triangular'"):
        build_adapter({"name": "loldu", "rank": 4, "storage": "triangular", "target_modules": ["query"]})


def test_lu_storage_releases_w0_and_keeps_one_m_by_n_matrix():
    torch.manual_seed(0)
    base = nn.Linear(16, 24)
    original = base.weight.detach().clone()
    layer = LoLDULinear(base, LoLDUConfig(rank=6, storage="lu"), name="q")
    assert base.weight is None and "base_layer.weight" not in layer.state_dict()
    buffers = {name.removeprefix("factor_storage."): tuple(b.shape) for name, b in layer.named_buffers()}
    assert buffers["packed"] == (24, 16) and buffers["diag"] == (16,) and "lower" not in buffers
    torch.testing.assert_close(layer.base_weight(), original, atol=1e-6, rtol=0)
    layer.merge()
    assert base.weight.shape == (24, 16) and not base.weight.requires_grad
    layer.unmerge()
    assert base.weight is None


def test_lu_storage_fingerprints_the_original_weight():
    torch.manual_seed(0)
    weight_layer = nn.Linear(12, 12)
    dense = LoLDULinear(copy.deepcopy(weight_layer), LoLDUConfig(rank=4), name="q")
    lu = LoLDULinear(copy.deepcopy(weight_layer), LoLDUConfig(rank=4, storage="lu"), name="q")
    assert lu.base_fingerprint() == dense.base_fingerprint()


def test_a_failed_lu_injection_gives_every_weight_back():
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3))
    weights = [layer.weight for layer in model]
    with pytest.raises(ValueError, match="rank 5 is out of range"):
        inject(model, LoLDUConfig(rank=5, storage="lu", target_modules=["0", "1"]))
    assert [layer.weight for layer in model] == weights and all(w.requires_grad for w in weights)


def test_lu_storage_wraps_gpt2_conv1d_layers():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16)
    ).eval()
    ids = torch.randint(0, 50, (2, 5))
    model = inject(copy.deepcopy(base), LoLDUConfig(rank=8, init="normal", storage="lu", target_modules=["c_attn"]))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-4, rtol=0)
        for _, layer in loldu_modules(model):
            layer.z.add_(1.0)
        adapted = model(ids).logits
        unload(model, merge=True)
        assert model.transformer.h[0].attn.c_attn.weight.shape == base.transformer.h[0].attn.c_attn.weight.shape
        torch.testing.assert_close(model(ids).logits, adapted, atol=1e-4, rtol=0)


def test_auto_picks_the_cheaper_path_by_the_triangular_cost_model():
    assert choose_packed_path(768, 768, 768, tokens=8, needs_grad=True, full=False) == "factored"
    assert choose_packed_path(768, 768, 768, tokens=8192, needs_grad=True, full=False) == "merged"
    layer = LoLDULinear(nn.Linear(64, 64), LoLDUConfig(rank="full", storage="packed"), name="q")
    assert layer.forward_path(torch.randn(2, 64)) == "factored"
    assert layer.forward_path(torch.randn(4096, 64)) == "merged"
    # lu: the triangular products replace W0's own product at the same flops, so factored always wins
    for tokens in (8, 8192, 10**6):
        assert choose_packed_path(768, 768, 768, tokens=tokens, needs_grad=True, full=True) == "factored"


def test_triangular_cost_counts_the_nonzeros():
    m, n, c = 7, 5, 4
    _, lower, upper = _packed((m, n))
    nonzeros = int((lower[:, :c] != 0).sum() + (upper[:c] != 0).sum())
    assert triangular_product_macs(m, n, c) == nonzeros
    assert triangular_build_macs(m, n, c) == sum((m - k) * (n - k) for k in range(c))


def test_merged_lu_model_unloads_to_plain_layers_with_the_adapted_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 4))
    inject(model, LoLDUConfig(rank=5, init="normal", storage="lu", target_modules=["0"]))
    with torch.no_grad():
        model[0].z.mul_(3)
        x = torch.randn(3, 10)
        adapted = model(x)
        merge(model)
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)
    unload(model)
    assert type(model[0]) is nn.Linear
    torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)
