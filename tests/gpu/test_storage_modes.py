"""Every `adapter.storage` and `forward_mode` on the device under test, for float32 and bf16 weights.

The decomposition runs on the device (inject on a model already there), the step-0 output is the
base model's, a training step gives finite float32 gradients to z on the device, the output of a
moved z matches the same adapter evaluated on the CPU in float32, and merge/unmerge keep it.
On a GPU the model is 256 wide (two 128-row blocks per triangle in the block-triangular kernels
of packed/lu); in a dry run 32 wide.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from loldu_lightning.loldu import FORWARD_MODES, STORAGES, LoLDUConfig, inject, loldu_modules, merge, unmerge
from tests.tiny_models import tiny_model

pytestmark = pytest.mark.gpu

# Largest gap relative to the logits' magnitude: against the CPU float32 evaluation, and merged vs
# unmerged (float32 on two devices: summation order only; bf16 weights: bf16 rounding of W0 + update).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _tiny_llama(hidden: int) -> transformers.LlamaForCausalLM:
    return tiny_model(
        "tiny-llama",
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("forward_mode", FORWARD_MODES)
@pytest.mark.parametrize("storage", list(STORAGES))
def test_storage_and_forward_mode_on_the_device(storage, forward_mode, dtype, device):
    hidden = 256 if device.type == "cuda" else 32
    base = _tiny_llama(hidden).to(device, dtype)
    rank = "full" if storage == "packed" else hidden // 4  # packed keeps full-rank factors only
    config = LoLDUConfig(
        rank=rank,
        alpha=16,
        init="normal",
        storage=storage,
        forward_mode=forward_mode,
        target_modules=["q_proj", "v_proj"],
    )
    model = inject(copy.deepcopy(base), config)  # decomposes on the device
    layers = [layer for _, layer in loldu_modules(model)]
    assert len(layers) == 4 and all(layer.perm.device.type == device.type for layer in layers)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1)).to(device)
    tolerance = TOLERANCE[dtype]

    with torch.no_grad():
        base_logits, logits = base(ids).logits, model(ids).logits
    scale = float(base_logits.float().abs().max())
    # lu rebuilds W0 x from float32 factors: equal to the base within its rounding; the others exactly
    assert _gap(logits, base_logits) <= (tolerance * scale if storage == "lu" else 0.0)

    model(ids).logits.float().logsumexp(-1).mean().backward()
    for layer in layers:
        grad = layer.z.grad
        assert grad is not None and grad.dtype == torch.float32 and grad.device.type == device.type
        assert torch.isfinite(grad).all()
    assert any(layer.z.grad.abs().sum() > 0 for layer in layers)

    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in layers:
            layer.z.mul_(1 + 0.5 * torch.randn(layer.z.shape, generator=generator).to(device))
        moved = model(ids).logits
        on_cpu = copy.deepcopy(model).to("cpu", torch.float32)(ids.cpu()).logits
        assert _gap(moved, base_logits) > tolerance * scale, "moving z did not change the output"
        assert _gap(moved, on_cpu) <= tolerance * scale, "the device's output differs from the CPU's"
        merge(model)
        assert _gap(model(ids).logits, moved) <= tolerance * scale
        unmerge(model)
        assert _gap(model(ids).logits, moved) <= tolerance * scale
