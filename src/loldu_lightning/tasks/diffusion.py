"""Subject-driven Stable Diffusion (DreamBooth-style; the paper's Tables VI and X).

The adapter (LoLDU, LoRA, full fine-tuning, ...) adapts `self.model`, a small container holding the
UNet (and the text encoder when `model.train_text_encoder=true`); the VAE and, by default, the text
encoder stay frozen outside it. Training is the usual latent-diffusion objective: VAE latents of the
subject photos, noise at a random timestep, MSE between the UNet's prediction and the scheduler's
target (the noise for epsilon models, the velocity for v-prediction ones), plus the class images'
loss weighted by `loss.prior_weight` under prior preservation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from ..adapters import unwrap_model
from ..models.diffusion import SDParts, make_pipeline, sampling_scheduler
from .base import AdaptedTask

log = logging.getLogger(__name__)


class SubjectModel(nn.Module):
    """What the adapter adapts: the UNet, plus the text encoder when it is trained too."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None = None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, noisy_latents, timesteps, encoder_hidden_states):
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=encoder_hidden_states).sample


class DiffusionSubjectTask(AdaptedTask):
    """Noise-prediction training of a subject; fixed-noise validation loss; sampling for the callbacks."""

    def __init__(
        self,
        parts: SDParts,
        train_text_encoder: bool,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        prior_weight: float = 1.0,
        val_timesteps: Sequence[int] = (100, 300, 500, 700, 900),
        seed: int = 42,
        callbacks: Sequence[L.Callback] = (),
    ):
        super().__init__(
            SubjectModel(parts.unet, parts.text_encoder if train_text_encoder else None), (), optimizer, scheduler
        )
        self.vae = parts.vae
        # the frozen text encoder lives outside the adapted container (None when it trains inside it)
        self.frozen_text_encoder = None if train_text_encoder else parts.text_encoder
        self.train_text_encoder = train_text_encoder
        self.tokenizer = parts.tokenizer
        self.noise_scheduler = parts.noise_scheduler
        self.prediction_type = parts.noise_scheduler.config.prediction_type
        # per-example mean, reduced over DDP ranks at epoch end (a plain self.log would keep rank 0's)
        self.val_loss = MeanMetric()
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"The scheduler's prediction_type {self.prediction_type!r} is not supported; "
                "use a model whose scheduler/scheduler_config.json says epsilon or v_prediction."
            )
        self.prior_weight = float(prior_weight)
        self.val_timesteps = [int(t) for t in val_timesteps]
        self.seed = int(seed)
        self._callbacks = list(callbacks)

    # parts -------------------------------------------------------------------------------------
    @property
    def unet(self) -> nn.Module:
        return unwrap_model(self.model).unet

    @property
    def text_encoder(self) -> nn.Module:
        return unwrap_model(self.model).text_encoder if self.train_text_encoder else self.frozen_text_encoder

    def configure_callbacks(self):
        return self._callbacks

    def configure_optimizers(self):
        if self.train_text_encoder and not any(p.requires_grad for p in self.text_encoder.parameters()):
            raise ValueError(
                "model.train_text_encoder=true but the adapter made no text-encoder parameter trainable: add the "
                "CLIP attention projections to its targets, e.g. adapter.target_modules=[to_q,to_k,to_v,to_out.0,"
                "q_proj,k_proj,v_proj,out_proj]."
            )
        return super().configure_optimizers()

    # the objective -----------------------------------------------------------------------------
    def encode_prompts(self, input_ids: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return self.text_encoder(input_ids)[0]

    @torch.no_grad()
    def encode_images(
        self, pixel_values: torch.Tensor, generator: torch.Generator | None = None, deterministic: bool = False
    ) -> torch.Tensor:
        distribution = self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
        latents = distribution.mode() if deterministic else distribution.sample(generator)
        return latents * self.vae.config.scaling_factor

    def per_example_loss(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = (
            noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(latents, noise, timesteps)
        )
        prediction = self.model(noisy, timesteps, hidden_states)
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        latents = self.encode_images(batch["pixel_values"])
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        losses = self.per_example_loss(latents, noise, timesteps, self.encode_prompts(batch["input_ids"]))
        prior = batch["is_prior"]
        instance_loss = losses[~prior].mean()
        loss = instance_loss
        size = int((~prior).sum())
        if prior.any():
            prior_loss = losses[prior].mean()
            loss = instance_loss + self.prior_weight * prior_loss
            self.log("train/prior_loss", prior_loss, batch_size=size)
        self.check_finite(loss)
        self.log("train/instance_loss", instance_loss, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """The subject photos at fixed timesteps with fixed noise: the same numbers at every validation."""
        generator = torch.Generator().manual_seed(self.seed + batch_idx)
        latents = self.encode_images(batch["pixel_values"], deterministic=True)
        count, steps = latents.shape[0], len(self.val_timesteps)
        latents = latents.repeat_interleave(steps, dim=0)
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        timesteps = torch.tensor(self.val_timesteps * count, device=latents.device)
        hidden = self.encode_prompts(batch["input_ids"]).repeat_interleave(steps, dim=0)
        self.val_loss.update(self.per_example_loss(latents, noise, timesteps, hidden))
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=count)

    # sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_images(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        scheduler: str = "dpm",
        height: int | None = None,
        width: int | None = None,
    ) -> list:
        """len(prompts) x len(seeds) PIL images (prompt-major), from the current adapted UNet."""
        unet, text_encoder = self.unet, self.text_encoder
        modes = [(module, module.training) for module in (unet, text_encoder)]
        pipeline = make_pipeline(
            unet.eval(),
            self.vae,
            text_encoder.eval(),
            self.tokenizer,
            sampling_scheduler(scheduler, self.noise_scheduler),
        )
        context = self.trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()
        images = []
        try:
            with context:
                for prompt in prompts:
                    # CPU generators: the same seed gives the same start noise on every device
                    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
                    images += pipeline(
                        [prompt] * len(seeds),
                        num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale,
                        generator=generators,
                        height=height,
                        width=width,
                    ).images
        finally:
            for module, training in modes:
                module.train(training)
        return images
