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
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from transformers import AutoModelForImageClassification

from ..data.vision import VisionDataModule, resolve_preprocessing
from ..models import load_model
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


def build_vision_datamodule(cfg: DictConfig) -> VisionDataModule:
    """The data module for ``cfg.task.name``, with preprocessing that follows ``cfg.model``."""
    data, task, model = cfg.data, cfg.task, cfg.model
    image_size, mean, std = resolve_preprocessing(model.get("name_or_path"), model.get("tiny"), data.get("image_size"))
    return VisionDataModule(
        task.name,
        data.root,
        download=data.download,
        batch_size=data.batch_size,
        eval_batch_size=data.get("eval_batch_size"),
        num_workers=data.num_workers,
        image_size=image_size,
        mean=mean,
        std=std,
        augment=data.get("augment", True),
        train_split=task.get("train_split"),
        val_split=task.get("val_split"),
        train_limit=data.get("train_limit"),
        val_limit=data.get("val_limit"),
        holdout_fraction=task.get("holdout_fraction", 0.2),
        split_seed=task.get("split_seed", 42),
        limit_seed=cfg.seed,
        test_split=task.get("test_split"),
        train_holdout=data.get("holdout_fraction"),
        eval_resize_crop=data.get("eval_resize_crop", False),
    )


def build_vision(cfg: DictConfig) -> tuple[VisionClassificationTask, VisionDataModule]:
    """The ``vision`` task family: ViT with a fresh ``num_classes`` head over a torchvision dataset."""
    datamodule = build_vision_datamodule(cfg)
    if datamodule.download:
        datamodule.prepare_data()  # the class names below need the files
    class_names = datamodule.class_names  # fails with the expected layout before the model loads
    labels: dict[str, Any] = {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: index for index, name in enumerate(class_names)},
    }
    if not cfg.model.get("tiny"):
        # A checkpoint with another head size (ImageNet-1k, or none as in the in21k backbone)
        # gets a freshly initialised classifier instead of a size-mismatch error.
        labels["ignore_mismatched_sizes"] = True
    model = load_model(cfg.model, AutoModelForImageClassification, **labels)
    module = VisionClassificationTask(model, len(class_names), cfg.model.head_modules, cfg.optimizer, cfg.scheduler)
    return module, datamodule
