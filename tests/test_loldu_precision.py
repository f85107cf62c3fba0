"""Half-precision base models: fp32 decomposition, finite outputs, correct merge at dtype tolerance."""

import copy

import pytest
import torch

from loldu_lightning.loldu import LoLDUConfig, inject, loldu_modules, merge, unmerge
from tests.tiny_models import tiny_model

# Largest logit error allowed against the same adapted model run in float32 (logits are ~0.4;
# measured errors: fp16 ~1e-3, bf16 ~1e-2; the adapter itself moves logits by ~0.6).
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _tiny_llama(dtype: torch.dtype):
    return tiny_model(
        "tiny-llama", vocab_size=60, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=None
    ).to(dtype)


IDS = torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(3))


def _perturb(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in loldu_modules(model):
            layer.z.add_(2.0 * torch.randn(layer.z.shape, generator=generator))


@pytest.mark.parametrize("storage", ["dense", "packed", "lu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("factor_dtype", [None, "float32"])
def test_half_precision_models_adapt_merge_and_train(dtype, factor_dtype, storage):
    base = _tiny_llama(dtype)
    rank = "full" if storage == "packed" else 8  # packed holds full-rank factors only
    config = LoLDUConfig(
        rank=rank, alpha=16, init="normal", dtype=factor_dtype, target_modules=["q_proj", "v_proj"], storage=storage
    )
    model = inject(copy.deepcopy(base), config)
    layer = model.model.layers[0].self_attn.q_proj
    factor = layer.dense_factors()[0] if storage == "dense" else layer.packed
    # lu keeps float32 factors whatever the weight dtype: they are all there is of W0
    assert factor.dtype == (torch.float32 if factor_dtype or storage == "lu" else dtype)
    assert layer.z.dtype == torch.float32  # the trainable vector keeps full precision
    tolerance = TOLERANCE[dtype]

    with torch.no_grad():
        # lu computes W0 x from float32 factors: equal to the half-precision base within its rounding
        exact = 0 if storage != "lu" else tolerance
        torch.testing.assert_close(model(IDS).logits, base(IDS).logits, atol=exact, rtol=0)
        _perturb(model)
        reference = copy.deepcopy(model).float()(IDS).logits
        assert (reference - copy.deepcopy(base).float()(IDS).logits).abs().max() > 10 * tolerance
        for mode in ("factored", "merged"):
            for _, adapted in loldu_modules(model):
                adapted.forward_mode = mode
            logits = model(IDS).logits
            assert logits.dtype == dtype and torch.isfinite(logits).all()
            torch.testing.assert_close(logits.float(), reference, atol=tolerance, rtol=0)

        merge(model)
        assert model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == dtype
        torch.testing.assert_close(model(IDS).logits.float(), reference, atol=tolerance, rtol=0)
        unmerge(model)
        torch.testing.assert_close(model(IDS).logits.float(), reference, atol=tolerance, rtol=0)

    model(IDS).logits.float().logsumexp(-1).mean().backward()
    grads = [adapted.z.grad for _, adapted in loldu_modules(model)]
    assert all(grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads)


@pytest.mark.parametrize("mode", ["factored", "merged"])
def test_float32_model_under_bfloat16_autocast_trains(mode):
    model = inject(
        _tiny_llama(torch.float32),
        LoLDUConfig(rank=8, alpha=16, forward_mode=mode, target_modules=["q_proj", "v_proj"]),
    )
    _perturb(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(IDS).logits
    assert torch.isfinite(logits).all()
    logits.float().logsumexp(-1).mean().backward()
    assert all(torch.isfinite(layer.z.grad).all() and layer.z.grad.abs().sum() > 0 for _, layer in loldu_modules(model))
