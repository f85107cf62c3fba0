"""The `vision` family: ViT with a fresh `num_classes` head over a torchvision dataset or image folder.

Every value comes from the composed config (conf/vision_common.yaml and the task's file declare
them); nothing here has a default of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoModelForImageClassification

from ..data.vision import VisionDataModule, resolve_preprocessing
from ..models import load_model
from ..tasks.vision import VisionClassificationTask
from .plain import plain


def build_vision_datamodule(cfg: Mapping[str, Any]) -> VisionDataModule:
    """The data module for `task.name`, with preprocessing that follows `model`."""
    config = plain(cfg)
    data, task, model = config["data"], config["task"], config["model"]
    image_size, mean, std = resolve_preprocessing(model.get("name_or_path"), model.get("tiny"), data["image_size"])
    # task.holdout_fraction is EuroSAT's validation share, declared in its task file only (the other
    # datasets have official splits); data.holdout_fraction is the held-out share of any training split
    eurosat_split = {"holdout_fraction": task["holdout_fraction"]} if "holdout_fraction" in task else {}
    return VisionDataModule(
        task["name"],
        data["root"],
        download=data["download"],
        batch_size=data["batch_size"],
        eval_batch_size=data["eval_batch_size"],
        num_workers=data["num_workers"],
        image_size=image_size,
        mean=mean,
        std=std,
        augment=data["augment"],
        train_split=task["train_split"],
        val_split=task["val_split"],
        train_limit=data["train_limit"],
        val_limit=data["val_limit"],
        split_seed=task["split_seed"],
        limit_seed=config["seed"],
        test_split=task["test_split"],
        train_holdout=data["holdout_fraction"],
        eval_resize_crop=data["eval_resize_crop"],
        **eurosat_split,
    )


def label_options(class_names: list[str], tiny: bool) -> dict[str, Any]:
    labels: dict[str, Any] = {
        "num_labels": len(class_names),
        "id2label": dict(enumerate(class_names)),
        "label2id": {name: index for index, name in enumerate(class_names)},
    }
    if not tiny:
        # A checkpoint with another head size (ImageNet-1k, or none as in the in21k backbone)
        # gets a freshly initialised classifier instead of a size-mismatch error.
        labels["ignore_mismatched_sizes"] = True
    return labels


def build_vision(cfg: Mapping[str, Any]) -> tuple[VisionClassificationTask, VisionDataModule]:
    """The class names are read (the dataset's layout checked) before the model loads."""
    config = plain(cfg)
    datamodule = build_vision_datamodule(config)
    if datamodule.download:
        datamodule.prepare_data()  # the class names below need the files
    class_names = datamodule.class_names
    model_cfg = config["model"]
    model = load_model(
        model_cfg, AutoModelForImageClassification, **label_options(class_names, bool(model_cfg.get("tiny")))
    )
    module = VisionClassificationTask(
        model, len(class_names), model_cfg["head_modules"], config["optimizer"], config["scheduler"]
    )
    return module, datamodule
