"""LDU decomposition: exact reconstruction, the permutation as an index vector, tiny pivots."""

import pytest
import torch

from loldu_lightning.loldu import ldu_decompose


def _matrix(kind: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if kind == "square":
        return torch.randn(16, 16, generator=generator)
    if kind == "tall":
        return torch.randn(24, 10, generator=generator)
    if kind == "wide":
        return torch.randn(10, 24, generator=generator)
    if kind == "rank_deficient":
        return torch.randn(16, 3, generator=generator) @ torch.randn(3, 12, generator=generator)
    if kind == "zero_columns":
        matrix = torch.randn(12, 8, generator=generator)
        matrix[:, 5:] = 0.0
        return matrix
    if kind == "zero_row":
        matrix = torch.randn(8, 12, generator=generator)
        matrix[2] = 0.0
        return matrix
    if kind == "all_zero":
        return torch.zeros(9, 7)
    raise AssertionError(kind)


KINDS = ["square", "tall", "wide", "rank_deficient", "zero_columns", "zero_row", "all_zero"]


@pytest.mark.parametrize("kind", KINDS)
def test_full_rank_factors_reconstruct_the_weight_exactly_and_stay_finite(kind):
    weight = _matrix(kind)
    factors = ldu_decompose(weight)
    for tensor in (factors.lower, factors.diag, factors.upper):
        assert torch.isfinite(tensor).all()
    scale = max(weight.abs().max().item(), 1.0)
    torch.testing.assert_close(factors.reconstruct(), weight, atol=4e-6 * scale, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_factors_have_the_ldu_structure(kind):
    weight = _matrix(kind)
    m, n = weight.shape
    k = min(m, n)
    factors = ldu_decompose(weight)
    assert factors.lower.shape == (m, k) and factors.upper.shape == (k, n) and factors.diag.shape == (k,)
    unpermuted_lower = factors.lower[torch.argsort(factors.perm)]  # P^T (P L) = L
    assert torch.equal(torch.triu(unpermuted_lower[:k], diagonal=1), torch.zeros(k, k))
    assert torch.equal(unpermuted_lower.diagonal(), torch.ones(k))
    assert torch.equal(torch.tril(factors.upper, diagonal=-1), torch.zeros(k, n))


def test_permutation_vector_applies_the_same_permutation_as_torch_lu():
    weight = _matrix("tall")
    permutation, lower, _ = torch.linalg.lu(weight)
    factors = ldu_decompose(weight)
    assert factors.perm.dtype == torch.int64
    probe = torch.randn(weight.shape[0], 5)
    torch.testing.assert_close(permutation @ probe, probe[factors.perm])
    torch.testing.assert_close(factors.lower, permutation @ lower)


def test_upper_has_a_unit_diagonal_and_diag_holds_the_pivots():
    weight = _matrix("square")
    _, _, upper = torch.linalg.lu(weight)
    factors = ldu_decompose(weight)
    torch.testing.assert_close(factors.diag, upper.diagonal())
    torch.testing.assert_close(factors.upper.diagonal(), torch.ones(16))
    assert factors.zero_pivots == 0


@pytest.mark.parametrize(("kind", "expected"), [("all_zero", 7), ("zero_columns", 3), ("zero_row", 1)])
def test_numerically_zero_pivots_are_counted_and_get_d_equal_one(kind, expected):
    factors = ldu_decompose(_matrix(kind))
    assert factors.zero_pivots == expected
    assert int((factors.diag == 1.0).sum()) >= expected


def test_rank_deficient_matrix_flags_its_rounding_noise_pivots():
    factors = ldu_decompose(_matrix("rank_deficient"))
    assert factors.zero_pivots == 12 - 3


def test_truncation_keeps_the_leading_components():
    weight = _matrix("wide")
    full = ldu_decompose(weight)
    truncated = ldu_decompose(weight, rank=4)
    assert truncated.rank == 4
    torch.testing.assert_close(truncated.lower, full.lower[:, :4])
    torch.testing.assert_close(truncated.upper, full.upper[:4])
    torch.testing.assert_close(truncated.diag, full.diag[:4])
    assert torch.equal(truncated.perm, full.perm)


def test_float64_decomposition_is_exact_to_double_precision():
    weight = _matrix("square").double()
    factors = ldu_decompose(weight, dtype=torch.float64)
    assert factors.lower.dtype == torch.float64
    torch.testing.assert_close(factors.reconstruct(), weight, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_decomposed_in_float32(dtype):
    weight = _matrix("square").to(dtype)
    factors = ldu_decompose(weight)
    assert factors.lower.dtype == torch.float32
    torch.testing.assert_close(factors.reconstruct(), weight.float(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("rank", [0, 11])
def test_rank_outside_one_to_k_is_rejected_with_the_shape(rank):
    with pytest.raises(ValueError, match=r"\[1, 10\] for a 10 x 24 matrix"):
        ldu_decompose(_matrix("wide"), rank=rank)


def test_non_finite_weight_is_rejected():
    weight = _matrix("square")
    weight[3, 4] = float("nan")
    with pytest.raises(ValueError, match="inf or NaN"):
        ldu_decompose(weight)
