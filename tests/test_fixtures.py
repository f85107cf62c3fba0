"""The generated stand-ins (fixtures.py) are read by the real data modules exactly like the real data,
so the end-to-end tests that use them in a clone without ../shared/data test the same code path."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loldu_lightning.data.glue import glue_task, read_glue_tsv
from tests.fixtures import write_glue_root, write_image_folder


@pytest.mark.parametrize(("folder", "task"), [("RTE", "rte"), ("SST-2", "sst2"), ("MRPC", "mrpc")])
def test_generated_glue_reads_like_the_real_files(tmp_path: Path, folder: str, task: str):
    root = write_glue_root(tmp_path)
    info = glue_task(task)
    train, dev = (read_glue_tsv(root / folder / f"{split}.tsv", info) for split in ("train", "dev"))
    assert (len(train), len(dev)) == (96, 32)
    assert set(Counter(label for _, _, label in train).values()) == {48}  # balanced, both labels present


def test_generated_image_folder_has_the_cifar10_subset_layout(tmp_path: Path):
    from torchvision.datasets import ImageFolder

    root = write_image_folder(tmp_path)
    train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
    assert len(train.classes) == len(test.classes) == 10
    assert (len(train), len(test)) == (260, 60)
