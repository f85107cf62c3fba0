"""Shared fixtures: the real data beside the checkout, and CPU-friendly defaults."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("LOLDU_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; tests that need the real data skip cleanly in a plain user clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI provides ../shared/data; set LOLDU_SHARED_DATA to point elsewhere)")
    return SHARED_DATA
