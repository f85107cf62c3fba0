"""A callback that records, inside one real `train(cfg)`, what the mixed-precision checks assert.

Used through `+callbacks.extra.gpu_probe={_target_:tests.gpu.probes.MixedPrecisionProbe}`; it writes
`<run dir>/gpu_probe.json` and the test reads it. Every comparison runs the model exactly as the
training step called it: the inputs are captured from the first training forward, and the outputs
are taken under the trainer's own precision context (Lightning's autocast), in eval mode so dropout
does not make two forwards differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from loldu_lightning.loldu import disable, enable, loldu_modules, merge, unmerge

PROBE_FILE = "gpu_probe.json"


def _detached(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.detach()
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(item) for item in value)
    return value


def _as_float32(value: Any) -> Any:
    """Floating tensors in float32 (inputs computed under autocast, e.g. a text encoder's states, are half)."""
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: _as_float32(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(item) for item in value)
    return value


def _output_tensor(output: Any) -> torch.Tensor:
    """The prediction of a transformers output (logits), a diffusers one (sample) or a plain tensor."""
    for name in ("logits", "sample"):
        if hasattr(output, name):
            return getattr(output, name)
    if torch.is_tensor(output):
        return output
    raise TypeError(f"gpu probe: cannot find the prediction in a {type(output).__name__}")


def _max_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


class MixedPrecisionProbe(L.Callback):
    """Losses, the step-0 output with the adapter on and off, merge against unmerged, and dtypes.

    ``relative_update``: after training, each z moves by seeded noise scaled so that the weight
    update it adds is this fraction of ||W0|| (Frobenius): two training steps move z too little to
    tell a wrong merge from rounding, and a fixed scale would not fit every model (much more and
    the tiny random models turn chaotic, where rounding alone changes the output wholesale). z and
    the base weights are restored exactly afterwards, so the run's files are untouched.
    ``autocast_vs_float32`` records how far the precision's own rounding moves the unmerged
    output: the scale against which a merge error is judged.
    """

    def __init__(self, relative_update: float = 0.3) -> None:
        self.relative_update = relative_update
        self.losses: list[float] = []
        self.step0: dict[str, Any] | None = None
        self.merge: dict[str, Any] | None = None
        self._inputs: tuple[tuple, dict] | None = None
        self._hook: Any = None

    # capture the first training forward's inputs ------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == 0 and self._inputs is None and self._hook is None:
            self._hook = pl_module.model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._inputs = (_detached(args), _detached(kwargs))
        self._hook.remove()
        self._hook = None

    def _predict(self, trainer: L.Trainer, model: nn.Module) -> torch.Tensor:
        args, kwargs = self._inputs
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            return _output_tensor(model(*args, **kwargs))

    # step 0: forward done, no optimizer step yet -------------------------------------------------
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self.step0 is not None or self._inputs is None:
            return
        model = pl_module.model
        was_training = model.training
        model.eval()
        adapted = self._predict(trainer, model)
        disable(model)
        base = self._predict(trainer, model)
        enable(model)
        model.train(was_training)
        self.step0 = {
            "max_abs_gap": _max_gap(adapted, base),
            "output_dtype": str(adapted.dtype),
            "output_device": str(adapted.device),
            "output_scale": float(base.float().abs().max()),
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    # after training, while the model is still on its device -------------------------------------
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        layers = [layer for _, layer in loldu_modules(model)]
        z_saved = [layer.z.detach().clone() for layer in layers]
        weights_saved = [layer.base_weight().detach().clone() for layer in layers if layer.storage != "lu"]
        was_training = model.training
        model.eval()
        self._perturb(layers, z_saved)
        disable(model)
        base = self._predict(trainer, model)
        enable(model)
        unmerged = self._predict(trainer, model)
        args, kwargs = _as_float32(self._inputs)
        with torch.no_grad():
            unmerged_float32 = _output_tensor(model(*args, **kwargs))
        merge(model)
        shifts = [
            float((layer.base_weight().float() - weight.float()).norm() / weight.float().norm())
            for layer, weight in zip((a for a in layers if a.storage != "lu"), weights_saved, strict=True)
        ]
        merged = self._predict(trainer, model)
        unmerge(model)
        restored = self._predict(trainer, model)
        with torch.no_grad():
            for layer, z in zip(layers, z_saved, strict=True):
                layer.z.copy_(z)
            for layer, weight in zip((a for a in layers if a.storage != "lu"), weights_saved, strict=True):
                layer.base_weight().copy_(weight)
        model.train(was_training)
        self.merge = {
            "merged_vs_unmerged": _max_gap(merged, unmerged),
            "unmerged_vs_base": _max_gap(unmerged, base),
            "unmerged_after_unmerge": _max_gap(restored, unmerged),
            "autocast_vs_float32": _max_gap(unmerged, unmerged_float32),
            "output_scale": float(unmerged.float().abs().max()),
            "smallest_weight_shift": min(shifts, default=0.0),
            "relative_update": self.relative_update,
            "finite": bool(torch.isfinite(merged).all() and torch.isfinite(unmerged).all()),
        }
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        record = {
            "precision": str(trainer.precision),
            "losses": self.losses,
            "step0": self.step0,
            "merge": self.merge,
            "adapter_dtypes": sorted({str(t.dtype) for layer in layers for t in (layer.z, layer.sigma, layer.c)}),
            "adapter_devices": sorted({str(layer.z.device) for layer in layers}),
            "adapted_layers": len(layers),
            "grad_scaler": None
            if scaler is None
            else {"class": type(scaler).__name__, "scale": float(scaler.get_scale())},
        }
        (Path(trainer.default_root_dir) / PROBE_FILE).write_text(json.dumps(record, indent=2))

    @torch.no_grad()
    def _perturb(self, layers: list, z_saved: list[torch.Tensor]) -> None:
        generator = torch.Generator().manual_seed(0)
        for layer, z in zip(layers, z_saved, strict=True):
            noise = torch.randn(layer.z.shape, generator=generator).to(layer.z.device)
            # the update is linear in z: measure what unit noise adds to the weight, then rescale it
            layer.z.add_(noise)
            moved = layer.delta_weight()
            layer.z.copy_(z)
            added = (moved - layer.delta_weight()).norm()
            layer.z.add_(self.relative_update * layer.base_weight().float().norm() / added.clamp_min(1e-30) * noise)
