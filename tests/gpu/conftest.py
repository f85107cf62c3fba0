"""Fixtures of the GPU checks (see runtime.py for where they run)."""

from __future__ import annotations

import pytest
import torch

from .runtime import device_under_test


@pytest.fixture(scope="session")
def device() -> torch.device:
    return device_under_test()
