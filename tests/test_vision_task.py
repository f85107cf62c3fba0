"""The vision task family through the packaged configs: composition, model building, training."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from transformers import ViTImageProcessor, ViTModel

from loldu_lightning.builders.vision import build_vision
from loldu_lightning.cli.config import validate_config
from loldu_lightning.train import train
from tests.helpers import compose_config, list_config_options
from tests.test_vision_data import fake_cifar, fake_imagefolder
from tests.tiny_models import tiny_config

VISION_TASKS = [name for name in list_config_options("task") if name.startswith("vision/")]
PAPER_DATASETS = ["cifar10", "cifar100", "eurosat", "stanford_cars", "flowers102", "fgvc_aircraft"]
TINY_VIT = ["model=tiny-vit", "trainer=cpu", "callbacks.lr_monitor=false"]


def test_every_torchvision_dataset_and_imagefolder_has_a_task_config() -> None:
    assert sorted(VISION_TASKS) == sorted(f"vision/{name}" for name in [*PAPER_DATASETS, "imagefolder"])


@pytest.mark.parametrize("task", VISION_TASKS)
def test_vision_tasks_compose_and_validate(task: str) -> None:
    cfg = compose_config([f"task={task}", *TINY_VIT])
    validate_config(cfg)
    assert cfg.task.family == "vision" and f"vision/{cfg.task.name}" == task
    assert (cfg.task.monitor, cfg.task.mode) == ("val/accuracy", "max")
    assert cfg.data.root is None and cfg.data.download is False and cfg.data.image_size is None


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_vit_paper_hyperparameters_are_encoded(dataset: str) -> None:
    cfg = compose_config([f"experiment=paper/vit_{dataset}"])
    assert cfg.task.name == dataset and cfg.model.name_or_path == "google/vit-base-patch16-224-in21k"
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.data.batch_size) == ("adamw", 3e-3, 128)
    assert cfg.trainer.max_epochs == 10
    assert (cfg.scheduler.name, cfg.scheduler.warmup_steps, cfg.seed) == ("linear", 30, 42)
    assert (cfg.adapter.name, cfg.adapter.rank, cfg.adapter.alpha) == ("loldu", 768, 768)
    assert {"query", "value"} <= set(cfg.adapter.target_modules) and cfg.trainer.precision == "bf16-mixed"


def test_build_vision_sizes_a_fresh_head_to_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classes = fake_cifar(tmp_path, monkeypatch, hundred=False)
    cfg = compose_config(["task=vision/cifar10", *TINY_VIT, f"data.root={tmp_path}", "data.batch_size=4"])
    module, datamodule = build_vision(cfg)
    assert datamodule.image_size == 32  # follows tiny-vit's image_size
    assert module.model.classifier.out_features == 10 and module.model.config.id2label[3] == classes[3]
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    output = module(**batch)
    assert output.logits.shape == (4, 10) and torch.isfinite(output.loss)


def test_build_vision_loads_a_saved_backbone_with_its_preprocessing(tmp_path: Path) -> None:
    """The example's path (and the in21k checkpoint's): a headless ViTModel folder plus its processor."""
    backbone = ViTModel(tiny_config("tiny-vit", image_size=16, num_hidden_layers=1), add_pooling_layer=False)
    folder = tmp_path / "backbone"
    backbone.save_pretrained(folder)
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.2] * 3, image_std=[0.3] * 3)
    processor.save_pretrained(folder)
    fake_imagefolder(tmp_path / "images", ["ant", "bee", "cat"], ["ant", "bee", "cat"])
    cfg = compose_config(
        [
            "task=vision/imagefolder",
            "model=vit-base-in21k",
            f"model.name_or_path={folder}",
            f"data.root={tmp_path / 'images'}",
            "trainer=cpu",
        ]
    )
    module, datamodule = build_vision(cfg)
    assert (datamodule.image_size, datamodule.mean, datamodule.std) == (16, (0.2,) * 3, (0.3,) * 3)
    assert module.model.classifier.out_features == 3
    loaded = dict(module.model.vit.named_parameters())
    for name, parameter in backbone.named_parameters():
        assert torch.equal(loaded[name], parameter), name


def test_missing_dataset_is_reported_before_the_model_loads(tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "experiment=paper/vit_flowers102",
            "trainer=cpu",
            f"data.root={tmp_path}",
            "model.name_or_path=/nonexistent/vit",
        ]
    )
    with pytest.raises(FileNotFoundError, match="flowers-102"):
        build_vision(cfg)


def _logged_train_losses(output_dir: Path) -> list[float]:
    (metrics_file,) = output_dir.glob("logs/**/metrics.csv")
    with open(metrics_file) as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


@pytest.mark.parametrize("adapter", ["loldu", "lora"])
def test_tiny_vit_learns_on_real_cifar10_subset(image_folder_root: Path, tmp_path: Path, adapter: str) -> None:
    overrides = [
        "task=vision/imagefolder",
        f"data.root={image_folder_root}",
        f"adapter={adapter}",
        *TINY_VIT,
        "trainer.max_epochs=3",
        "trainer.log_every_n_steps=1",
        "data.train_limit=256",
        "data.val_limit=64",
        "data.batch_size=32",
        "data.augment=false",
        "optimizer.lr=1e-2",
    ]
    result = train(compose_config(overrides, tmp_path))
    assert result["status"] == "completed" and 0.0 <= result["objective"] <= 1.0
    if adapter == "loldu":
        # 2 layers x (query, value) x (rank 32 + sigma), and the 10-class head of the 32-wide model
        assert (result["params"]["adapter"], result["params"]["head"]) == (2 * 2 * 33, 32 * 10 + 10)
    losses = _logged_train_losses(tmp_path)
    assert len(losses) == 24  # 3 epochs x 8 steps
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < first - 0.1, f"training loss did not fall: first steps {first:.3f}, last steps {last:.3f}"
