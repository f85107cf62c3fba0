"""Seeded draws from a data split: the limits (`data.train_limit`, `data.val_limit`) and the seeded splits.

Every task family limits its data with `seeded_subset`, a seeded sample rather than the head of the
file, because data files are often sorted (GLUE by source or label, an ImageFolder by class). It is
`random.Random(seed).sample`, the draw GLUE has always made, so published GLUE runs with a limit
select the same examples in the same order. Splits that cut one list in two (a held-out share of
dev or of the instruction records) permute it with `seeded_order` and cut the permutation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def seeded_subset(items: Sequence[T], limit: int | None, seed: int) -> list[T]:
    """`limit` items drawn with `seed` (in the order drawn), or all of them when `limit` is None or not smaller."""
    if limit is None:
        return list(items)
    if limit < 1:
        raise ValueError(f"a data limit must be a positive number of examples or null, got {limit}")
    if limit >= len(items):
        return list(items)
    return random.Random(seed).sample(items, limit)


def seeded_order(count: int, seed: int) -> list[int]:
    """A permutation of `range(count)` that depends on `seed` alone (Python's `random.shuffle`)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order
