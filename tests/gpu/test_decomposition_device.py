"""The LU -> LDU decomposition on the device under test against the CPU's, and run to run.

Adapter files identify the base model by each weight's fingerprint and its pivot order, and every
DDP rank decomposes on its own: both rely on the device giving the CPU's pivots and a bit-identical
result every time. Float32 weights, and bf16 weights (LLaMA's dtype) decomposed in float32.
On a GPU the shapes are the paper's (roberta-base 768, LLaMA 4096 and its 4096 x 11008 MLP
shape); in a dry run tiny ones.
"""

from __future__ import annotations

import pytest
import torch

from loldu_lightning.loldu import ldu_decompose, ldu_decompose_packed

pytestmark = pytest.mark.gpu

GPU_SHAPES = [(768, 768), (4096, 4096), (1024, 4096), (4096, 1024)]
DRY_SHAPES = [(48, 48), (32, 64), (64, 32)]
# Relative Frobenius gap allowed between the device's and the CPU's factors. Both LUs are backward
# stable, but the factors themselves are only as well determined as their conditioning allows:
# measured against a float64 LU on the CPU, float32 factors differ by 1e-5 to 3e-5 (1024^2, 2048^2)
# and U of a wide 512 x 2048 bf16 weight by 9e-4. A wrong permutation or scaling gives gaps of order 1.
FACTOR_TOLERANCE = 1e-2
RECONSTRUCTION_TOLERANCE = 1e-4


def _shapes(device: torch.device) -> list[tuple[int, int]]:
    return GPU_SHAPES if device.type == "cuda" else DRY_SHAPES


def _weight(shape: tuple[int, int], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) / shape[1] ** 0.5).to(dtype)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().norm().clamp_min(1e-30))


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> str:
    index = int((a.cpu() != b.cpu()).nonzero()[0, 0])
    return f"first at index {index}: device {int(a[index])} vs CPU {int(b[index])}"


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_dense_factors_match_the_cpu_and_repeat_exactly(device, weight_dtype):
    for shape in _shapes(device):
        weight = _weight(shape, weight_dtype)
        on_cpu = ldu_decompose(weight)
        first = ldu_decompose(weight.to(device))
        second = ldu_decompose(weight.to(device))
        where = f"{shape[0]} x {shape[1]} {weight_dtype}"
        assert first.lower.device.type == device.type and first.lower.dtype == torch.float32
        for name in ("lower", "diag", "upper", "perm"):
            assert torch.equal(getattr(first, name), getattr(second, name)), f"{where}: {name} differs run to run"
        assert torch.equal(first.perm.cpu(), on_cpu.perm), (
            f"{where}: the device pivots differently from the CPU ({_first_difference(first.perm, on_cpu.perm)}); "
            "an adapter saved on one would be refused on the other"
        )
        assert first.zero_pivots == on_cpu.zero_pivots == 0
        for name in ("lower", "diag", "upper"):
            gap = _relative(getattr(first, name), getattr(on_cpu, name))
            assert gap <= FACTOR_TOLERANCE, f"{where}: {name} differs from the CPU's by {gap:.2e} (relative)"
        gap = _relative(first.reconstruct(), weight.float())
        assert gap <= RECONSTRUCTION_TOLERANCE, f"{where}: L diag(d) U reconstructs W0 to {gap:.2e} only"


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_packed_factors_match_the_cpu_and_repeat_exactly(device, weight_dtype):
    for shape in _shapes(device):
        weight = _weight(shape, weight_dtype, seed=1)
        on_cpu = ldu_decompose_packed(weight)
        first = ldu_decompose_packed(weight.to(device))
        second = ldu_decompose_packed(weight.to(device))
        where = f"{shape[0]} x {shape[1]} {weight_dtype}"
        for name in ("packed", "diag", "perm", "tiny_pivots"):
            assert torch.equal(getattr(first, name), getattr(second, name)), f"{where}: {name} differs run to run"
        assert torch.equal(first.perm.cpu(), on_cpu.perm), f"{where}: pivots differ from the CPU's"
        for name in ("packed", "diag"):
            gap = _relative(getattr(first, name), getattr(on_cpu, name))
            assert gap <= FACTOR_TOLERANCE, f"{where}: {name} differs from the CPU's by {gap:.2e} (relative)"
        assert _relative(first.reconstruct(), weight.float()) <= RECONSTRUCTION_TOLERANCE


def test_duplicated_rows_give_the_same_zero_pivots_on_both(device):
    """Tied or duplicated rows (as in pretrained models): each duplicate eliminates to an exact zero row,
    so both devices must find the same number of zero pivots and keep every value finite."""
    n = 512 if device.type == "cuda" else 32
    generator = torch.Generator().manual_seed(2)
    half = torch.randn(n // 2, n, generator=generator) / n**0.5
    weight = torch.cat([half, half[torch.randperm(n // 2, generator=generator)]])
    on_cpu, on_device = ldu_decompose(weight), ldu_decompose(weight.to(device))
    assert on_device.zero_pivots == on_cpu.zero_pivots == n // 2
    assert all(torch.isfinite(t).all() for t in (on_device.lower, on_device.diag, on_device.upper))
    kept = n // 2  # the genuine pivots; past them the choice among zero rows is arbitrary
    gap = _relative(on_device.diag[:kept], on_cpu.diag[:kept])
    assert gap <= FACTOR_TOLERANCE, f"the {kept} genuine pivots differ from the CPU's by {gap:.2e} (relative)"
    assert _relative(on_device.reconstruct(), weight) <= RECONSTRUCTION_TOLERANCE
