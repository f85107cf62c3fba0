"""The `vision` family: ViT with a fresh `num_classes` head over a torchvision dataset or image folder.

Every value comes from the typed options (options/ declares each default once;
conf/vision_common.yaml and the task's file set them); nothing here has a default of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoModelForImageClassification

from ..data.vision import VisionDataModule, resolve_preprocessing
from ..models import load_model
from ..options import RunOptions
from ..tasks.vision import VisionClassificationTask
from .optimization import optimizer_config, scheduler_config
from .schema import run_options


def build_vision_datamodule(options: RunOptions) -> VisionDataModule:
    """The data module for `task.name`, with preprocessing that follows `model`."""
    data, task = options.data, options.task
    image_size, mean, std = resolve_preprocessing(options.model.name_or_path, options.model.tiny, data.image_size)
    return VisionDataModule(task.name, data, task, seed=options.seed, image_size=image_size, mean=mean, std=std)


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


def build_vision(
    cfg: Mapping[str, Any], options: RunOptions | None = None
) -> tuple[VisionClassificationTask, VisionDataModule]:
    """The class names are read (the dataset's layout checked) before the model loads."""
    options = options if options is not None else run_options(cfg)
    datamodule = build_vision_datamodule(options)
    if datamodule.options.download:
        datamodule.prepare_data()  # the class names below need the files
    class_names = datamodule.class_names
    model = load_model(
        options.model, AutoModelForImageClassification, **label_options(class_names, bool(options.model.tiny))
    )
    module = VisionClassificationTask(
        model,
        len(class_names),
        options.model.head_modules,
        optimizer_config(options),
        scheduler_config(options.scheduler),
    )
    return module, datamodule
