"""Image classification with ViTForImageClassification (the paper's ViT transfer, Table IX).

The model is built through AutoModelForImageClassification, which gives ViTForImageClassification
for ViT configs and checkpoints (and also accepts a bare ViTModel backbone such as the in21k one).
The backbone is adapted (LoLDU, LoRA, ...) by the adapter callback; the classifier head is a fresh
linear layer sized to the dataset and trained fully.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .base import AdaptedTask


class VisionClassificationTask(AdaptedTask):
    """Cross-entropy training (the model computes it from ``labels``) and top-1 accuracy."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        head_modules: Sequence[str],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
    ):
        super().__init__(model, head_modules, optimizer, scheduler)
        self.num_classes = num_classes
        self.train_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        # a weighted mean metric (torchmetrics sums values and weights over DDP ranks): exact when the
        # ranks hold different numbers of images, where Lightning's sync_dist mean is not (tasks/glue.py)
        self.val_loss = MeanMetric()
        # the one evaluation of task.test_split after training (train.py), kept apart from validation
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_loss = MeanMetric()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        output = self.model(**batch)
        self.check_finite(output.loss)
        size = batch["labels"].shape[0]
        self.train_accuracy(output.logits.argmax(-1), batch["labels"])
        self.log("train/loss", output.loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", self.train_accuracy, on_step=False, on_epoch=True, batch_size=size)
        return output.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self.model(**batch)
        size = batch["labels"].shape[0]
        self.val_accuracy(output.logits.argmax(-1), batch["labels"])
        self.val_loss.update(output.loss, weight=size)
        self.log("val/loss", self.val_loss, batch_size=size)
        self.log("val/accuracy", self.val_accuracy, prog_bar=True, batch_size=size)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        output = self.model(**batch)
        size = batch["labels"].shape[0]
        self.test_accuracy(output.logits.argmax(-1), batch["labels"])
        self.test_loss.update(output.loss, weight=size)
        self.log("test/loss", self.test_loss, batch_size=size)
        self.log("test/accuracy", self.test_accuracy, batch_size=size)
