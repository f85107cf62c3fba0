"""Shared pieces of the diffusion tests: tiny-sd overrides and tiny random CLIP / DINO-style ViT folders."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

# tiny-sd, a few steps, no periodic sampling: a full train() on 2 CPU cores in seconds
TINY_SD = [
    "task=diffusion/subject",
    "model=tiny-sd",
    "trainer=cpu",
    "adapter.rank=4",
    "adapter.alpha=4",
    "callbacks.lr_monitor=false",
    "trainer.log_every_n_steps=1",
    "sampling.num_inference_steps=2",
    "sampling.prompts=['a photo of {token} {class}','a {token} {class} in the snow']",
    "scheduler.warmup_steps=0",
]


def tiny_sd_overrides(cache: Path, subject_dir: Path, *extra: str) -> list[str]:
    return [*TINY_SD, f"model.cache_dir={cache}", f"data.instance_dir={subject_dir}", *extra]


def save_image(path: Path, color: tuple[int, int, int], size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), color)
    image.paste(tuple(255 - c for c in color), (size // 4, size // 4, size // 2, size // 2))
    image.save(path)
    return path


def tiny_clip_folder(folder: Path, tokenizer) -> Path:
    """A random CLIPModel (32 px images) + CLIPProcessor saved like openai/clip-* (for CLIP-I / CLIP-T)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


def tiny_dino_folder(folder: Path) -> Path:
    """A random ViT-S/16-shaped-in-miniature ViTModel + image processor saved like facebook/dino-vits16."""
    from transformers import ViTImageProcessor, ViTModel

    from tests.tiny_models import tiny_config

    torch.manual_seed(0)
    ViTModel(tiny_config("tiny-vit", num_attention_heads=4), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# fixtures (imported by name into the diffusion test modules) ---------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sd_cache(tmp_path_factory) -> Path:
    """A cache folder holding the tiny-sd pipeline, written once per test session."""
    from loldu_lightning.models.diffusion import tiny_sd_folder

    cache = tmp_path_factory.mktemp("sd_cache")
    tiny_sd_folder(cache_dir=cache)
    return cache


# DreamBooth's layout in miniature, for a clone without ../shared/data: the same table and prompt-list format
STANDIN_TABLE = """Classes

subject_name,class
dog,dog

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} in the snow'.format(unique_token, class_token),
]

Live Subject Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a {0} {1} in the snow'.format(unique_token, class_token),
]
"""


@pytest.fixture(scope="session")
def dog(tmp_path_factory) -> Path:
    """The real DreamBooth dog photos (../shared/data/dreambooth/dog), or five generated JPEGs in the same layout."""
    from tests.conftest import SHARED_DATA

    real = SHARED_DATA / "dreambooth" / "dog"
    if real.is_dir():
        return real
    root = tmp_path_factory.mktemp("dreambooth_standin")
    for k in range(5):
        save_image(root / "dog" / f"{k:02d}.jpg", (40 * k, 120, 200 - 40 * k), size=96)
    (root / "prompts_and_classes.txt").write_text(STANDIN_TABLE)
    return root / "dog"
