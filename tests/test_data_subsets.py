"""Seeded data limits and splits (data/subsets.py) and the evaluation loader every DataModule uses.

GLUE's limited runs (the quickstart's debug=fast, the studies' train_limit budgets) must keep the
examples they were published with, so the draw is pinned to literal indices and to GLUE's files.
"""

from __future__ import annotations

import dataclasses
import json
import random
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch.utils.data import SequentialSampler

from loldu_lightning.data.diffusion import SubjectDataModule, collate_subject
from loldu_lightning.data.glue import GLUE_TASKS, GlueDataModule, read_glue_tsv
from loldu_lightning.data.instruct import InstructDataModule
from loldu_lightning.data.subsets import seeded_order, seeded_subset
from loldu_lightning.data.vision import VisionDataModule
from loldu_lightning.models import byte_level_tokenizer
from loldu_lightning.options import (
    DiffusionDataOptions,
    GlueDataOptions,
    InstructDataOptions,
    VisionDataOptions,
    VisionTaskOptions,
)
from tests.fixtures import write_glue_task, write_image_folder


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


# --- seeded_subset: GLUE's draw, pinned --------------------------------------------------------


def test_seeded_subset_is_random_sample_with_the_seed_in_draw_order():
    # literal values: Python's random.Random(seed).sample, the draw published GLUE runs used
    assert seeded_subset(list(range(1000)), 6, 0) == [864, 394, 776, 911, 430, 41]  # set-based draw
    assert seeded_subset(list(range(20)), 5, 7) == [10, 4, 12, 1, 2]  # pool-based draw (limit near the size)
    for size, limit, seed in ((67_349, 2000, 0), (2490, 500, 3), (100, 99, 1)):
        population = [f"example {index}" for index in range(size)]
        assert seeded_subset(population, limit, seed) == random.Random(seed).sample(population, limit)


def test_seeded_subset_without_a_limit_keeps_everything_in_order():
    items = ["c", "a", "b"]
    assert seeded_subset(items, None, 0) == items
    assert seeded_subset(items, 3, 0) == items and seeded_subset(items, 10, 0) == items
    with pytest.raises(ValueError, match="positive number of examples or null, got 0"):
        seeded_subset(items, 0, 0)


def test_seeded_order_is_random_shuffle_with_the_seed():
    expected = list(range(50))
    random.Random(11).shuffle(expected)
    assert seeded_order(50, 11) == expected and sorted(seeded_order(50, 11)) == list(range(50))


def _token_rows(dataset) -> list[list[int]]:
    return [list(ids) for ids in dataset.encodings["input_ids"]]


def test_glue_limits_take_the_same_examples_as_before(tmp_path, tokenizer):
    folder = write_glue_task(tmp_path / "RTE", "RTE", rows=90)
    info = GLUE_TASKS["rte"]
    options = GlueDataOptions(data_dir=str(folder), max_length=64, train_limit=20, val_limit=7)
    module = GlueDataModule("rte", tokenizer, options, seed=5)
    module.setup("fit")
    # train is drawn with seed + 0, each dev split with seed + its position (1 for RTE)
    for split, file, limit, seed in (("train", "train.tsv", 20, 5), ("validation", "dev.tsv", 7, 6)):
        expected = random.Random(seed).sample(read_glue_tsv(folder / file, info), limit)
        encoded = tokenizer([a for a, _, _ in expected], [b for _, b, _ in expected], max_length=64, truncation=True)
        assert _token_rows(module.datasets[split]) == [list(ids) for ids in encoded["input_ids"]]
        assert module.datasets[split].labels.tolist() == [label for _, _, label in expected]


def test_glue_train_from_dev_keeps_its_split(tmp_path, tokenizer):
    """The split QNLI's study trains on: shuffle with split_seed, the first n train, both halves in file order."""
    folder = write_glue_task(tmp_path / "RTE", "RTE", rows=90)
    dev = read_glue_tsv(folder / "dev.tsv", GLUE_TASKS["rte"])
    order = list(range(len(dev)))
    random.Random(4).shuffle(order)
    chosen = set(order[:12])
    module = GlueDataModule(
        "rte", tokenizer, GlueDataOptions(data_dir=str(folder), train_from_dev=12, split_seed=4), seed=0
    )
    train, rest = module._split_dev()
    assert train == [example for index, example in enumerate(dev) if index in chosen]
    assert rest == [example for index, example in enumerate(dev) if index not in chosen]


def test_instruct_limits_are_seeded_subsets_of_the_shuffled_splits(tmp_path, tokenizer):
    rows = [{"instruction": f"task {index}", "input": "", "output": f"answer {index}"} for index in range(60)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    options = InstructDataOptions(path=str(path), max_length=256, val_size=20)
    limited = dataclasses.replace(options, train_limit=9, val_limit=5)
    train, val = InstructDataModule(tokenizer, limited, seed=3).records()
    full_train, full_val = InstructDataModule(tokenizer, options, seed=3).records()
    assert len(full_train) == 40 and len(full_val) == 20
    assert train == seeded_subset(full_train, 9, 3) and val == seeded_subset(full_val, 5, 3)


def _imagefolder_task(**splits) -> VisionTaskOptions:
    """An image folder's task options; the splits it leaves null are the folder's own."""
    return VisionTaskOptions(family="vision", name="imagefolder", **{"train_split": None, "val_split": None, **splits})


def test_vision_limits_are_seeded_subsets_of_the_indices(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=4, per_class=6, size=8)
    options = VisionDataOptions(root=str(root), train_limit=7, val_limit=5)
    module = VisionDataModule("imagefolder", options, _imagefolder_task(), seed=2, image_size=8)
    module.setup("fit")
    assert module.train_set.images.indices == random.Random(2).sample(range(24), 7)
    val_size = len(module._combined(module.val_splits))
    assert module.val_set.images.indices == random.Random(2).sample(range(val_size), 5)


# --- the evaluation loader of every family -----------------------------------------------------


def _rank(world_size: int, rank: int) -> SimpleNamespace:
    return SimpleNamespace(world_size=world_size, global_rank=rank)


def _check_evaluation_loader(loader, *, batch_size, collate, workers, pin_memory=False, persistent=None):
    assert loader.batch_size == batch_size and loader.num_workers == workers and loader.pin_memory == pin_memory
    assert loader.persistent_workers == (workers > 0 if persistent is None else persistent)
    assert loader.collate_fn is collate if collate is not None else loader.collate_fn.__name__ == "default_collate"
    assert isinstance(loader.sampler, SequentialSampler)


def _shares(make_loader, dataset_size: int) -> list[list[int]]:
    """The example indices each of two ranks evaluates."""
    shares = []
    for rank in (0, 1):
        loader = make_loader(_rank(2, rank))
        assert isinstance(loader.sampler, UnrepeatedDistributedSampler) and not loader.sampler.shuffle
        shares.append(list(loader.sampler))
    assert sorted(shares[0] + shares[1]) == list(range(dataset_size))  # each example once, none repeated
    return shares


def test_glue_evaluation_loaders(tmp_path, tokenizer):
    folder = write_glue_task(tmp_path / "RTE", "RTE", rows=30)
    module = GlueDataModule(
        "rte", tokenizer, GlueDataOptions(data_dir=str(folder), batch_size=4, eval_batch_size=3), seed=0
    )
    module.setup("fit")
    (loader,) = module.val_dataloader()
    _check_evaluation_loader(loader, batch_size=3, collate=module.collate, workers=0)

    def make(trainer):
        module.trainer = trainer
        return module.val_dataloader()[0]

    _shares(make, len(module.datasets["validation"]))


def test_instruct_evaluation_loader(tmp_path, tokenizer):
    rows = [{"instruction": f"task {index}", "input": "", "output": "ok"} for index in range(30)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    options = InstructDataOptions(path=str(path), max_length=256, val_size=9, batch_size=4, eval_batch_size=2)
    module = InstructDataModule(tokenizer, options, seed=42)
    module.setup("fit")
    _check_evaluation_loader(module.val_dataloader(), batch_size=2, collate=module.collate, workers=0)

    def make(trainer):
        module.trainer = trainer
        return module.val_dataloader()

    _shares(make, 9)


def test_vision_evaluation_loaders(tmp_path):
    root = write_image_folder(tmp_path / "images", classes=2, per_class=5, size=8)
    options = VisionDataOptions(root=str(root), batch_size=4, eval_batch_size=5, num_workers=1)
    module = VisionDataModule("imagefolder", options, _imagefolder_task(test_split="test"), seed=0, image_size=8)
    module.setup(None)
    pin = torch.cuda.is_available()
    for loader in (module.val_dataloader(), module.test_dataloader()):
        _check_evaluation_loader(loader, batch_size=5, collate=None, workers=1, pin_memory=pin)

    def make(trainer):
        module.trainer = trainer
        return module.val_dataloader()

    _shares(make, len(module.val_set))


def test_diffusion_evaluation_loader(tmp_path):
    photos = []
    for index in range(3):
        photos.append(tmp_path / f"{index}.png")
        Image.new("RGB", (12, 12), (index * 40, 0, 0)).save(photos[-1])
    options = DiffusionDataOptions(resolution=8, batch_size=2, num_workers=1)
    module = SubjectDataModule(photos, "a photo of sks dog", _Tokenizer(), options)
    module.setup("fit")
    _check_evaluation_loader(
        module.val_dataloader(), batch_size=2, collate=collate_subject, workers=1, persistent=False
    )

    def make(trainer):
        module.trainer = trainer
        return module.val_dataloader()

    _shares(make, 3)


class _Tokenizer:
    model_max_length = 4

    def __call__(self, prompt, **_):
        return SimpleNamespace(input_ids=torch.zeros(1, self.model_max_length, dtype=torch.long))
