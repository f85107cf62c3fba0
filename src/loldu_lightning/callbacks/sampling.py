"""Sample grids during diffusion training, and the export a plain diffusers pipeline can use.

`SamplingCallback` renders a fixed list of prompts x seeds every N steps and at the end (the
paper's Figure 5 is such a progression): one PNG per image under `samples/step_XXXXXX/`, one grid
per step `samples/step_XXXXXX.png` (rows = prompts, columns = seeds), and the grid goes to every
logger that takes images (W&B/MLflow `log_image`, TensorBoard `add_image`).

`DiffusionExportCallback` writes, at the end of training, the final adapter files (`adapter/last`)
and `merged_unet/`: the UNet with the adapter folded in, saved with `save_pretrained`, which
`UNet2DConditionModel.from_pretrained` loads without this project.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from PIL import Image

from ..adapters import unwrap_model

log = logging.getLogger(__name__)


def image_grid(images: Sequence[Image.Image], rows: int, columns: int) -> Image.Image:
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * width, (index // columns) * height))
    return grid


def log_image(trainer: L.Trainer, key: str, image: Image.Image, step: int) -> None:
    """Send one image to every logger that takes images; the others are skipped."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):  # W&B, Neptune, ...
            logger.log_image(key=key, images=[image], step=step)
        elif hasattr(logger.experiment, "add_image"):  # TensorBoard
            logger.experiment.add_image(key, np.asarray(image), step, dataformats="HWC")
        elif hasattr(logger.experiment, "log_image") and getattr(logger, "run_id", None):  # MLflow
            logger.experiment.log_image(logger.run_id, image, f"{key}/step_{step:06d}.png")


class SamplingCallback(L.Callback):
    """Every `every_n_steps` optimizer steps (0 = only at the end), at the start if `at_start`, and at the end."""

    def __init__(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        every_n_steps: int,
        at_start: bool = True,
        folder: str = "samples",
        **generation: Any,
    ):
        if not prompts or not seeds:
            raise ValueError(
                "sampling.prompts and sampling.seeds must be non-empty lists (or set sampling.enabled=false)."
            )
        self.prompts = list(prompts)
        self.seeds = [int(seed) for seed in seeds]
        self.every_n_steps = int(every_n_steps)
        self.at_start = at_start
        self.folder = folder
        self.generation = generation
        self.last_sampled_step: int | None = None
        self.written: list[Path] = []

    def _sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self.last_sampled_step:
            return
        self.last_sampled_step = step
        if not trainer.is_global_zero:
            return
        images = pl_module.sample_images(self.prompts, self.seeds, **self.generation)
        root = Path(trainer.default_root_dir) / self.folder
        step_dir = root / f"step_{step:06d}"
        step_dir.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            prompt, seed = divmod(index, len(self.seeds))
            image.save(step_dir / f"p{prompt:02d}_seed{self.seeds[seed]}.png")
        grid = image_grid(images, len(self.prompts), len(self.seeds))
        grid_path = root / f"step_{step:06d}.png"
        grid.save(grid_path)
        (root / "prompts.json").write_text(
            json.dumps({"prompts": self.prompts, "seeds": self.seeds, **self.generation}, indent=2) + "\n"
        )
        self.written.append(grid_path)
        log_image(trainer, "samples", grid, step)
        log.info("Samples at step %d: %s", step, grid_path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self._sample(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self._sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sample(trainer, pl_module)


class DiffusionExportCallback(L.Callback):
    """At the end of training: `adapter/last` (our files, for reload) and `merged_unet/` (plain diffusers)."""

    def __init__(self, export_info: dict[str, Any]):
        self.export_info = export_info

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        from .adapter import AdapterCallback  # the callback that applied the adapter holds it

        out = Path(trainer.default_root_dir)
        adapter_callback = next((c for c in trainer.callbacks if isinstance(c, AdapterCallback)), None)
        if adapter_callback is None:
            log.warning("No AdapterCallback: the merged UNet export is skipped.")
            return
        adapter = adapter_callback.adapter
        adapter_callback.save(pl_module, "last")
        merged = unwrap_model(adapter.merge(copy.deepcopy(pl_module.model)))
        merged.unet.save_pretrained(str(out / "merged_unet"))
        if getattr(merged, "text_encoder", None) is not None:
            merged.text_encoder.save_pretrained(str(out / "merged_text_encoder"))
        info = {
            **self.export_info,
            "adapter": adapter.name,
            "global_step": trainer.global_step,
            "merged_unet": "merged_unet",
            "merged_text_encoder": "merged_text_encoder" if getattr(merged, "text_encoder", None) is not None else None,
        }
        (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
        log.info("Merged UNet written to %s (load it with UNet2DConditionModel.from_pretrained)", out / "merged_unet")
