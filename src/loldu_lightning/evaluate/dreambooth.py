"""DreamBooth metrics of a subject run: DINO, CLIP-I and CLIP-T over K generated images per prompt.

    python -m loldu_lightning.evaluate dreambooth --run-dir outputs/diffusion/subject/<date> \
        --dino-path /path/to/dino-vits16 --clip-path /path/to/clip-vit-large-patch14

The run's `export.json` (written at the end of training) names the base pipeline folder, the merged
UNet, the subject photos, the class and the generation settings. For each prompt of DreamBooth's
list (objects or live subjects, from prompts_and_classes.txt) K images are generated with seeds
seed..seed+K-1, then
- DINO: mean cosine similarity over all (generated, real) pairs of ViT-S/16 DINO [CLS] embeddings;
- CLIP-I: the same with CLIP image embeddings;
- CLIP-T: mean cosine similarity between each image and its prompt (torchmetrics' CLIPScore / 100,
  which clamps a negative mean to 0), with the rare token removed from the prompt since CLIP does not
  know it ("a sks dog in the snow" is scored as "a dog in the snow").
`--model <pipeline folder> --instance-dir <photos> --class-name <class>` scores a base model instead
(the un-adapted reference). Results go to `<output-dir>/eval.json` under "dreambooth".
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from . import write_eval_results

log = logging.getLogger(__name__)
NAME = "dreambooth"


# metrics ----------------------------------------------------------------------------------------
def mean_pairwise_cosine(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Mean cosine similarity over every (generated, real) pair of embedding rows."""
    a = torch.nn.functional.normalize(generated.float(), dim=-1)
    b = torch.nn.functional.normalize(real.float(), dim=-1)
    return float((a @ b.T).mean())


def _features(output: Any) -> torch.Tensor:
    """CLIP's get_*_features return a tensor in transformers 4 and an output with pooler_output in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class FeatureCLIP(nn.Module):
    """A CLIPModel whose get_image_features / get_text_features return tensors (what CLIPScore expects)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _features(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _features(self.model.get_text_features(*args, **kwargs))


def _local(path: str | None, what: str, flag: str, example: str) -> Path:
    if not path:
        raise ValueError(
            f"{what} needs a local model folder: pass {flag}=/path/to/{Path(example).name} (download it once with "
            f"huggingface-cli download {example} --local-dir /path/to/{Path(example).name})."
        )
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{flag}={path!r} is not a model folder (no config.json); download {example} there.")
    return folder


def load_clip(path: str | None, device: str = "cpu") -> tuple[FeatureCLIP, Any]:
    from transformers import CLIPModel, CLIPProcessor

    folder = _local(path, "CLIP-I and CLIP-T", "--clip-path", "openai/clip-vit-large-patch14")
    return FeatureCLIP(CLIPModel.from_pretrained(str(folder)).eval().to(device)), CLIPProcessor.from_pretrained(
        str(folder)
    )


def load_dino(path: str | None, device: str = "cpu") -> tuple[nn.Module, Any]:
    from transformers import AutoImageProcessor, ViTModel

    folder = _local(path, "DINO", "--dino-path", "facebook/dino-vits16")
    return ViTModel.from_pretrained(str(folder), add_pooling_layer=False).eval().to(
        device
    ), AutoImageProcessor.from_pretrained(str(folder))


@torch.no_grad()
def dino_embeddings(
    images: Sequence[Image.Image], model: nn.Module, processor: Any, batch_size: int = 16
) -> torch.Tensor:
    """The [CLS] token of the last layer, DreamBooth's DINO embedding."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        rows.append(model(pixel_values=pixels.to(device)).last_hidden_state[:, 0].float().cpu())
    return torch.cat(rows)


@torch.no_grad()
def clip_image_embeddings(
    images: Sequence[Image.Image], model: FeatureCLIP, processor: Any, batch_size: int = 16
) -> torch.Tensor:
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(images), batch_size):
        pixels = processor(images=list(images[start : start + batch_size]), return_tensors="pt")["pixel_values"]
        rows.append(model.get_image_features(pixel_values=pixels.to(device)).float().cpu())
    return torch.cat(rows)


def _uint8(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(__import__("numpy").asarray(image.convert("RGB")).copy()).permute(2, 0, 1)


@torch.no_grad()
def clip_t(images: Sequence[Image.Image], prompts: Sequence[str], model: FeatureCLIP, processor: Any) -> float:
    """Mean image-prompt cosine similarity through torchmetrics' CLIPScore (which reports 100 x cosine)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    if len(images) != len(prompts):
        raise ValueError(f"clip_t needs one prompt per image, got {len(images)} images and {len(prompts)} prompts")
    metric = CLIPScore(model_name_or_path=lambda: (model, processor))
    for start in range(0, len(images), 16):
        metric.update([_uint8(image) for image in images[start : start + 16]], list(prompts[start : start + 16]))
    return float(metric.compute()) / 100.0


# generation -------------------------------------------------------------------------------------
def load_pipeline(base: str, unet_dir: str | None, text_encoder_dir: str | None, vae: str | None, device: str):
    """A plain diffusers pipeline: base folder + merged UNet (nothing of this project is needed to run it)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    extra: dict[str, Any] = {}
    if unet_dir:
        extra["unet"] = UNet2DConditionModel.from_pretrained(unet_dir)
    if text_encoder_dir:
        extra["text_encoder"] = CLIPTextModel.from_pretrained(text_encoder_dir)
    if vae:
        vae_path = Path(vae).expanduser()
        extra["vae"] = AutoencoderKL.from_pretrained(
            str(vae_path), subfolder="vae" if (vae_path / "vae").is_dir() else None
        )
    pipeline = StableDiffusionPipeline.from_pretrained(
        base, safety_checker=None, requires_safety_checker=False, **extra
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device, dtype)


def generate(
    pipeline,
    prompts: Sequence[str],
    num_images: int,
    seed: int,
    steps: int,
    guidance: float,
    resolution: int,
    batch_size: int = 4,
) -> list[list[Image.Image]]:
    """`num_images` images per prompt, seeds seed..seed+num_images-1 (CPU generators: device-independent)."""
    out = []
    for prompt in prompts:
        images: list[Image.Image] = []
        for first in range(0, num_images, batch_size):
            count = min(batch_size, num_images - first)
            generators = [torch.Generator().manual_seed(seed + first + i) for i in range(count)]
            images += pipeline(
                [prompt] * count,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                height=resolution,
                width=resolution,
            ).images
        out.append(images)
    return out


# the command ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", help="a finished diffusion/subject run (reads its export.json and merged_unet/)")
    parser.add_argument("--model", help="instead of a run: a diffusers pipeline folder to score as it is")
    parser.add_argument("--vae", help="with --model: a separate VAE folder (e.g. sd-vae-ft-mse)")
    parser.add_argument("--instance-dir", help="the subject photos (default: the run's)")
    parser.add_argument("--class-name", help="the subject's class (default: the run's)")
    parser.add_argument("--token", default=None, help="the rare token (default: the run's, else sks)")
    parser.add_argument("--dino-path", help="local folder of facebook/dino-vits16 (default: the run's eval.dino_path)")
    parser.add_argument("--clip-path", help="local folder of a CLIP model (default: the run's eval.clip_path)")
    parser.add_argument(
        "--prompts-file", help="DreamBooth's prompts_and_classes.txt (default: beside the subject folder)"
    )
    parser.add_argument("--num-images", type=int, help="images per prompt (default: the run's eval.num_images, else 4)")
    parser.add_argument("--limit-prompts", type=int, help="only the first N prompts (quick checks)")
    parser.add_argument("--steps", type=int, help="inference steps (default: the run's sampling setting)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the run's sampling setting)")
    parser.add_argument("--scheduler", help="sampler: ddim | dpm | euler | pndm | ddpm (default: the run's)")
    parser.add_argument("--resolution", type=int, help="image size (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="first seed of each prompt's images")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save-images", action="store_true", help="keep the generated images under eval_images/")
    parser.add_argument("--output-dir", help="where eval.json goes (default: the run directory)")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the command line over the run's export.json."""
    info: dict[str, Any] = {}
    if args.run_dir:
        path = Path(args.run_dir).expanduser() / "export.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: --run-dir must be a finished diffusion/subject run (export.json "
                "and merged_unet/ are written when training ends), or pass --model instead."
            )
        info = json.loads(path.read_text())
    elif not args.model:
        raise ValueError("Pass --run-dir <finished diffusion run> or --model <diffusers pipeline folder>.")
    generation, eval_cfg = info.get("generation", {}), info.get("eval", {}) or {}
    run_dir = Path(args.run_dir).expanduser() if args.run_dir else None

    def pick(value, fallback):
        return value if value is not None else fallback

    settings = {
        "base_model": pick(args.model, info.get("base_model")),
        "vae": pick(args.vae, info.get("vae")),
        "unet": str(run_dir / info["merged_unet"]) if run_dir and not args.model and info.get("merged_unet") else None,
        "text_encoder": str(run_dir / info["merged_text_encoder"])
        if run_dir and not args.model and info.get("merged_text_encoder")
        else None,
        "instance_dir": pick(args.instance_dir, info.get("instance_dir")),
        "class_name": pick(args.class_name, info.get("class_name")),
        "token": pick(args.token, info.get("unique_token", "sks")),
        "dino_path": pick(args.dino_path, eval_cfg.get("dino_path")),
        "clip_path": pick(args.clip_path, eval_cfg.get("clip_path")),
        "prompts_file": pick(args.prompts_file, eval_cfg.get("prompts_file")),
        "num_images": int(pick(args.num_images, eval_cfg.get("num_images", 4))),
        "steps": int(pick(args.steps, generation.get("num_inference_steps", 25))),
        "guidance": float(pick(args.guidance, generation.get("guidance_scale", 7.5))),
        "scheduler": pick(args.scheduler, generation.get("scheduler", "dpm")),
        "resolution": int(pick(args.resolution, info.get("resolution", 512))),
        "seed": args.seed,
        "output_dir": pick(args.output_dir, str(run_dir) if run_dir else None),
    }
    for key, flag in (
        ("instance_dir", "--instance-dir"),
        ("class_name", "--class-name"),
        ("output_dir", "--output-dir"),
    ):
        if not settings[key]:
            raise ValueError(f"{flag} is needed (it is only read from a run's export.json with --run-dir).")
    if not settings["prompts_file"]:
        settings["prompts_file"] = str(Path(settings["instance_dir"]).expanduser().parent / "prompts_and_classes.txt")
    return settings


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..data.diffusion import check_images, evaluation_prompts, format_prompt, list_images
    from ..models.diffusion import sampling_scheduler

    s = _settings(args)
    real_paths = list_images(s["instance_dir"], "instance (subject photo)", "--instance-dir")
    check_images(real_paths)
    prompts_file = Path(s["prompts_file"]).expanduser()
    if not prompts_file.is_file():
        raise FileNotFoundError(
            f"prompts file {prompts_file} not found; pass --prompts-file <DreamBooth prompts_and_classes.txt>."
        )
    templates = evaluation_prompts(prompts_file, s["class_name"])[: args.limit_prompts or None]
    # metric models first: a missing folder fails before minutes of generation
    clip_model, clip_processor = load_clip(s["clip_path"], args.device)
    dino_model, dino_processor = load_dino(s["dino_path"], args.device)

    pipeline = load_pipeline(s["base_model"], s["unet"], s["text_encoder"], s["vae"], args.device)
    pipeline.scheduler = sampling_scheduler(s["scheduler"], pipeline.scheduler)
    prompts = [format_prompt(t, s["token"], s["class_name"]) for t in templates]
    per_prompt_images = generate(
        pipeline, prompts, s["num_images"], s["seed"], s["steps"], s["guidance"], s["resolution"], args.batch_size
    )
    generated = [image for images in per_prompt_images for image in images]
    clip_prompts = [
        " ".join(format_prompt(t, "", s["class_name"]).split()) for t in templates for _ in range(s["num_images"])
    ]

    real = [Image.open(p).convert("RGB") for p in real_paths]
    real_dino = dino_embeddings(real, dino_model, dino_processor)
    real_clip = clip_image_embeddings(real, clip_model, clip_processor)
    gen_dino = dino_embeddings(generated, dino_model, dino_processor)
    gen_clip = clip_image_embeddings(generated, clip_model, clip_processor)
    per_prompt = []
    for index, prompt in enumerate(prompts):
        rows = slice(index * s["num_images"], (index + 1) * s["num_images"])
        per_prompt.append(
            {
                "prompt": prompt,
                "dino": mean_pairwise_cosine(gen_dino[rows], real_dino),
                "clip_i": mean_pairwise_cosine(gen_clip[rows], real_clip),
                "clip_t": clip_t(generated[rows], clip_prompts[rows], clip_model, clip_processor),
            }
        )
    results = {
        "dino": mean_pairwise_cosine(gen_dino, real_dino),
        "clip_i": mean_pairwise_cosine(gen_clip, real_clip),
        "clip_t": clip_t(generated, clip_prompts, clip_model, clip_processor),
        "num_prompts": len(prompts),
        "images_per_prompt": s["num_images"],
        "num_real_images": len(real),
        "settings": {k: v for k, v in s.items() if k != "output_dir"},
        "per_prompt": per_prompt,
    }
    output_dir = Path(s["output_dir"]).expanduser()
    if args.save_images:
        folder = output_dir / "eval_images"
        folder.mkdir(parents=True, exist_ok=True)
        for index, images in enumerate(per_prompt_images):
            for k, image in enumerate(images):
                image.save(folder / f"p{index:02d}_{k}.png")
    path = write_eval_results(output_dir, NAME, results)
    log.info("DINO %.4f  CLIP-I %.4f  CLIP-T %.4f -> %s", results["dino"], results["clip_i"], results["clip_t"], path)
    return results
