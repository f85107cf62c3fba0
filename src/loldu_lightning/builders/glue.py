"""The `glue` family: a sequence classifier (or regressor) over one GLUE task's TSV files or the hub."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoModelForSequenceClassification

from ..data.glue import GlueDataModule, GlueTaskInfo, glue_task
from ..models import load_model, load_tokenizer
from ..options import GlueDataOptions, RunOptions
from ..tasks.glue import GlueTask
from .optimization import optimizer_config, scheduler_config
from .schema import run_options


def build_glue_datamodule(data: GlueDataOptions, seed: int, info: GlueTaskInfo, tokenizer) -> GlueDataModule:
    return GlueDataModule(info.name, tokenizer, data, seed=seed)


def label_options(info: GlueTaskInfo) -> dict[str, Any]:
    """What the classifier head needs to know: the label count, and names or regression."""
    labels: dict[str, Any] = {"num_labels": info.num_labels}
    if info.is_regression:
        labels["problem_type"] = "regression"
    elif info.labels:
        labels["id2label"] = dict(enumerate(info.labels))
        labels["label2id"] = {label: i for i, label in enumerate(info.labels)}
    return labels


def build_glue(cfg: Mapping[str, Any], options: RunOptions | None = None) -> tuple[GlueTask, GlueDataModule]:
    """The data is checked (missing files fail) before the model loads."""
    options = options if options is not None else run_options(cfg)
    info = glue_task(options.task.name)
    tokenizer = load_tokenizer(options.model)
    datamodule = build_glue_datamodule(options.data, options.seed, info, tokenizer)
    datamodule.check_data()
    model = load_model(options.model, AutoModelForSequenceClassification, **label_options(info))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    module = GlueTask(
        model,
        info,
        options.model.head_modules,
        optimizer_config(options),
        scheduler_config(options.scheduler),
    )
    return module, datamodule
