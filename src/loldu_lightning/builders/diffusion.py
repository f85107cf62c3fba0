"""The `diffusion` family: subject photos checked first, then the model loads and the targets are checked.

The steps, in the order a run takes them (each fails before the next, slower one starts): the
subject's photos and prompts, the sampling options, an existing class-image folder, the Stable
Diffusion parts and the adapter's targets, the class images (generated once when missing), the
sampling and export callbacks, and finally the LightningModule and the DataModule.
"""

from __future__ import annotations

import dataclasses
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
from ..models.diffusion import SDParts, load_sd_parts
from ..options import DiffusionDataOptions, DiffusionModelOptions, EvalOptions, LossOptions, RunOptions, SamplingOptions
from ..tasks.diffusion import DiffusionSubjectTask, SubjectModel
from .optimization import optimizer_config, scheduler_config
from .plain import plain
from .schema import run_options

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


def read_subject(data: DiffusionDataOptions) -> Subject:
    """The photos are listed and opened here, before any model loads."""
    instance_dir, class_name = resolve_subject(data.instance_dir, data.root, data.subject, data.class_name)
    images = list_images(instance_dir, "instance (subject photo)", "data.instance_dir")
    check_images(images)
    token = data.unique_token
    return Subject(
        instance_dir=instance_dir,
        class_name=class_name,
        images=images,
        token=token,
        instance_prompt=format_prompt(data.instance_prompt, token, class_name),
        class_prompt=format_prompt(data.class_prompt, token, class_name),
    )


def generation_options(sampling: SamplingOptions, resolution: int) -> dict[str, Any]:
    """How every image of the run is sampled (samples during training, class images, the export).
    `sampling.scheduler` is one of models.diffusion.SAMPLERS (the schema refuses any other name)."""
    return {
        "num_inference_steps": sampling.num_inference_steps,
        "guidance_scale": sampling.guidance_scale,
        "scheduler": sampling.scheduler,
        "height": resolution,
        "width": resolution,
    }


def check_class_dir(data: DiffusionDataOptions) -> None:
    """Class images the user provides are opened before the model loads (a missing folder is filled later)."""
    if not (data.with_prior_preservation and data.class_dir):
        return
    folder = Path(data.class_dir).expanduser()
    if folder.is_dir():
        check_images([p for p in folder.iterdir() if p.suffix.lower() in _CLASS_IMAGE_SUFFIXES])


def check_targets(container: nn.Module, adapter_cfg: Mapping[str, Any]) -> None:
    """A target list that matches nothing stops here, before any training, with the UNet's names.

    `adapter_cfg` is the `adapter` node as written (each adapter has options of its own; some, such
    as `full`, have no targets), so the error names the list the user gave."""
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


def load_parts(model: DiffusionModelOptions, adapter_cfg: Mapping[str, Any]) -> SDParts:
    """The pipeline's parts, the adapter's targets checked against them, gradient checkpointing on request."""
    parts = load_sd_parts(model)
    check_targets(SubjectModel(parts.unet, parts.text_encoder if model.train_text_encoder else None), adapter_cfg)
    if model.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if model.train_text_encoder:
            # transformers 5 renamed it (the old name warns)
            enable = (
                getattr(parts.text_encoder, "activation_checkpointing_enable", None)
                or parts.text_encoder.gradient_checkpointing_enable
            )
            enable()
    return parts


def class_images(
    data: DiffusionDataOptions, parts: SDParts, subject: Subject, generation: Mapping[str, Any], seed: int
) -> list[Path]:
    """Prior preservation's class images (none without it), generated once into `data.class_dir` or a cache."""
    if not data.with_prior_preservation:
        return []
    class_dir = (
        Path(data.class_dir).expanduser()
        if data.class_dir
        else default_class_dir(parts, subject.class_prompt, data.resolution)
    )
    return ensure_class_images(
        parts,
        class_dir,
        subject.class_prompt,
        data.num_class_images,
        data.resolution,
        generation,
        batch_size=data.sample_batch_size,
        seed=seed,
    )


def diffusion_callbacks(
    options: RunOptions,
    parts: SDParts,
    subject: Subject,
    generation: Mapping[str, Any],
) -> list[L.Callback]:
    """Sample grids during training (unless `sampling.enabled=false`), then the adapter and merged-UNet export."""
    sampling: SamplingOptions = options.family_groups["sampling"]
    evaluation: EvalOptions = options.family_groups["eval"]
    callbacks: list[L.Callback] = []
    if sampling.enabled:
        callbacks.append(
            SamplingCallback(
                [subject.prompt(p) for p in sampling.prompts],
                sampling.seeds,
                sampling.every_n_steps,
                at_start=sampling.at_start,
                **generation,
            )
        )
    export_info = {
        "base_model": str(parts.folder),
        "vae": options.model.vae_name_or_path,
        "instance_dir": str(subject.instance_dir),
        "class_name": subject.class_name,
        "unique_token": subject.token,
        "instance_prompt": subject.instance_prompt,
        "resolution": options.data.resolution,
        "generation": generation,
        "eval": dataclasses.asdict(evaluation),
    }
    callbacks.append(DiffusionExportCallback(export_info))
    return callbacks


def build_diffusion(
    cfg: Mapping[str, Any], options: RunOptions | None = None
) -> tuple[DiffusionSubjectTask, SubjectDataModule]:
    options = options if options is not None else run_options(cfg)
    data: DiffusionDataOptions = options.data
    loss: LossOptions = options.family_groups["loss"]
    model: DiffusionModelOptions = options.model
    adapter_cfg = plain(cfg["adapter"])  # the adapter node as written (check_targets)
    subject = read_subject(data)
    generation = generation_options(options.family_groups["sampling"], data.resolution)
    check_class_dir(data)
    parts = load_parts(model, adapter_cfg)
    prior_images = class_images(data, parts, subject, generation, options.seed)
    task = DiffusionSubjectTask(
        parts,
        model.train_text_encoder,
        optimizer_config(options),
        scheduler_config(options.scheduler),
        prior_weight=loss.prior_weight,
        val_timesteps=loss.val_timesteps,
        seed=options.seed,
        callbacks=diffusion_callbacks(options, parts, subject, generation),
    )
    datamodule = SubjectDataModule(
        subject.images,
        subject.instance_prompt,
        parts.tokenizer,
        data,
        class_images=prior_images,
        class_prompt=subject.class_prompt,
    )
    return task, datamodule
