"""Every option docs/options.md lists is set on the command line as plain `key=value`, whichever config
files the run composes (a trainer file that leaves `max_steps` out, a task that sets it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from loldu_lightning.builders.schema import adapter_sections, run_options, sections
from loldu_lightning.cli.config import config_dir, register_resolvers
from loldu_lightning.cli.overrides import add_declared_options
from tests.helpers import compose_config

# a task of each family, for the options only that family reads
FAMILY_TASKS = {
    "glue": "task=glue/rte",
    "vision": "task=vision/imagefolder",
    "instruct": "task=instruct/alpaca",
    "diffusion": "task=diffusion/subject model=tiny-sd",
}


def _value(row) -> str:
    """The row's example, else its default (an adapter's rows); a default that interpolates another
    key takes the library default the page names beside it."""
    value = (row.example or row.default).split(" (")[0]  # an example may carry a note: "1000 (-1: no limit)"
    if "${" in value:
        value = re.search(r"`([^`]*)`", row.help).group(1)
    return value.replace(", ", ",")


def listed_options() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(section title, selection, [(key, value)]) for every section of docs/options.md."""
    cases = []
    for section in [*sections(), *adapter_sections()]:
        scope = re.search(r"\((.*)\)", section.title)
        scope = scope.group(1) if scope else ""
        if section.title.startswith("adapter"):
            selection = f"adapter={scope}"
        else:
            selection = FAMILY_TASKS.get(scope, "task=glue/rte")
        cases.append((section.title, selection, [(row.key, _value(row)) for row in section.rows]))
    return cases


SECTIONS = listed_options()


def compose(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def test_the_listing_covers_every_page_row():
    page = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", page, flags=re.MULTILINE))
    assert {key for _, _, rows in SECTIONS for key, _ in rows} == listed
    assert len(listed) > 100


@pytest.mark.parametrize(("title", "selection", "rows"), SECTIONS, ids=[title for title, _, _ in SECTIONS])
def test_each_listed_option_is_set_as_plain_key_value(title, selection, rows):
    """One run's command line setting every option of the section, each as plain `key=value`."""
    overrides = [f"{key}={value}" for key, value in rows]
    cfg = compose(add_declared_options([*selection.split(), *overrides]))
    parser = OverridesParser.create()
    for (key, _), override in zip(rows, overrides, strict=True):
        got = OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"]
        assert got == parser.parse_overrides([override])[0].value(), override


def test_trainer_keys_the_trainer_files_leave_out_reach_the_run_options():
    args = add_declared_options(["trainer=cpu", "trainer.max_steps=5", "trainer.limit_train_batches=3"])
    assert args[1:] == ["++trainer.max_steps=5", "++trainer.limit_train_batches=3"]
    trainer = run_options(compose_config(args)).trainer
    assert (trainer.max_steps, trainer.limit_train_batches) == (5, 3)
    # a config that sets the key (the diffusion task's max_steps) keeps the plain override as it is
    assert add_declared_options(["task=diffusion/subject", "trainer.max_steps=5"])[1] == "trainer.max_steps=5"
    # + and ++ still work, and a key no schema declares is left for the unknown-key check
    assert add_declared_options(["+trainer.max_steps=5", "trainer.max_stpes=5"]) == [
        "+trainer.max_steps=5",
        "trainer.max_stpes=5",
    ]
