"""Training throughput (samples/s, tokens/s) in the logs and the progress bar.

Lightning's `ThroughputMonitor` does the measuring (it synchronises CUDA before reading the clock,
leaves validation time out and logs only when gradient accumulation completes a step); this module
only says how to count our dict batches, and mirrors the per-device rates into the progress bar,
which `ThroughputMonitor` does not feed.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage


def batch_samples(batch) -> int:
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        for value in batch.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return int(value.shape[0])
    return 0


def batch_tokens(batch) -> int:
    """Non-padding tokens (the attention mask's ones); one per sample for batches without a mask."""
    if isinstance(batch, Mapping) and "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch_samples(batch)


class Throughput(ThroughputMonitor):
    """`ThroughputMonitor` counting our batches, with `throughput/{samples,tokens}_per_sec` in the bar."""

    def __init__(self, window_size: int = 10):
        super().__init__(batch_size_fn=batch_samples, length_fn=batch_tokens, window_size=window_size)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, *args) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)
        if not trainer.is_global_zero:  # the monitor measures on rank 0 only
            return
        rates = self._throughputs[RunningStage.TRAINING].compute()  # rates appear once the window is full
        if "device/samples_per_sec" in rates:
            pl_module.log(
                "throughput/samples_per_sec",
                rates["device/samples_per_sec"],
                prog_bar=True,
                logger=False,
                rank_zero_only=True,
            )
        if "device/items_per_sec" in rates:
            pl_module.log(
                "throughput/tokens_per_sec",
                rates["device/items_per_sec"],
                prog_bar=True,
                logger=False,
                rank_zero_only=True,
            )
