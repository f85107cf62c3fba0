"""Which base model an adapter belongs to: fingerprints in the PEFT config, as in native adapter files.

The decomposition is a function of W0, so z, sigma and c only mean something on the exact base
weights they were trained on. A config records, per module, the sha256 of W0, of the pivot
order and the shape (the entries ``loldu.save_adapter`` writes); a config that already holds an
entry for a module (a loaded adapter, or one created on another model) is checked against it.
"""

from __future__ import annotations

from typing import Any

from loldu_lightning.loldu import LoLDULinear
from loldu_lightning.loldu.fingerprint import tensor_sha256

from .config import LoLDUPeftConfig


def fingerprint(layer: LoLDULinear) -> dict[str, Any]:
    """The entry ``loldu.save_adapter`` writes for one module."""
    return {
        "weight": layer.base_fingerprint(),
        "perm": tensor_sha256(layer.perm),
        "shape": [layer.out_features, layer.in_features],
    }


class BaseModelMismatch(ValueError):
    """An adapter is put on a base model other than the one it was made on (refused before any value is used)."""


def mismatch(module: str, what: str, expected: object, found: object) -> BaseModelMismatch:
    return BaseModelMismatch(
        f"LoLDU adapter does not fit this base model: module {module!r} {what} differs (expected {expected}, found "
        f"{found}). The adapter was made for a different base model, or, for the pivot order, the LU decomposition "
        "pivoted differently on this hardware/library. Load the exact base model it was trained on (or save the "
        "adapter with save_factors=True so the factors travel with it); to create a new adapter on this model, "
        "pass a new config (fingerprints=None)."
    )


def check_or_record(config: LoLDUPeftConfig, module: str, layer: LoLDULinear) -> None:
    """Check ``layer``'s base weight against ``config.fingerprints[module]``, or record it there."""
    found = fingerprint(layer)
    if config.fingerprints is None:
        config.fingerprints = {}
    expected = config.fingerprints.get(module)
    if expected is None:
        config.fingerprints[module] = found
        return
    if list(expected["shape"]) != found["shape"]:
        raise mismatch(module, "weight shape (out x in)", expected["shape"], found["shape"])
    if expected["weight"] != found["weight"]:
        raise mismatch(module, "weight sha256", expected["weight"], found["weight"])
    # With saved factors the pivot order comes from the file, whatever this machine computes.
    if not config.save_factors and expected["perm"] != found["perm"]:
        raise mismatch(module, "pivot order (perm sha256)", expected["perm"], found["perm"])
