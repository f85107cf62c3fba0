"""The `diffusion` family: subject photos checked first, then the model loads and the targets are checked.

The steps, in the order a run takes them (each fails before the next, slower one starts): the
subject's photos and prompts, the sampling options, an existing class-image folder, the Stable
Diffusion parts and the adapter's targets, the class images (generated once when missing), the
sampling and export callbacks, and finally the LightningModule and the DataModule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn

from ..callbacks.sampling import DiffusionExportCallback, SamplingCallback
from ..data.class_images import default_class_dir, ensure_class_images
from ..data.diffusion import SubjectDataModule, check_images, format_prompt, list_images, resolve_subject
from ..loldu import resolve_target_modules
from ..sd_models import SAMPLERS, SDParts, load_sd_parts
from ..tasks.diffusion import DiffusionSubjectTask, SubjectModel
from .plain import plain

# Stable Diffusion's attention projections (to_out is a ModuleList: its Linear is to_out.0)
SD_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
_CLASS_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Subject:
    """The subject's photos and the two prompts, with `{token}` and `{class}` filled in."""

    instance_dir: Path
    class_name: str
    images: list[Path]
    token: str
    instance_prompt: str
    class_prompt: str

    def prompt(self, template: str) -> str:
        return format_prompt(template, self.token, self.class_name)


def read_subject(data: Mapping[str, Any]) -> Subject:
    """The photos are listed and opened here, before any model loads."""
    instance_dir, class_name = resolve_subject(
        data.get("instance_dir"), data.get("root"), data.get("subject"), data.get("class_name")
    )
    images = list_images(instance_dir, "instance (subject photo)", "data.instance_dir")
    check_images(images)
    token = str(data["unique_token"])
    return Subject(
        instance_dir=instance_dir,
        class_name=class_name,
        images=images,
        token=token,
        instance_prompt=format_prompt(data["instance_prompt"], token, class_name),
        class_prompt=format_prompt(data["class_prompt"], token, class_name),
    )


def generation_options(sampling: Mapping[str, Any], resolution: int) -> dict[str, Any]:
    """How every image of the run is sampled (samples during training, class images, the export)."""
    if sampling.get("scheduler") not in SAMPLERS:
        raise ValueError(
            f"sampling.scheduler={sampling.get('scheduler')!r} is not known; choose one of {list(SAMPLERS)}."
        )
    return {
        "num_inference_steps": int(sampling["num_inference_steps"]),
        "guidance_scale": float(sampling["guidance_scale"]),
        "scheduler": sampling["scheduler"],
        "height": resolution,
        "width": resolution,
    }


def check_class_dir(data: Mapping[str, Any]) -> None:
    """Class images the user provides are opened before the model loads (a missing folder is filled later)."""
    if not (data["with_prior_preservation"] and data.get("class_dir")):
        return
    folder = Path(str(data["class_dir"])).expanduser()
    if folder.is_dir():
        check_images([p for p in folder.iterdir() if p.suffix.lower() in _CLASS_IMAGE_SUFFIXES])


def check_targets(container: nn.Module, adapter_cfg: Mapping[str, Any]) -> None:
    """A target list that matches nothing stops here, before any training, with the UNet's names."""
    targets = adapter_cfg.get("target_modules")
    if targets is None:
        return
    try:
        resolve_target_modules(container, targets)
    except ValueError as error:
        raise ValueError(
            f"adapter.target_modules={targets} does not fit the Stable Diffusion UNet: {error}. Its attention "
            f"projections are {','.join(SD_ATTENTION_TARGETS)}: set adapter.target_modules=[{','.join(SD_ATTENTION_TARGETS)}]."
        ) from None


def trains_text_encoder(model_cfg: Mapping[str, Any]) -> bool:
    return bool(model_cfg.get("train_text_encoder", False))


def load_parts(model_cfg: Mapping[str, Any], adapter_cfg: Mapping[str, Any]) -> SDParts:
    """The pipeline's parts, the adapter's targets checked against them, gradient checkpointing on request."""
    parts = load_sd_parts(model_cfg)
    train_text_encoder = trains_text_encoder(model_cfg)
    check_targets(SubjectModel(parts.unet, parts.text_encoder if train_text_encoder else None), adapter_cfg)
    if model_cfg.get("gradient_checkpointing"):
        parts.unet.enable_gradient_checkpointing()
        if train_text_encoder:
            # transformers 5 renamed it (the old name warns)
            enable = (
                getattr(parts.text_encoder, "activation_checkpointing_enable", None)
                or parts.text_encoder.gradient_checkpointing_enable
            )
            enable()
    return parts


def class_images(
    data: Mapping[str, Any], parts: SDParts, subject: Subject, generation: Mapping[str, Any], seed: int
) -> list[Path]:
    """Prior preservation's class images (none without it), generated once into `data.class_dir` or a cache."""
    if not data["with_prior_preservation"]:
        return []
    resolution = int(data["resolution"])
    class_dir = (
        Path(str(data["class_dir"])).expanduser()
        if data.get("class_dir")
        else default_class_dir(parts, subject.class_prompt, resolution)
    )
    return ensure_class_images(
        parts,
        class_dir,
        subject.class_prompt,
        int(data["num_class_images"]),
        resolution,
        generation,
        batch_size=int(data["sample_batch_size"]),
        seed=seed,
    )


def diffusion_callbacks(
    config: Mapping[str, Any], parts: SDParts, subject: Subject, generation: Mapping[str, Any]
) -> list[L.Callback]:
    """Sample grids during training (unless `sampling.enabled=false`), then the adapter and merged-UNet export."""
    sampling = config["sampling"]
    callbacks: list[L.Callback] = []
    if sampling.get("enabled", True):
        callbacks.append(
            SamplingCallback(
                [subject.prompt(p) for p in sampling["prompts"]],
                sampling["seeds"],
                int(sampling["every_n_steps"]),
                at_start=bool(sampling.get("at_start", True)),
                **generation,
            )
        )
    export_info = {
        "base_model": str(parts.folder),
        "vae": config["model"].get("vae_name_or_path"),
        "instance_dir": str(subject.instance_dir),
        "class_name": subject.class_name,
        "unique_token": subject.token,
        "instance_prompt": subject.instance_prompt,
        "resolution": int(config["data"]["resolution"]),
        "generation": generation,
        "eval": config.get("eval") or {},
    }
    callbacks.append(DiffusionExportCallback(export_info))
    return callbacks


def build_diffusion(cfg: Mapping[str, Any]) -> tuple[DiffusionSubjectTask, SubjectDataModule]:
    config = plain(cfg)
    data, model_cfg = config["data"], config["model"]
    subject = read_subject(data)
    resolution = int(data["resolution"])
    generation = generation_options(config["sampling"], resolution)
    check_class_dir(data)
    parts = load_parts(model_cfg, config["adapter"])
    prior_images = class_images(data, parts, subject, generation, config["seed"])
    task = DiffusionSubjectTask(
        parts,
        trains_text_encoder(model_cfg),
        config["optimizer"],
        config["scheduler"],
        prior_weight=float(config["loss"]["prior_weight"]),
        val_timesteps=config["loss"]["val_timesteps"],
        seed=config["seed"],
        callbacks=diffusion_callbacks(config, parts, subject, generation),
    )
    datamodule = SubjectDataModule(
        subject.images,
        subject.instance_prompt,
        parts.tokenizer,
        resolution,
        batch_size=data["batch_size"],
        num_workers=data["num_workers"],
        center_crop=bool(data["center_crop"]),
        random_flip=bool(data["random_flip"]),
        class_images=prior_images,
        class_prompt=subject.class_prompt,
    )
    return task, datamodule
