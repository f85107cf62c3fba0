"""Length-grouped training batches with a bounded megabatch (data.length_group_megabatch): each
megabatch of that many batches is sorted by length, the default is transformers' size, and the option
reaches the sampler of the GLUE and instruction loaders."""

from __future__ import annotations

import pytest

from loldu_lightning.builders.glue import build_glue_datamodule
from loldu_lightning.builders.instruct import build_instruct_datamodule
from loldu_lightning.builders.schema import run_options
from loldu_lightning.data.glue import GlueDataModule, glue_task
from loldu_lightning.data.loaders import EpochShuffleSampler
from loldu_lightning.models import byte_level_tokenizer
from loldu_lightning.options import GlueDataOptions
from tests.fixtures import write_glue_task
from tests.helpers import compose_config

BATCH = 4
LENGTHS = list(range(1, 129))  # 128 examples, all lengths distinct: 8 batches per default megabatch


def _chunks_sorted(order: list[int], chunk: int) -> bool:
    """Each `chunk`-long slice non-increasing in length (the first example excepted: transformers
    swaps the longest example of the epoch to the front)."""
    lengths = [LENGTHS[i] for i in order]
    for start in range(0, len(lengths), chunk):
        piece = lengths[max(start, 1) : start + chunk]
        if any(a < b for a, b in zip(piece, piece[1:], strict=False)):
            return False
    return True


@pytest.mark.parametrize("megabatch", [1, 2, 4])
def test_each_megabatch_of_the_given_size_is_sorted_by_length(megabatch):
    sampler = EpochShuffleSampler(len(LENGTHS), seed=3, lengths=LENGTHS, batch_size=BATCH, megabatch=megabatch)
    order = sampler.order(0)
    assert sorted(order) == list(range(len(LENGTHS)))  # the same examples, each once
    assert _chunks_sorted(order, megabatch * BATCH)
    # a bounded megabatch is not sorted over the default's span (128 / (4 x 4) = 8 batches)
    assert not _chunks_sorted(order, 8 * BATCH)


def test_the_default_megabatch_is_a_quarter_of_the_epoch():
    order = EpochShuffleSampler(len(LENGTHS), seed=3, lengths=LENGTHS, batch_size=BATCH).order(0)
    assert _chunks_sorted(order, 8 * BATCH) and not _chunks_sorted(order, 16 * BATCH)


def test_a_megabatch_below_one_batch_is_refused():
    with pytest.raises(ValueError, match=r"data.length_group_megabatch=0: must be a number of batches >= 1"):
        EpochShuffleSampler(len(LENGTHS), seed=3, lengths=LENGTHS, batch_size=BATCH, megabatch=0)


def test_glue_loader_uses_the_megabatch_only_with_grouping(tmp_path):
    folder = write_glue_task(tmp_path / "RTE", "RTE", rows=60)
    tokenizer = byte_level_tokenizer()
    for group, megabatch, expected in ((True, 2, 2), (True, None, None), (False, 2, None)):
        options = GlueDataOptions(
            data_dir=str(folder), batch_size=4, group_by_length=group, length_group_megabatch=megabatch
        )
        module = GlueDataModule("rte", tokenizer, options, seed=0)
        module.setup("fit")
        sampler = module.train_dataloader().sampler
        assert sampler.megabatch == expected and (sampler.lengths is not None) == group


@pytest.mark.parametrize(
    "overrides",
    [["task=glue/rte"], ["task=instruct/alpaca", "model=tiny-llama", "data.path=unused.json"]],
    ids=["glue", "instruct"],
)
def test_the_option_reaches_each_text_family_datamodule(overrides):
    options = run_options(compose_config([*overrides, "data.length_group_megabatch=3"]))
    tokenizer = byte_level_tokenizer()
    if options.task.family == "glue":
        module = build_glue_datamodule(options.data, 0, glue_task("rte"), tokenizer)
    else:
        module = build_instruct_datamodule(options.data, 0, tokenizer)
    assert module.options.length_group_megabatch == 3
