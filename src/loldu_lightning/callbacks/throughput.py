"""Training throughput (samples/s, tokens/s) in the progress bar and the logs.

Lightning's `Throughput` does the windowed bookkeeping; this callback feeds it the batch sizes and
token counts of our dict batches and logs through `pl_module.log` so the numbers reach the bar too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput


def batch_samples_and_tokens(batch) -> tuple[int, int]:
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        if "attention_mask" in batch:
            mask = batch["attention_mask"]
            return mask.shape[0], int(mask.sum())
        for value in batch.values():
            if isinstance(value, torch.Tensor):
                return value.shape[0], value.shape[0]
    return 0, 0


class ThroughputCallback(L.Callback):
    def __init__(self, window_size: int = 10):
        self.window_size = window_size
        self.throughput: Throughput | None = None
        self.samples = 0
        self.tokens = 0
        self.start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.throughput = Throughput(window_size=self.window_size)
        self.samples = self.tokens = 0
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        samples, tokens = batch_samples_and_tokens(batch)
        self.samples += samples
        self.tokens += tokens
        self.throughput.update(time=time.perf_counter() - self.start, batches=batch_idx + 1,
                               samples=self.samples, lengths=self.tokens)
        # Rates appear once the window is full; "device/" keys are this process's own rates.
        rates = self.throughput.compute()
        if "device/samples_per_sec" in rates:
            pl_module.log("throughput/samples_per_sec", rates["device/samples_per_sec"], prog_bar=True)
        if "device/items_per_sec" in rates:
            pl_module.log("throughput/tokens_per_sec", rates["device/items_per_sec"])
