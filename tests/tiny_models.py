"""The tiny models of conf/model/tiny-*.yaml, for tests that need the model object rather than a run.

A test's tiny model is the one `model=tiny-roberta` (tiny-llama, tiny-vit) trains: its transformers
config comes from the YAML's `tiny:` block, built by the package's own `models.load_model`. A test that needs another shape passes
the fields that differ: `tiny_model("tiny-roberta", hidden_size=16, num_labels=3)`.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from omegaconf import OmegaConf
from torch import nn

from loldu_lightning.cli.overrides import model_config
from loldu_lightning.models import load_model
from loldu_lightning.options import ModelOptions

# the head each tiny model's task family puts on it (glue, instruct, vision)
AUTO_CLASSES = {
    "tiny-roberta": "AutoModelForSequenceClassification",
    "tiny-llama": "AutoModelForCausalLM",
    "tiny-vit": "AutoModelForImageClassification",
}


def tiny_fields(name: str) -> dict[str, Any]:
    """The `tiny:` block of conf/model/<name>.yaml: model_type and the config fields."""
    model = model_config(name)
    return OmegaConf.to_container(model.tiny, resolve=True)


def tiny_config(name: str, **overrides: Any) -> transformers.PretrainedConfig:
    """The transformers config of conf/model/<name>.yaml, with `overrides` replacing its fields."""
    fields = {**tiny_fields(name), **overrides}
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


def tiny_model(name: str, auto_class: type | None = None, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """A fresh tiny model in eval mode, its weights drawn after `torch.manual_seed(seed)` (the same weights on
    every call with the same arguments). `auto_class` defaults to the head of the model's task family."""
    auto_class = auto_class or getattr(transformers, AUTO_CLASSES[name])
    torch.manual_seed(seed)
    options = ModelOptions(name_or_path=name, tiny={**tiny_fields(name), **overrides})
    return load_model(options, auto_class).eval()
