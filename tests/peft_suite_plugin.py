"""A pytest plugin that adds LoLDU's cases to PEFT's own generic test suite and runs only them.

PEFT asks a new method to add its cases to ``tests/test_custom_models.py``: ``TEST_CASES``, from
which PEFT derives ``ALL_PEFT_CONFIG_CLASSES`` (the tests parametrized by config class), and
``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``. This plugin does that to an
unmodified copy of PEFT's tests, fetched from the package index by ``tests/test_peft_suite.py``:
after pytest imports PEFT's module and before it builds the parametrized tests, the LoLDU cases
are appended to those lists, and at the end of collection every test that does not run a LoLDU
config is deselected.

    python -m pytest <peft sdist>/tests/test_custom_models.py -p peft_suite_plugin -o addopts=""

(with this folder on ``PYTHONPATH``).

Two tests are expected to fail, and are marked so (strict: they must fail, with the fingerprint
refusal): TestRequiresGrad's loading tests save an adapter made on one randomly initialised
DeepMLP and load it onto a second one with other weights. LoLDU refuses that on purpose: its
z, sigma and c are coordinates in the decomposition of the exact W0 they were trained on
(docs/peft.md, "The adapter folder").
"""

from __future__ import annotations

import pytest

import loldu_lightning.peft  # noqa: F401  (registers LoLDU with PEFT)
from loldu_lightning.peft import LoLDUPeftConfig
from loldu_lightning.peft.fingerprints import BaseModelMismatch

PEFT_TEST_MODULE = "test_custom_models.py"

# (name, model id, config class, kwargs) as in PEFT's TEST_CASES. MLP: lin0 is Linear(10, 20)
# (rank <= 10), lin1 is Linear(20, 2) (rank <= 2); EmbConv1D: conv1d is transformers' Conv1D(1, 5)
# (rank 1) and lin0 Linear(10, 2). Together they cover both layer types LoLDU adapts, one and
# several targets, modules_to_save, full rank, and the options with their own code paths.
LOLDU_TEST_CASES = [
    ("Vanilla MLP 1 LoLDU", "MLP", LoLDUPeftConfig, {"target_modules": "lin0", "r": 4}),
    ("Vanilla MLP 2 LoLDU", "MLP", LoLDUPeftConfig, {"target_modules": ["lin0"], "r": 4}),
    ("Vanilla MLP 3 LoLDU", "MLP", LoLDUPeftConfig, {"target_modules": ["lin1"], "r": 2}),
    ("Vanilla MLP 4 LoLDU", "MLP", LoLDUPeftConfig, {"target_modules": ["lin0", "lin1"], "r": 2}),
    (
        "Vanilla MLP 5 LoLDU",
        "MLP",
        LoLDUPeftConfig,
        {"target_modules": ["lin0"], "modules_to_save": ["lin1"], "r": 4},
    ),
    ("Vanilla MLP 6 LoLDU full rank", "MLP", LoLDUPeftConfig, {"target_modules": ["lin0", "lin1"], "r": "full"}),
    (
        "Vanilla MLP 7 LoLDU svd fixed scaling",
        "MLP",
        LoLDUPeftConfig,
        {"target_modules": ["lin0", "lin1"], "r": 2, "decomposition": "svd", "scaling": "fixed"},
    ),
    (
        "Vanilla MLP 8 LoLDU packed merged",
        "MLP",
        LoLDUPeftConfig,
        {"target_modules": ["lin0"], "r": "full", "storage": "packed", "forward_mode": "merged"},
    ),
    (
        "Vanilla MLP 9 LoLDU save factors",
        "MLP",
        LoLDUPeftConfig,
        {"target_modules": ["lin0", "lin1"], "r": 2, "save_factors": True},
    ),
    ("Embedding + transformers Conv1D 1 LoLDU", "EmbConv1D", LoLDUPeftConfig, {"target_modules": ["conv1d"], "r": 1}),
    (
        "Embedding + transformers Conv1D 2 LoLDU",
        "EmbConv1D",
        LoLDUPeftConfig,
        {"target_modules": ["conv1d", "lin0"], "r": "full"},
    ),
]

# (name, method, config class, kwargs of the first adapter, of the second) on PEFT's MLP.
LOLDU_MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = [
    (
        "LoLDU Same",
        "loldu",
        LoLDUPeftConfig,
        {"target_modules": ["lin0"], "r": 4, "init_weights": False},
        {"target_modules": ["lin0"], "r": 4, "init_weights": False, "seed": 1},
    ),
    (
        "LoLDU Different",
        "loldu",
        LoLDUPeftConfig,
        {"target_modules": ["lin0"], "r": 4, "init_weights": False},
        {"target_modules": ["lin1"], "r": 2, "init_weights": False},
    ),
]

# (name, first adapter's config, second's) as in PEFT's MIXED_ADAPTER_TEST_CASES: adapter_names=[...]
# batches over two adapters of one layout, and of two (other ranks take their own factored product).
LOLDU_MIXED_ADAPTER_TEST_CASES = [
    (
        "LoLDU mixed adapter",
        LoLDUPeftConfig(target_modules=["lin0"], r=4, init_weights=False),
        LoLDUPeftConfig(target_modules=["lin0"], r=4, init_weights=False, seed=1),
    ),
    (
        "LoLDU mixed adapter, two ranks",
        LoLDUPeftConfig(target_modules=["lin0"], r=4, init_weights=False),
        LoLDUPeftConfig(target_modules=["lin0"], r=8, init_weights=False),
    ),
]

# PEFT tests that load an adapter onto a base model with other weights than it was made on.
REFUSED_BY_FINGERPRINT = {
    "test_loading_model_requires_grad_set_correctly",
    "test_loading_model_with_modules_to_save_requires_grad_set_correctly",
}


def pytest_collectstart(collector: pytest.Collector) -> None:
    if isinstance(collector, pytest.Module) and collector.path.name == PEFT_TEST_MODULE:
        add_loldu_cases(collector.obj)  # imports PEFT's module; its tests are parametrized after this


def add_loldu_cases(module) -> None:
    """Append LoLDU's cases to the lists PEFT's tests are parametrized over (once per module)."""
    if any(row[2] is LoLDUPeftConfig for row in module.TEST_CASES):
        return
    module.TEST_CASES.extend(LOLDU_TEST_CASES)
    module.ALL_PEFT_CONFIG_CLASSES.append(LoLDUPeftConfig)
    module.MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES.extend(LOLDU_MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES)
    module.MIXED_ADAPTER_TEST_CASES.extend(LOLDU_MIXED_ADAPTER_TEST_CASES)


def _loldu_case(item: pytest.Item) -> str | None:
    """The LoLDU case an item runs (its name, or the config class's), None for other methods."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if isinstance(params.get("config0"), LoLDUPeftConfig):  # the mixed adapter batch tests
        return params["test_name"]
    if params.get("config_cls") is not LoLDUPeftConfig:
        return None
    return params.get("test_name", LoLDUPeftConfig.__name__)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        if _loldu_case(item) is None:
            drop.append(item)
            continue
        if item.originalname in REFUSED_BY_FINGERPRINT:
            item.add_marker(
                pytest.mark.xfail(
                    raises=BaseModelMismatch,
                    strict=True,
                    reason="loads the adapter onto a DeepMLP with other random weights; LoLDU refuses a base model "
                    "whose fingerprints differ (docs/peft.md)",
                )
            )
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
