"""The training DataLoader every text family uses: shuffled, optionally grouped by length."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch.utils.data import DataLoader, Dataset
from transformers.trainer_pt_utils import LengthGroupedSampler


def training_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable,
    num_workers: int = 0,
    lengths: Sequence[int] | None = None,
) -> DataLoader:
    """Shuffled batches; given `lengths`, shuffled batches of similar lengths (the same examples with
    less padding, transformers' LengthGroupedSampler)."""
    sampler = LengthGroupedSampler(batch_size, lengths=list(lengths)) if lengths is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
