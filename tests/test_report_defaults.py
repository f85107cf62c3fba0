"""The reference arm a report marks is the value a run gets with no override, wherever the config tree
declares it: the group file, the generated defaults it composes first, or conf/schema/common.yaml."""

from __future__ import annotations

import pytest

from loldu_lightning.report.defaults import default_value
from tests.helpers import compose_config


@pytest.mark.parametrize(
    ("key", "choice", "overrides"),
    [
        ("adapter.init", None, []),  # conf/schema/adapter/loldu.yaml (loldu.yaml does not change it)
        ("adapter.decomposition", None, []),  # conf/adapter/loldu.yaml changes it
        ("adapter.rank", "lora", ["adapter=lora"]),
        ("optimizer.lr", None, []),  # conf/schema/common.yaml
        ("scheduler.warmup_ratio", "constant", ["scheduler=constant"]),
    ],
)
def test_the_default_is_the_composed_value(key, choice, overrides):
    expected = compose_config(overrides)
    for part in key.split("."):
        expected = expected[part]
    assert default_value(key, choice) == expected


def test_the_default_choice_and_an_unknown_key():
    assert default_value("adapter") == "loldu"
    assert default_value("adapter.no_such_option") is None
