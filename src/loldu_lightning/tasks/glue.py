"""GLUE sequence classification / regression around AutoModelForSequenceClassification."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection, PearsonCorrCoef, SpearmanCorrCoef
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef

from ..data.glue import GlueTaskInfo
from .base import AdaptedTask


def _metric(name: str, info: GlueTaskInfo):
    classes = info.num_labels
    factories = {
        "accuracy": lambda: MulticlassAccuracy(num_classes=classes, average="micro"),
        "f1": BinaryF1Score,
        "mcc": lambda: MulticlassMatthewsCorrCoef(num_classes=classes),
        "pearson": PearsonCorrCoef,
        "spearman": SpearmanCorrCoef,
    }
    return factories[name]()


def split_prefix(split: str) -> str:
    """`validation` -> `val`, `validation_matched` -> `val_matched` (metric names like val/accuracy)."""
    return split.replace("validation", "val")


class GlueTask(AdaptedTask):
    def __init__(
        self,
        model: nn.Module,
        info: GlueTaskInfo,
        head_modules: Sequence[str],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
    ):
        super().__init__(model, head_modules, optimizer, scheduler)
        self.info = info
        self.prefixes = [split_prefix(s) for s in info.val_splits]
        self.val_metrics = nn.ModuleList(
            MetricCollection({m: _metric(m, info) for m in info.metrics}, prefix=f"{p}/") for p in self.prefixes
        )
        # The loss as a weighted mean metric, not `self.log(..., sync_dist=True)`: under DDP the ranks hold
        # different numbers of examples (data/distributed.py) and Lightning's sync_dist mean averages the
        # integer example counts with truncation (21 examples on 2 ranks: 10 instead of 10.5; measured
        # val/loss 0.727 for a true 0.692). torchmetrics sums values and weights over the ranks: exact.
        self.val_losses = nn.ModuleList(MeanMetric() for _ in self.prefixes)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["labels"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        output = self.model(**batch)
        logits = output.logits
        predictions = logits.squeeze(-1) if self.info.is_regression else logits.argmax(-1)
        self.val_metrics[dataloader_idx].update(predictions, batch["labels"])
        self.val_losses[dataloader_idx].update(output.loss, weight=batch["labels"].shape[0])

    def on_validation_epoch_end(self) -> None:
        for prefix, collection, loss in zip(self.prefixes, self.val_metrics, self.val_losses, strict=True):
            self.log_dict(collection.compute(), prog_bar=True)  # torchmetrics reduces over all ranks
            self.log(f"{prefix}/loss", loss.compute())
            collection.reset()
            loss.reset()
