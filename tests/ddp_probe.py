"""Test callbacks that record, per process, what a distributed or mixed-precision run holds.

Used through `+callbacks.extra.<name>={_target_:ddp_probe.<Class>}` (tests put tests/ on PYTHONPATH
for the CLI's DDP child processes). Each rank writes its own file; the tests gather and compare them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch

from loldu_lightning.loldu import loldu_modules


def _sha256(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().to("cpu", torch.float64 if tensor.is_floating_point() else torch.int64)
                      .contiguous().numpy().tobytes())
    return digest.hexdigest()


def factor_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every LoLDU layer's frozen factors (lower, upper, perm) and c, in module order."""
    tensors = []
    for _, layer in loldu_modules(model):
        tensors += [getattr(layer, name) for name in ("lower", "upper", "perm", "c") if hasattr(layer, name)]
    assert tensors, "no LoLDU layer with factors in the model"
    return _sha256(tensors)


def trainable_fingerprint(model: torch.nn.Module) -> str:
    return _sha256(p for _, p in sorted(model.named_parameters()) if p.requires_grad)


class DistributedProbe(L.Callback):
    """Writes `<run dir>/probe/rank<global rank>-pid<pid>.json`.

    `setup` runs after the adapter callback injected LoLDU and before the strategy wraps the model in
    DDP (which would broadcast rank 0's buffers and hide a difference), so `factors` is what this
    rank's own decomposition produced.
    """

    def __init__(self) -> None:
        self.record: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.record = {"pid": os.getpid(), "global_rank": trainer.global_rank, "world_size": trainer.world_size,
                       "factors": factor_fingerprint(pl_module.model),
                       "trainable_at_setup": trainable_fingerprint(pl_module.model)}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(trainable_at_end=trainable_fingerprint(pl_module.model), global_step=trainer.global_step,
                           hydra_job=os.environ.get("LOLDU_HYDRA_JOB"))
        directory = Path(trainer.default_root_dir) / "probe"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"rank{trainer.global_rank}-pid{os.getpid()}.json").write_text(json.dumps(self.record))


class PrecisionProbe(L.Callback):
    """Records each training loss and the dtypes of every LoLDU layer's z, sigma and c after fitting."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtypes: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for _, layer in loldu_modules(pl_module.model):
            self.dtypes |= {str(layer.z.dtype), str(layer.sigma.dtype), str(layer.c.dtype)}
        (Path(trainer.default_root_dir) / "precision_probe.json").write_text(
            json.dumps({"losses": self.losses, "dtypes": sorted(self.dtypes)}))
