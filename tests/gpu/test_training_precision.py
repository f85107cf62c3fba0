"""bf16-mixed and fp16-mixed (GradScaler) training steps of every task family on its tiny model.

Each case is one real `train(cfg)` (trainer=gpu) with `probes.MixedPrecisionProbe` recording, inside
the fit: the losses, the step-0 output with the adapter on and off, merged against unmerged after
training, and the dtypes of z, sigma and c.
"""

from __future__ import annotations

import json
import math

import pytest

from loldu_lightning.train import train
from tests.diffusion_helpers import dog, sd_cache  # noqa: F401 (fixtures the diffusion family requests by name)
from tests.helpers import compose_config

from .families import FAMILIES, STEPS, family_overrides, trainer_overrides
from .probes import PROBE_FILE
from .runtime import autocast_dtype, require_cuda

pytestmark = pytest.mark.gpu

# Largest |merged - unmerged| output gap, relative to the output's largest magnitude, or twice the
# gap the precision's own rounding makes (unmerged under autocast vs in float32), whichever is larger:
# merging folds the update into W0 in float32 (the weights' dtype under mixed precision), while the
# unmerged path rounds its products to the autocast dtype. Measured on the CPU in bf16, relative to
# the output: tiny-roberta 0, tiny-sd 5e-3, with the autocast-vs-float32 gap 4e-3 to 2e-2.
MERGE_TOLERANCE = {"bf16-mixed": 1e-2, "16-mixed": 2e-3}


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_precision_training_step(family, precision, device, request, tmp_path):
    if precision == "16-mixed":
        # measured: Lightning 2.6 warns "AMP with fp16 is not supported on CPU" and trains in bf16 instead
        require_cuda(device, "Lightning runs precision=16-mixed (fp16 autocast + GradScaler) on CUDA only")
    overrides = [
        *family_overrides(family, request, tmp_path),
        *trainer_overrides(device, precision),
        "+callbacks.extra.gpu_probe={_target_:tests.gpu.probes.MixedPrecisionProbe}",
    ]
    result = train(compose_config(overrides, tmp_path))
    assert result["status"] == "completed", result
    probe = json.loads((tmp_path / PROBE_FILE).read_text())

    assert probe["adapter_devices"] == [str(device)], "the adapter did not train on the device under test"
    assert probe["adapted_layers"] > 0
    assert len(probe["losses"]) == STEPS and all(math.isfinite(loss) for loss in probe["losses"]), probe["losses"]
    assert probe["adapter_dtypes"] == ["torch.float32"], "z, sigma and c must stay float32 under mixed precision"

    step0 = probe["step0"]
    assert step0["output_dtype"] == str(autocast_dtype(precision)), "the forward did not run under autocast"
    # residual=init: sigma0 * z0 - c is exactly zero, so the adapter adds exactly nothing at step 0
    assert step0["max_abs_gap"] == 0.0, f"step-0 output differs from the base model's by {step0['max_abs_gap']}"

    merged = probe["merge"]
    assert merged["finite"]
    limit = max(MERGE_TOLERANCE[precision] * merged["output_scale"], 2 * merged["autocast_vs_float32"])
    assert merged["merged_vs_unmerged"] <= limit, merged
    assert merged["unmerged_after_unmerge"] <= limit, merged
    # not vacuous: merge folded the (perturbed) update into every adapted weight, and the update changes
    # the output (the tiny models' outputs can be too insensitive to ask for more than a change)
    assert merged["smallest_weight_shift"] >= 0.5 * merged["relative_update"], merged
    assert merged["unmerged_vs_base"] > 0, merged

    if precision == "16-mixed":
        scaler = probe["grad_scaler"]
        assert scaler is not None and "GradScaler" in scaler["class"] and math.isfinite(scaler["scale"]), scaler
