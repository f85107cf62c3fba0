"""Class images for prior preservation: generated once with the frozen Stable Diffusion pipeline and cached.

DreamBooth's prior-preservation loss needs a few hundred images of the subject's class
(`a photo of dog`). They depend only on the base model, the resolution and the prompt, so they are
cached per (model folder, resolution, prompt) and every run on that model shares them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..models.diffusion import SDParts, cache_root, make_pipeline, sampling_scheduler

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60]


def default_class_dir(parts: SDParts, class_prompt: str, resolution: int) -> Path:
    """Generated class images are cached per (model folder, resolution, prompt), so runs share them."""
    key = hashlib.sha256(f"{parts.folder.resolve()}|{resolution}".encode()).hexdigest()[:10]
    return cache_root() / "class_images" / f"{parts.folder.name}-{resolution}px-{key}" / _slug(class_prompt)


def ensure_class_images(
    parts: SDParts,
    class_dir: Path,
    class_prompt: str,
    count: int,
    resolution: int,
    generation: Mapping[str, Any],
    batch_size: int = 4,
    seed: int = 0,
) -> list[Path]:
    """Generate the missing class images once with the frozen pipeline; return `count` image paths."""
    class_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    missing = count - len(existing)
    if missing > 0:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        log.info("Generating %d class images for %r into %s", missing, class_prompt, class_dir)
        pipeline = make_pipeline(
            parts.unet,
            parts.vae,
            parts.text_encoder,
            parts.tokenizer,
            sampling_scheduler(generation.get("scheduler", "dpm"), parts.noise_scheduler),
        )
        # the weights stay float32 (casting them to fp16 and back would round the base model that trains next);
        # autocast gives the fp16 speed on a GPU
        pipeline.to(device)
        autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else nullcontext()
        start = len(existing)
        for first in range(start, count, batch_size):
            indices = range(first, min(first + batch_size, count))
            generators = [torch.Generator().manual_seed(seed + i) for i in indices]
            with autocast, torch.no_grad():
                images = pipeline(
                    [class_prompt] * len(indices),
                    height=resolution,
                    width=resolution,
                    num_inference_steps=int(generation.get("num_inference_steps", 25)),
                    guidance_scale=float(generation.get("guidance_scale", 7.5)),
                    generator=generators,
                ).images
            for index, image in zip(indices, images, strict=True):
                image.save(class_dir / f"class_{index:05d}.png")
        pipeline.to("cpu")
        existing = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return existing[:count]
