"""Paper-scale numbers on the roberta-base architecture (RobertaConfig() defaults, random weights).

Building the 125M-parameter model takes a few seconds, so one model serves every test here; each
test unloads its adapters again.
"""

import time

import pytest
import torch

from loldu_lightning.loldu import (
    ADAPTER_WEIGHTS_NAME,
    LoLDUConfig,
    inject,
    parameter_counts,
    save_adapter,
    summary,
    unload,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def roberta_base():
    torch.manual_seed(0)
    return transformers.RobertaModel(transformers.RobertaConfig(), add_pooling_layer=False).eval()


def _inject_timed(model, scaling: str) -> float:
    start = time.perf_counter()
    inject(model, LoLDUConfig(rank=768, alpha=768, scaling=scaling, target_modules=["query", "value"]))
    return time.perf_counter() - start


@pytest.mark.parametrize(("scaling", "expected"), [("learned", 18_456), ("fixed", 18_432), ("none", 18_432)])
def test_trainable_counts_match_the_paper_for_query_value_at_rank_768(roberta_base, scaling, expected):
    seconds = _inject_timed(roberta_base, scaling)
    try:
        counts = parameter_counts(roberta_base)
        assert counts["loldu"] == expected == counts["trainable"]
        assert counts["other_trainable"] == 0
        assert counts["total"] == sum(p.numel() for p in roberta_base.parameters())
        table = summary(roberta_base)
        assert f"LoLDU trainable params:  {expected:,}" in table and "768 x 768" in table
        # informational only: speed is measured in benchmarks/, never asserted in tests
        print(f"\ninject roberta-base q,v r=768 ({scaling}): {seconds:.2f} s on CPU")
    finally:
        unload(roberta_base, merge=False)


def test_adapter_file_for_roberta_base_is_kilobytes(roberta_base, tmp_path):
    _inject_timed(roberta_base, "learned")
    try:
        save_adapter(roberta_base, tmp_path)
    finally:
        unload(roberta_base, merge=False)
    size = (tmp_path / ADAPTER_WEIGHTS_NAME).stat().st_size
    payload = 24 * (768 + 1 + 768) * 4  # z, sigma, c in float32 for 24 matrices
    print(f"\nadapter_model.safetensors for roberta-base q,v r=768: {size:,} bytes ({payload:,} bytes of values)")
    assert payload < size < payload + 16_384
