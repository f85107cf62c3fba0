"""The LoLDU forward when each example of a batch carries its own adapter ("mixed batches").

In the factored forward ``y = W0 x + lower ((sigma z - c) * (upper x))`` an adapter enters only
through the length-r vector ``v = sigma z - c``. Adapters of one base model that share the
decomposition and rank share ``lower`` and ``upper`` (they are functions of W0), so a batch whose
examples use different adapters needs one gather of each example's ``v``: the products with W0,
``upper`` and ``lower`` are the ones a single-adapter batch computes, whatever the number of
distinct adapters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def per_example_scales(scales: Tensor, batch_size: int) -> Tensor:
    """``scales`` (one row per example) repeated to ``batch_size`` rows when the model expanded the
    batch (beam search, ``num_return_sequences``: each example's rows are consecutive)."""
    rows = scales.shape[0]
    if rows == batch_size:
        return scales
    if rows == 0 or batch_size % rows:
        raise ValueError(
            f"LoLDU mixed batch: {rows} adapter choices for a batch of {batch_size} examples; pass one adapter "
            "name per example"
        )
    return scales.repeat_interleave(batch_size // rows, dim=0)


def per_example_update(x: Tensor, lower: Tensor, upper: Tensor, scales: Tensor) -> Tensor:
    """``lower diag(v_b) upper x_b`` for every example ``b``: x is (batch, ..., n), scales (batch, r).

    The casts are those of the single-adapter factored forward (``storages.DenseStorage``), so an
    example gets the numbers it gets in a batch of its own, up to the matrix products' summation order.
    """
    hidden = F.linear(x, upper.to(x.dtype))
    scales = per_example_scales(scales, x.shape[0])
    # (batch, r) -> (batch, 1, ..., 1, r): one vector per example, shared by all its tokens.
    shaped = scales.reshape(scales.shape[0], *([1] * (hidden.dim() - 2)), scales.shape[1])
    hidden = hidden * shaped.to(hidden.dtype)
    return F.linear(hidden, lower.to(hidden.dtype))
