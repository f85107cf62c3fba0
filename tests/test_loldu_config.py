"""LoLDUConfig validation and its JSON round trip."""

import json

import pytest

from loldu_lightning.loldu import FORWARD_MODES, INITS, RESIDUALS, SCALINGS, LoLDUConfig


def test_defaults_are_valid_and_round_trip_through_json():
    config = LoLDUConfig(rank=8, alpha=16, target_modules=["query", "value"], exclude_modules="classifier.*")
    assert config.target_modules == ("query", "value")
    restored = LoLDUConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


def test_registries_hold_exactly_the_documented_choices():
    assert set(INITS) == {"ldu", "constant", "uniform", "uniform_unit", "normal", "normal_unit", "zeros", "ones"}
    assert set(SCALINGS) == {"learned", "fixed", "none"}
    assert set(RESIDUALS) == {"init", "ldu", "authors"}
    assert set(FORWARD_MODES) == {"auto", "factored", "merged"}


@pytest.mark.parametrize(
    ("field", "allowed"),
    [
        ("init", INITS),
        ("scaling", SCALINGS),
        ("residual", RESIDUALS),
        ("forward_mode", FORWARD_MODES),
        ("dtype", ["float32", "float16", "bfloat16"]),
        ("decompose_dtype", ["float32", "float64"]),
    ],
)
def test_unknown_choice_lists_the_allowed_values(field, allowed):
    with pytest.raises(ValueError) as error:
        LoLDUConfig(rank=4, **{field: "bogus"})
    message = str(error.value)
    assert field in message and "'bogus'" in message
    assert all(name in message for name in allowed)


@pytest.mark.parametrize("rank", [0, -3, "half", 2.5, True, None])
def test_invalid_rank_is_rejected(rank):
    with pytest.raises(ValueError, match="rank"):
        LoLDUConfig(rank=rank)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), "8"])
def test_invalid_alpha_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha"):
        LoLDUConfig(rank=4, alpha=alpha)


def test_alpha_none_means_alpha_equals_rank_and_full_rank_resolves_per_matrix():
    config = LoLDUConfig(rank="full")
    assert config.resolve_rank(12) == 12
    assert config.resolve_alpha(12) == 12.0
    assert LoLDUConfig(rank=4, alpha=2).resolve_alpha(4) == 2.0


@pytest.mark.parametrize("decomposition, scale", [("lu", 1.0), ("svd", 30.0), ("qr", 20.0)])
def test_lr_scale_defaults_to_the_decompositions_and_an_explicit_one_wins(decomposition, scale):
    assert LoLDUConfig(rank=8, decomposition=decomposition).resolve_lr_scale() == scale
    assert LoLDUConfig(rank=8, decomposition=decomposition, lr_scale=2).resolve_lr_scale() == 2.0


@pytest.mark.parametrize("lr_scale", [0, -1.0, float("nan"), float("inf"), "30", True])
def test_invalid_lr_scale_is_rejected(lr_scale):
    with pytest.raises(ValueError, match="lr_scale"):
        LoLDUConfig(rank=8, lr_scale=lr_scale)


def test_a_storage_that_needs_lu_names_the_decomposition_to_set():
    with pytest.raises(ValueError, match="set decomposition 'lu'"):
        LoLDUConfig(rank="full", decomposition="svd", storage="lu")


@pytest.mark.parametrize("targets", [[], [""], "", None, 3])
def test_invalid_target_modules_are_rejected(targets):
    with pytest.raises(ValueError, match="target_modules"):
        LoLDUConfig(rank=4, target_modules=targets)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown field.*'rnak'"):
        LoLDUConfig.from_dict({"rank": 4, "rnak": 4})
