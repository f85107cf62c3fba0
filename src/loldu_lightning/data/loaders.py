"""The DataLoaders every task family uses: resumable, shuffled training batches and sequential evaluation.

Exact resume needs two things from the loader. Its position: `torchdata`'s StatefulDataLoader
saves how many batches it has yielded, and Lightning stores that in every checkpoint and restores
it (no "dataloader is not resumable" warning). And the order it replays: the sampler below draws
each epoch's order from `(seed, epoch)` alone, never from the global RNG, so a resumed process
rebuilds the interrupted epoch's order and fast-forwards through it to the same batch. The
loader's own generator is private for the same reason: creating an iterator must not consume the
global RNG that dropout and diffusion noise draw from.

Evaluation batches come in dataset order; under DDP each rank evaluates its own share of the
examples, each example once (`distributed.eval_sampler`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers.trainer_pt_utils import get_length_grouped_indices

from .distributed import eval_sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation that is a function of `(seed, epoch)`; with `lengths`, batches of similar lengths
    (transformers' length grouping, the same examples with less padding).

    Length grouping shuffles, cuts the order into megabatches of `megabatch` batches and sorts each
    megabatch by length, so every batch holds one length band of its megabatch. None is transformers'
    size: a quarter of the epoch's batches, at most 50. A smaller megabatch keeps batches closer to a
    plain shuffle (1 is one: sorting inside a batch changes nothing but which batch comes first), with
    less padding saved; where length and label are correlated, one-band batches bias the gradient
    (docs/results/length_grouping/).

    `epoch` is read when an epoch's iteration starts: from `epoch_source` (the trainer's current epoch,
    restored from a checkpoint before the loader is iterated) when given, else from `set_epoch`,
    which Lightning calls on a loader's sampler. The source is needed under DDP, where Lightning
    wraps this sampler and `set_epoch` reaches only the wrapper.
    """

    def __init__(
        self,
        num_examples: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
        epoch_source: Callable[[], int] | None = None,
        megabatch: int | None = None,
    ):
        if lengths is not None and (batch_size is None or len(lengths) != num_examples):
            raise ValueError("length grouping needs one length per example and the batch size")
        if megabatch is not None and megabatch < 1:
            raise ValueError(f"data.length_group_megabatch={megabatch}: must be a number of batches >= 1 (or null).")
        self.num_examples = num_examples
        self.seed = int(seed)
        self.lengths = list(lengths) if lengths is not None else None
        self.batch_size = batch_size
        self.megabatch = megabatch
        self.epoch_source = epoch_source
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def current_epoch(self) -> int:
        return int(self.epoch_source()) if self.epoch_source is not None else self.epoch

    def order(self, epoch: int) -> list[int]:
        # modulo the generator's 64-bit range: an unseeded process's initial seed is itself 64 bits wide
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        if self.lengths is not None:
            return list(
                get_length_grouped_indices(
                    self.lengths, self.batch_size, mega_batch_mult=self.megabatch, generator=generator
                )
            )
        return torch.randperm(self.num_examples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order(self.current_epoch()))

    def __len__(self) -> int:
        return self.num_examples


def training_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    lengths: Sequence[int] | None = None,
    *,
    seed: int | None = None,
    epoch_source: Callable[[], int] | None = None,
    pin_memory: bool = False,
    megabatch: int | None = None,
) -> StatefulDataLoader:
    """Shuffled batches that a checkpoint can resume in the middle of an epoch.

    With `lengths`, batches of similar lengths within megabatches of `megabatch` batches
    (`EpochShuffleSampler`).

    `seed` defaults to the process's initial seed, which `seed_everything(cfg.seed)` set, so the
    order follows the run's seed and is the same in an interrupted and a resumed process.
    """
    seed = torch.initial_seed() if seed is None else seed
    sampler = EpochShuffleSampler(
        len(dataset),  # type: ignore[arg-type]
        seed,
        lengths=lengths,
        batch_size=batch_size if lengths is not None else None,
        epoch_source=epoch_source,
        megabatch=megabatch if lengths is not None else None,
    )
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed % (2**63)),
    )


def evaluation_loader(
    dataset: Dataset,
    batch_size: int,
    trainer,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
) -> DataLoader:
    """Batches in dataset order for validation and test; under several processes (`trainer`'s world
    size) each example goes to exactly one rank, so synced metrics equal one process's.

    `persistent_workers` defaults to keeping the workers alive between evaluations when there are any.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=eval_sampler(dataset, trainer),
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0 if persistent_workers is None else persistent_workers,
        pin_memory=pin_memory,
    )


def trainer_epoch(datamodule) -> Callable[[], int]:
    """The epoch source for a DataModule's training sampler: its trainer's current epoch (0 before fit)."""

    def epoch() -> int:
        trainer = getattr(datamodule, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    return epoch
