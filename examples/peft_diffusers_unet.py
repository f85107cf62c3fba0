"""LoLDU added to a diffusers UNet through PEFT (``unet.add_adapter``), trained DreamBooth-style on CPU.

    python examples/peft_diffusers_unet.py --model tiny-sd --steps 20
    python examples/peft_diffusers_unet.py --model sd-v1-5 --model-path /path/to/stable-diffusion-v1-5 --steps 1000

diffusers accepts any ``peft.PeftConfig`` in ``add_adapter`` and hands it to PEFT's
``inject_adapter_in_model``, so a ``LoLDUPeftConfig`` works as a LoRA config would. diffusers'
LoRA file helpers (``save_lora_adapter``, ``load_lora_adapter``, ``fuse_lora``) are LoRA-specific;
this example saves and loads with PEFT's own ``get_peft_model_state_dict`` /
``inject_adapter_in_model`` + ``set_peft_model_state_dict`` instead. The photos are one DreamBooth
subject (CC BY 4.0, ../shared/data/dreambooth).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

import loldu_lightning.peft  # noqa: F401  (registers LoLDU with PEFT)
from loldu_lightning.builders.schema import model_options
from loldu_lightning.cli.overrides import model_config
from loldu_lightning.models.diffusion import load_sd_parts
from loldu_lightning.peft import LoLDUPeftConfig

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "dreambooth" / "dog"


def load_photos(folder: Path, resolution: int) -> torch.Tensor:
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not paths:
        raise FileNotFoundError(
            f"no .jpg/.png photos in {folder}; pass --photos pointing at a DreamBooth subject folder"
        )
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(images)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="a conf/model/ file name (tiny-sd, sd-v1-5)")
    parser.add_argument(
        "--model-path", default=None, help="a local diffusers Stable Diffusion folder (overrides the file)"
    )
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--prompt", default="a photo of sks dog")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/peft_diffusers_unet"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=32, help="the paper's Table X: 32")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    model_file = model_config(args.model)
    if args.model_path:
        model_file.name_or_path = args.model_path
    model = model_options(model_file, "diffusion")
    torch.manual_seed(args.seed)
    parts = load_sd_parts(model)
    unet, scheduler = parts.unet, parts.noise_scheduler

    with torch.no_grad():
        pixels = load_photos(args.photos, model.resolution)
        latents = parts.vae.encode(pixels).latent_dist.mode() * parts.vae.config.scaling_factor
        ids = parts.tokenizer(
            [args.prompt], padding="max_length", max_length=parts.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        text = parts.text_encoder(ids)[0].expand(len(latents), -1, -1)

    probe_noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    probe_t = torch.full((len(latents),), scheduler.config.num_train_timesteps // 2, dtype=torch.long)

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return unet(scheduler.add_noise(latents, probe_noise, probe_t), probe_t, text).sample

    base = probe()
    config = LoLDUPeftConfig(r=args.rank, target_modules=model.target_modules, seed=args.seed)
    unet.add_adapter(config)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    print(f"LoLDU on {len(trainable) // 2} UNet projections: {sum(p.numel() for p in trainable):,} trainable numbers")
    print(f"max |output - base| at init: {(probe() - base).abs().max().item():.3g}")

    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.01)
    unet.train()
    for step in range(args.steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))
        loss = F.mse_loss(unet(scheduler.add_noise(latents, noise, t), t, text).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")
    unet.eval()
    adapted = probe()
    unet.disable_adapters()
    disabled_gap = (probe() - base).abs().max().item()
    unet.enable_adapters()
    adapter_gap = (adapted - base).abs().max().item()  # nothing else trains: this is the adapter's own effect
    print(f"adapter moved the output by {adapter_gap:.3g}; disabled: {disabled_gap:.3g}")

    adapter_dir = args.output_dir / "adapter"
    adapter_dir.mkdir(parents=True, exist_ok=True)
    unet.peft_config["default"].save_pretrained(str(adapter_dir))
    save_file(get_peft_model_state_dict(unet), str(adapter_dir / "adapter_model.safetensors"))

    fresh = load_sd_parts(model).unet.eval()
    inject_adapter_in_model(LoLDUPeftConfig.from_pretrained(str(adapter_dir)), fresh)
    set_peft_model_state_dict(fresh, load_file(str(adapter_dir / "adapter_model.safetensors")))
    unet = fresh
    reloaded_gap = (probe() - adapted).abs().max().item()
    print(f"adapter saved to {adapter_dir}; reloaded into a fresh UNet: max |difference| = {reloaded_gap:.3g}")
    return {"loss": loss.item(), "adapter_gap": adapter_gap, "disabled_gap": disabled_gap, "reloaded_gap": reloaded_gap}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
