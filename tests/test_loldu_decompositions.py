"""``decomposition=lu|svd|qr``: the factors, their config rules, and every architecture end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from loldu_lightning.adapters import build_adapter
from loldu_lightning.loldu import (
    ADAPTER_CONFIG_NAME,
    DECOMPOSITIONS,
    LoLDUConfig,
    LoLDULinear,
    inject,
    ldu_decompose,
    load_adapter,
    loldu_modules,
    merge,
    qr_decompose,
    save_adapter,
    svd_decompose,
    unmerge,
)
from tests.test_loldu_inject import ARCHITECTURES

DECOMPOSE = {"lu": ldu_decompose, "svd": svd_decompose, "qr": qr_decompose}
SHAPES = [(10, 10), (14, 8), (8, 14)]


def _weight(kind: str, shape: tuple[int, int]) -> torch.Tensor:
    torch.manual_seed(0)
    weight = torch.randn(*shape)
    if kind == "zero_row":
        weight[2] = 0
    if kind == "zero_column":
        weight[:, 0] = 0  # the first pivot of lu and qr is zero
    if kind == "rank_deficient":
        weight = torch.randn(shape[0], 3) @ torch.randn(3, shape[1])
    if kind == "zero":
        weight = torch.zeros(shape)
    return weight


def test_the_registry_names_the_three_and_lu_is_the_default():
    assert list(DECOMPOSITIONS) == ["lu", "svd", "qr"]
    assert LoLDUConfig(rank=4).decomposition == "lu"


@pytest.mark.parametrize("decomposition", ["svd", "qr"])
@pytest.mark.parametrize("kind", ["random", "zero_row", "zero_column", "rank_deficient", "zero"])
@pytest.mark.parametrize("shape", SHAPES)
def test_factors_are_finite_reconstruct_the_weight_and_count_tiny_pivots_like_lu(decomposition, kind, shape):
    weight = _weight(kind, shape)
    factors = DECOMPOSE[decomposition](weight)
    lu = ldu_decompose(weight)
    for tensor in (factors.lower, factors.diag, factors.upper):
        assert torch.isfinite(tensor).all()
    torch.testing.assert_close(factors.reconstruct(), weight, atol=1e-5, rtol=1e-5)
    tiny = factors.diag == 1.0
    assert int(tiny.sum()) >= factors.zero_pivots
    # A zero row (column) lowers the rank when the matrix is wide (tall) or square; qr, like lu,
    # eliminates the columns in order, so a zero first column is a zero first pivot whatever the shape.
    zero_column = 1 if decomposition == "qr" or shape[1] <= shape[0] else 0
    expected_zero = {"random": 0, "zero_row": 1 if shape[0] <= shape[1] else 0, "zero_column": zero_column}
    if kind in expected_zero:
        assert factors.zero_pivots == expected_zero[kind]
    if kind == "rank_deficient":
        # The SVD's tolerance is matrix_rank's, so it finds the rank exactly; QR's diagonal at a
        # dependent column is rounding-sized and may land on either side of the tolerance.
        assert (
            factors.zero_pivots == min(shape) - 3 if decomposition == "svd" else factors.zero_pivots <= min(shape) - 3
        )
    if kind == "zero":
        assert factors.zero_pivots == lu.zero_pivots == min(shape)
    assert torch.equal(factors.perm, torch.arange(shape[0]))  # no row permutation


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_factors_are_orthonormal_with_sorted_singular_values_and_canonical_signs(shape):
    weight = _weight("random", shape)
    factors = svd_decompose(weight, dtype=torch.float64)
    k = min(shape)
    eye = torch.eye(k, dtype=torch.float64)
    torch.testing.assert_close(factors.lower.t() @ factors.lower, eye)
    torch.testing.assert_close(factors.upper @ factors.upper.t(), eye)
    assert (factors.diag[:-1] >= factors.diag[1:]).all() and (factors.diag > 0).all()
    torch.testing.assert_close(factors.diag, torch.linalg.svdvals(weight.double()))
    largest = factors.lower.abs().argmax(dim=0)
    assert (factors.lower[largest, torch.arange(k)] > 0).all()
    flipped = svd_decompose(-weight, dtype=torch.float64)  # the same vectors up to sign: still canonical
    torch.testing.assert_close(flipped.lower, factors.lower)
    torch.testing.assert_close(flipped.upper, -factors.upper)


@pytest.mark.parametrize("shape", SHAPES)
def test_qr_factors_are_orthonormal_q_and_unit_upper_r_with_a_non_negative_diagonal(shape):
    weight = _weight("random", shape)
    factors = qr_decompose(weight, dtype=torch.float64)
    k = min(shape)
    torch.testing.assert_close(factors.lower.t() @ factors.lower, torch.eye(k, dtype=torch.float64))
    assert torch.equal(torch.tril(factors.upper, diagonal=-1), torch.zeros(k, shape[1], dtype=torch.float64))
    torch.testing.assert_close(factors.upper.diagonal(), torch.ones(k, dtype=torch.float64))
    assert (factors.diag > 0).all()
    torch.testing.assert_close(factors.diag, torch.linalg.qr(weight.double()).R.diagonal().abs())


@pytest.mark.parametrize("decomposition", ["svd", "qr"])
def test_truncation_keeps_the_first_components_and_the_requested_dtype(decomposition):
    weight = _weight("random", (12, 9))
    full = DECOMPOSE[decomposition](weight)
    truncated = DECOMPOSE[decomposition](weight, rank=4)
    torch.testing.assert_close(truncated.lower, full.lower[:, :4])
    torch.testing.assert_close(truncated.upper, full.upper[:4])
    torch.testing.assert_close(truncated.diag, full.diag[:4])
    assert DECOMPOSE[decomposition](weight, dtype=torch.float64).lower.dtype == torch.float64
    assert DECOMPOSE[decomposition](weight.bfloat16()).lower.dtype == torch.float32
    with pytest.raises(ValueError, match=rf"{decomposition}_decompose: rank must be in \[1, 9\].*got 10"):
        DECOMPOSE[decomposition](weight, rank=10)
    with pytest.raises(ValueError, match="inf or NaN"):
        DECOMPOSE[decomposition](torch.full((4, 4), float("nan")))


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_qr_and_lu_act_on_the_same_column_space_at_every_rank(rank):
    """Why qr is unpivoted: like LU with partial pivoting it eliminates W0's columns in order, so
    the first r components of both span W0's first r columns; only the factors' shape differs."""
    weight = _weight("random", (10, 8)).double()
    lu = ldu_decompose(weight, rank, torch.float64).lower
    qr = qr_decompose(weight, rank, torch.float64).lower
    columns = torch.linalg.qr(weight[:, :rank]).Q

    def projector(basis):
        q = torch.linalg.qr(basis).Q
        return q @ q.t()

    torch.testing.assert_close(projector(lu), projector(columns))
    torch.testing.assert_close(projector(qr), projector(columns))
    svd = svd_decompose(weight, rank, torch.float64).lower
    assert not torch.allclose(projector(svd), projector(columns), atol=1e-3)


def test_config_refuses_unknown_decompositions_and_storages_that_cannot_hold_them():
    with pytest.raises(ValueError, match="unknown decomposition 'cholesky'; allowed values: lu, svd, qr"):
        LoLDUConfig(rank=4, decomposition="cholesky")
    for storage in ("packed", "lu"):
        with pytest.raises(ValueError, match=rf"storage '{storage}'.*decomposition 'svd'.*storage 'dense'"):
            LoLDUConfig(rank=4, decomposition="svd", storage=storage)
    config = LoLDUConfig(rank=4, decomposition="qr")
    assert config.to_dict()["decomposition"] == "qr"
    assert LoLDUConfig.from_dict(config.to_dict()) == config
    old = {key: value for key, value in config.to_dict().items() if key != "decomposition"}
    assert LoLDUConfig.from_dict(old).decomposition == "lu"  # files written before the option are lu
    adapter = build_adapter({"name": "loldu", "rank": 4, "decomposition": "svd", "target_modules": ["query"]})
    assert adapter.options.decomposition == "svd"


@pytest.mark.parametrize("decomposition", ["svd", "qr"])
def test_layer_records_its_decomposition_and_trains_the_diagonal_as_z(decomposition):
    torch.manual_seed(0)
    linear = nn.Linear(9, 12)
    layer = LoLDULinear(copy.deepcopy(linear), LoLDUConfig(rank=5, init="ldu", decomposition=decomposition), "q")
    assert layer.decomposition == decomposition and f"decomposition={decomposition}" in repr(layer)
    factors = DECOMPOSE[decomposition](linear.weight, 5)
    torch.testing.assert_close(layer.z.detach(), factors.diag)
    torch.testing.assert_close(layer.lower, factors.lower)
    assert torch.equal(layer.perm, torch.arange(12))


@pytest.mark.parametrize("decomposition", sorted(DECOMPOSITIONS))
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_every_decomposition_on_every_architecture(architecture, decomposition, tmp_path):
    """Exact reconstruction, identity at init, only z and sigma train, merge equivalence, save/load."""
    build, targets, make_input, output_of = ARCHITECTURES[architecture]
    base = build().double()  # float64: deep random nets (the UNet's group norms) amplify float32 rounding
    x = make_input()
    x = x.double() if x.is_floating_point() else x
    with torch.no_grad():
        reference = output_of(base(x))

    full = inject(
        copy.deepcopy(base),
        LoLDUConfig(
            rank="full", init="ldu", decompose_dtype="float64", target_modules=targets, decomposition=decomposition
        ),
    )
    for name, layer in loldu_modules(full):
        lower, upper = layer.dense_factors()
        rebuilt = (lower * layer.z.detach().double()) @ upper
        torch.testing.assert_close(rebuilt, layer.base_weight(), atol=1e-6, rtol=1e-6, msg=name)

    config = LoLDUConfig(rank=4, alpha=8, init="normal", target_modules=targets, decomposition=decomposition)
    model = inject(copy.deepcopy(base), config)
    layers = dict(loldu_modules(model))
    assert layers
    with torch.no_grad():
        assert torch.equal(output_of(model(x)), reference)

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{key}" for name in layers for key in ("z", "sigma")}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    output_of(model(x)).square().mean().backward()
    assert all(layer.z.grad is not None and layer.z.grad.abs().sum() > 0 for layer in layers.values())
    optimizer.step()
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if not p.requires_grad)

    with torch.no_grad():
        adapted = output_of(model(x))
        assert not torch.allclose(adapted, reference, atol=1e-6)
        save_adapter(model, tmp_path)
        merge(model)  # the update is folded in from float32, as for every storage
        torch.testing.assert_close(output_of(model(x)), adapted, atol=1e-7, rtol=1e-5)
        unmerge(model)

    assert json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())["decomposition"] == decomposition
    fresh = load_adapter(copy.deepcopy(base), tmp_path)
    assert {layer.decomposition for _, layer in loldu_modules(fresh)} == {decomposition}
    with torch.no_grad():
        torch.testing.assert_close(output_of(fresh(x)), adapted, atol=1e-9, rtol=1e-9)


def _saved(tmp_path, decomposition: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    base = copy.deepcopy(model)
    inject(model, LoLDUConfig(rank=3, init="normal", target_modules=["0"], decomposition=decomposition))
    save_adapter(model, tmp_path)
    return base


def test_loading_with_a_different_decomposition_is_refused_and_names_the_fix(tmp_path):
    base = _saved(tmp_path, "svd")
    with pytest.raises(
        ValueError, match=r"trained with decomposition 'svd'.*'qr' was asked.*adapter.decomposition=svd"
    ):
        load_adapter(copy.deepcopy(base), tmp_path, decomposition="qr")
    adapter = build_adapter({"name": "loldu", "rank": 3, "target_modules": ["0"]})  # decomposition lu
    untouched = copy.deepcopy(base)
    with pytest.raises(ValueError, match="trained with decomposition 'svd'"):
        adapter.load(untouched, tmp_path)
    assert not list(loldu_modules(untouched))
    loaded = build_adapter({"name": "loldu", "rank": 3, "target_modules": ["0"], "decomposition": "svd"}).load(
        copy.deepcopy(base), tmp_path
    )
    assert loaded[0].decomposition == "svd"


def test_files_written_before_the_option_load_as_lu(tmp_path):
    base = _saved(tmp_path, "lu")
    path = tmp_path / ADAPTER_CONFIG_NAME
    document = json.loads(path.read_text())
    del document["decomposition"]
    path.write_text(json.dumps(document))
    loaded = load_adapter(copy.deepcopy(base), tmp_path, decomposition="lu")
    assert loaded[0].decomposition == "lu"


def test_benchmark_section_times_every_decomposition_against_lu():
    pytest.importorskip("peft")
    from benchmarks.decompositions import decomposition_cost
    from benchmarks.shapes import QUICK

    table, targets = decomposition_cost(QUICK, warmup=0, steps=1, device=torch.device("cpu"), seed=0)
    kinds = [(row[0], row[1].split(" ")[0]) for row in table.rows]
    assert kinds == [(name, kind) for kind in ("inject", "kernel", "training") for name in DECOMPOSITIONS]
    assert [row[4] for row in table.rows if row[0] == "lu"] == ["1.00x"] * 3
    assert all(float(row[4][:-1]) > 0 for row in table.rows)
    assert [target.name.split(":")[1].split("/")[0].split()[-1] for target in targets] == ["svd", "qr"]
