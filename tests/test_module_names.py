"""One name rule (`loldu/targeting.is_or_ends_with`) for adapter targets, task heads and BitFit's biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loldu_lightning.adapters import build_adapter, resolve_head_modules
from loldu_lightning.loldu.targeting import is_or_ends_with, resolve_target_modules


def test_a_name_matches_itself_or_a_dotted_suffix_of_whole_components():
    assert is_or_ends_with("query", "query")
    assert is_or_ends_with("encoder.layer.0.attention.self.query", "query")
    assert is_or_ends_with("unet.to_out.0", "to_out.0")
    assert not is_or_ends_with("encoder.subquery", "query")  # a suffix of a component is not a match
    assert not is_or_ends_with("query.weight", "query")


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(4, 4)
        self.subquery = nn.Linear(4, 4)
        self.bias_scale = nn.Parameter(torch.ones(4))  # ends with "bias" only inside a component


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.classifier = nn.Linear(4, 2)


def test_targets_and_heads_select_the_same_modules_for_the_same_entry():
    model = _Model()
    assert resolve_target_modules(model, ["query"]) == ["encoder.query"]
    assert resolve_head_modules(model, ["query"]) == ("encoder.query",)


def test_bitfit_trains_parameters_named_bias_and_the_heads():
    model = build_adapter({"name": "bitfit"}).apply(_Model(), ["classifier"])
    trained = sorted(name for name, parameter in model.named_parameters() if parameter.requires_grad)
    assert trained == ["classifier.bias", "classifier.weight", "encoder.query.bias", "encoder.subquery.bias"]


def test_targets_and_heads_that_match_nothing_say_so():
    with pytest.raises(ValueError, match=r"target_modules \['q_proj'\] .*matched no module"):
        resolve_target_modules(_Model(), ["q_proj"])
    with pytest.raises(ValueError, match="head module 'score' matches no module of _Model"):
        resolve_head_modules(_Model(), ["score"])
