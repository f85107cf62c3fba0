"""sha256 fingerprints of tensors, shared by the layer (``storage: lu`` frees W0, so it fingerprints
W0 before) and the adapter files (which check a base model against them)."""

from __future__ import annotations

import ctypes
import hashlib

import torch
from torch import Tensor


def tensor_sha256(tensor: Tensor) -> str:
    """sha256 of a tensor's raw bytes (a fresh contiguous CPU copy, so views hash their values)."""
    data = tensor.detach().to("cpu", copy=True).contiguous()
    if data.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(ctypes.string_at(data.data_ptr(), data.numel() * data.element_size())).hexdigest()


def weight_fingerprint(weight: Tensor) -> str:
    """sha256 of an (out, in) weight as contiguous float32 bytes, whatever its dtype and layout."""
    return tensor_sha256(weight.detach().to(torch.float32))
