"""Evaluation under multi-process strategies (DDP, FSDP): every example evaluated exactly once.

Lightning gives evaluation loaders a plain `DistributedSampler`, which pads the last round by
repeating examples so every rank has the same number of batches; the synced metrics then count
those examples twice and differ from a single-process evaluation of the same weights. The
unrepeated sampler lets the ranks differ by one batch instead; that is safe for evaluation, where
no per-batch collective runs (metrics and `sync_dist` logs are reduced once, at epoch end).
"""

from __future__ import annotations

from torch.utils.data import Dataset, Sampler


def eval_sampler(dataset: Dataset, trainer) -> Sampler | None:
    """The sampler for an evaluation loader: None (sequential) unless `trainer` runs several processes."""
    if trainer is None or trainer.world_size <= 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
