"""Parameter counts and the per-module adapter summary.

Counts use ``model.parameters()``, which yields each parameter once even when it is shared (tied
embeddings), and never include buffers (``c``, the frozen factors, a frozen ``sigma``).
"""

from __future__ import annotations

from torch import nn

from .model_ops import loldu_modules


def trainable_parameters(model: nn.Module) -> int:
    """Number of trainable values (numel of parameters with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``loldu``: trainable LoLDU values (z, learned sigma); ``other_trainable``: every other
    trainable parameter (e.g. a head); ``trainable``: their sum; ``total``: all parameters.

    The app's ``count_parameters`` (metrics.json's ``params``) counts differently: its ``adapter``
    is every trainable parameter outside the task heads, whatever the method; hence another key here.
    """
    loldu_ids = {
        id(p) for _, layer in loldu_modules(model) for p in (layer.z, layer.sigma) if isinstance(p, nn.Parameter)
    }
    loldu = other = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if not parameter.requires_grad:
            continue
        if id(parameter) in loldu_ids:
            loldu += parameter.numel()
        else:
            other += parameter.numel()
    return {"loldu": loldu, "other_trainable": other, "trainable": loldu + other, "total": total}


def _layer_trainable(layer: nn.Module) -> int:
    return sum(p.numel() for p in (layer.z, layer.sigma) if isinstance(p, nn.Parameter) and p.requires_grad)


def summary(model: nn.Module) -> str:
    """A text table: one row per LoLDU module, then the totals and the trainable percentage."""
    header = ("module", "shape (out x in)", "rank", "trainable", "zero pivots")
    rows = [
        (
            name,
            f"{layer.out_features} x {layer.in_features}",
            str(layer.rank),
            f"{_layer_trainable(layer):,}",
            str(layer.zero_pivots),
        )
        for name, layer in loldu_modules(model)
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    counts = parameter_counts(model)
    share = 100.0 * counts["trainable"] / counts["total"] if counts["total"] else 0.0
    lines = [line(header), "  ".join("-" * width for width in widths), *(line(row) for row in rows)]
    if not rows:
        lines.append("(no LoLDU modules)")
    lines += [
        "",
        f"LoLDU modules:           {len(rows):,}",
        f"LoLDU trainable params:  {counts['loldu']:,}",
        f"other trainable params:  {counts['other_trainable']:,}",
        f"trainable params:        {counts['trainable']:,}",
        f"total model params:      {counts['total']:,}",
        f"trainable share:         {share:.4f}%",
        f"zero pivots:             {sum(layer.zero_pivots for _, layer in loldu_modules(model)):,}",
    ]
    return "\n".join(lines)
