"""Stable Diffusion parts from one local diffusers folder, and `tiny-sd`, a random one built in code.

Every model goes through the same loading path: `load_sd_parts(options)` reads `unet/`, `vae/`,
`text_encoder/`, `tokenizer/` and `scheduler/` of a diffusers pipeline folder (stable-diffusion-v1-5
downloaded once, or the `tiny-sd` folder that `tiny_sd_folder` writes with `save_pretrained` into a
cache the first time it is asked for). The VAE may come from a separate folder (the paper uses
sd-vae-ft-mse, a folder with config.json at its root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..options import DiffusionModelOptions

TINY_SD = "tiny-sd"
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# Small sizes for tests and CPU demos: 32 px images, a VAE with one downsampling (16 x 16 latents),
# a two-level UNet with cross-attention (8 attention blocks x 4 projections = 32 adapted linears at
# layers_per_block 1), and a 2-layer CLIP text encoder over a byte-level vocabulary.
TINY_SD_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "resolution": 32,
    "unet_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "vae_channels": [32, 64],
    "text_hidden_size": 32,
    "text_layers": 2,
    "text_heads": 4,
    "prediction_type": "epsilon",
}


@dataclass
class SDParts:
    """What training and sampling need; `folder` is the resolved pipeline folder."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    noise_scheduler: Any
    folder: Path


def require_diffusers() -> None:
    """diffusers is the `diffusion` extra: say how to get it instead of a bare ModuleNotFoundError."""
    try:
        import diffusers  # noqa: F401
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "The diffusion task family needs diffusers: pip install 'loldu-lightning[diffusion]' "
            "(or pip install diffusers)."
        ) from error


def cache_root() -> Path:
    return Path(
        os.environ.get("LOLDU_CACHE", Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "loldu_lightning")
    ).expanduser()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (the byte-level BPE alphabet)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _tiny_tokenizer_files(folder: Path) -> None:
    """A byte-level CLIP vocabulary (every byte, alone and word-final) with no merges: any prompt tokenizes."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [f"{symbol}</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_tiny_sd(folder: Path, sizes: Mapping[str, Any]) -> None:
    """Write a random StableDiffusionPipeline (no safety checker) to `folder` with save_pretrained."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    s = {**TINY_SD_DEFAULTS, **dict(sizes)}
    unknown = sorted(set(s) - set(TINY_SD_DEFAULTS))
    if unknown:
        raise ValueError(f"model.tiny has unknown key(s) {unknown}; allowed: {sorted(TINY_SD_DEFAULTS)}")
    with tempfile.TemporaryDirectory() as scratch:
        _tiny_tokenizer_files(Path(scratch))
        tokenizer = CLIPTokenizer(
            vocab=str(Path(scratch) / "vocab.json"), merges=str(Path(scratch) / "merges.txt"), model_max_length=77
        )
    torch.manual_seed(int(s["seed"]))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=s["text_hidden_size"],
            intermediate_size=2 * s["text_hidden_size"],
            num_hidden_layers=s["text_layers"],
            num_attention_heads=s["text_heads"],
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae_levels = len(s["vae_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=tuple(s["vae_channels"]),
        down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=s["resolution"],
    )
    unet_levels = len(s["unet_channels"])
    unet = UNet2DConditionModel(
        sample_size=s["resolution"] // 2 ** (vae_levels - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(s["unet_channels"]),
        layers_per_block=s["layers_per_block"],
        down_block_types=("CrossAttnDownBlock2D",) * (unet_levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (unet_levels - 1),
        cross_attention_dim=s["text_hidden_size"],
        attention_head_dim=s["attention_head_dim"],
        norm_num_groups=32,
    )
    # Stable Diffusion v1's own training schedule
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=s["prediction_type"],
    )
    make_pipeline(unet, vae, text_encoder, tokenizer, scheduler).save_pretrained(str(folder))


def tiny_sd_folder(sizes: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None) -> Path:
    """The tiny-sd pipeline folder for these sizes, written once (atomically) into the cache."""
    # model_type only names the model (adapter files say tiny-sd); it is no size
    sizes = {**TINY_SD_DEFAULTS, **{k: v for k, v in dict(sizes or {}).items() if k != "model_type"}}
    key = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else cache_root()
    folder = root / f"tiny-sd-{key}"
    if (folder / "model_index.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".tiny-sd-", dir=root))
    try:
        build_tiny_sd(scratch, sizes)
        try:
            scratch.rename(folder)
        except OSError:  # another process wrote it first
            if not (folder / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def resolve_sd_folder(options: DiffusionModelOptions) -> Path:
    """The local pipeline folder of `model.name_or_path` (`tiny-sd` builds it), checked part by part."""
    require_diffusers()
    name = str(options.name_or_path)
    if name == TINY_SD:
        return tiny_sd_folder(options.tiny, options.cache_dir)
    folder = Path(name).expanduser()
    how = (
        "download it once where you have internet (huggingface-cli download stable-diffusion-v1-5/"
        "stable-diffusion-v1-5 --local-dir /path/to/stable-diffusion-v1-5) and set "
        "model.name_or_path=/path/to/stable-diffusion-v1-5 (or use model=tiny-sd for a random test model)"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"model.name_or_path={name!r} is not a local folder; the hub is not used here: {how}.")
    need = [part for part in SD_PARTS if part != "vae" or not options.vae_name_or_path]
    missing = [part for part in need if not (folder / part).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"model.name_or_path={str(folder)!r} is not a complete diffusers Stable Diffusion folder: it lacks "
            f"{', '.join(p + '/' for p in missing)} (a pipeline folder has {', '.join(p + '/' for p in SD_PARTS)}). "
            f"Point model.name_or_path at the folder that holds them; {how}."
        )
    return folder


def _vae_location(options: DiffusionModelOptions, folder: Path) -> tuple[str, str | None]:
    vae = options.vae_name_or_path
    if not vae:
        return str(folder), "vae"
    vae_folder = Path(str(vae)).expanduser()
    if (vae_folder / "vae" / "config.json").is_file():
        return str(vae_folder), "vae"
    if not (vae_folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.vae_name_or_path={str(vae)!r} is not a diffusers AutoencoderKL folder (no config.json); download "
            "it once (huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir /path/to/sd-vae-ft-mse) and point "
            "model.vae_name_or_path there, or set model.vae_name_or_path=null to use the pipeline's own vae/."
        )
    return str(vae_folder), None


def load_sd_parts(options: DiffusionModelOptions) -> SDParts:
    """Frozen VAE and text encoder, trainable-to-be UNet, tokenizer and the DDPM training scheduler."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = resolve_sd_folder(options)
    vae_path, vae_subfolder = _vae_location(options, folder)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet")
    vae = AutoencoderKL.from_pretrained(vae_path, subfolder=vae_subfolder)
    text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    return SDParts(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        folder=folder,
    )


SAMPLERS = ("ddim", "dpm", "euler", "pndm", "ddpm")


def sampling_scheduler(name: str, training_scheduler: Any):
    """An inference scheduler built from the training scheduler's config (same betas and prediction type)."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    classes = {
        "ddim": DDIMScheduler,
        "dpm": DPMSolverMultistepScheduler,
        "euler": EulerDiscreteScheduler,
        "pndm": PNDMScheduler,
        "ddpm": DDPMScheduler,
    }
    if name not in classes:
        raise ValueError(f"sampling.scheduler={name!r} is not known; choose one of {sorted(classes)}.")
    return classes[name].from_config(training_scheduler.config)


def make_pipeline(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler: Any):
    """A StableDiffusionPipeline around the given (possibly adapted) parts, without a safety checker."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
