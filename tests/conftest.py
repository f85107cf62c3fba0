"""Shared fixtures: the real data beside the checkout, and CPU-friendly defaults."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(os.environ.get("LOLDU_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

# Under pytest-xdist (`-n 2`, pyproject's addopts) the workers share the cores: each worker, and the
# command-line runs it starts (OMP_NUM_THREADS), takes its share, so two workers on two cores do not
# oversubscribe them. The same count in and out of process keeps in-process and CLI runs comparable.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, torch.get_num_threads()) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; tests that need the real data skip cleanly in a plain user clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (CI provides ../shared/data; set LOLDU_SHARED_DATA to point elsewhere)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def glue_root(tmp_path_factory) -> Path:
    """GLUE task folders (RTE/, SST-2/, MRPC/): the real ones from ../shared/data, else generated
    stand-ins in the same TSV format (fixtures.py), so a user's clone runs the end-to-end tests too."""
    if (SHARED_DATA / "glue").is_dir():
        return SHARED_DATA / "glue"
    from tests.fixtures import write_glue_root

    return write_glue_root(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def image_folder_root(tmp_path_factory) -> Path:
    """An ImageFolder tree (train/, test/): the real CIFAR-10 subset, else a generated stand-in."""
    if (SHARED_DATA / "cifar10_subset").is_dir():
        return SHARED_DATA / "cifar10_subset"
    from tests.fixtures import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("images"))
