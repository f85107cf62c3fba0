"""The typed option schemas (builders/schema.py): each option's default is the config tree's, a bad value
or a misspelt key is refused naming it, valid configs of every family pass, docs/options.md is the
schema's, and resolvers are registered by the code that uses them, not by importing the package."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from omegaconf import OmegaConf

from loldu_lightning.builders.schema import run_options
from loldu_lightning.cli.config import config_dir, validate_config
from loldu_lightning.cli.help_text import options_page
from loldu_lightning.options import (
    COMMON_GROUPS,
    DATA_SCHEMAS,
    FAMILY_GROUPS,
    TASK_SCHEMAS,
    DataOptions,
    TaskOptions,
    TopLevelOptions,
    TrainerOptions,
    VisionDataOptions,
)
from tests.helpers import cli_env, compose_config

OPTIONS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "options.md"
# one task per family, composed with the model its tests use
FAMILY_TASKS = {
    "glue": ["task=glue/qnli"],
    "vision": ["task=vision/eurosat", "model=tiny-vit"],
    "instruct": ["task=instruct/alpaca", "model=tiny-llama"],
    "diffusion": ["task=diffusion/subject", "model=tiny-sd"],
}


def _options(schema: type, inherited: type | None = None) -> list[dataclasses.Field]:
    skip = {f.name for f in dataclasses.fields(inherited)} if inherited else set()
    return [f for f in dataclasses.fields(schema) if "option" in f.metadata and f.name not in skip]


def _default(spec_field: dataclasses.Field):
    if spec_field.default_factory is not dataclasses.MISSING:
        return spec_field.default_factory()
    return spec_field.default


def _assert_defaults_are_the_configs(schema: type, node, prefix: str, inherited: type | None = None) -> None:
    for spec_field in _options(schema, inherited):
        if spec_field.name not in node:
            continue  # an option no config file sets (resume.allow_changes): its default applies
        if OmegaConf.is_interpolation(node, spec_field.name):
            continue  # e.g. data.resolution=${model.resolution}: the model's value, not a default
        written = OmegaConf.to_container(node, resolve=False)[spec_field.name]
        if dataclasses.is_dataclass(_default(spec_field)):
            written = type(_default(spec_field))(**written)
        assert written == _default(spec_field), f"{prefix}.{spec_field.name}"


def test_the_schema_defaults_are_the_default_configs():
    cfg = compose_config([])
    # the quickstart task sets these on purpose; everything else is config.yaml's or a group's default file
    quickstart = {"data_dir", "max_length"}
    for spec_field in _options(DataOptions):
        if spec_field.name not in quickstart:
            assert cfg.data[spec_field.name] == _default(spec_field), spec_field.name
    for name, schema in COMMON_GROUPS.items():
        if schema is not TrainerOptions:
            _assert_defaults_are_the_configs(schema, cfg[name], name)
    assert (cfg.seed, cfg.ckpt_path) == (_default(_options(TopLevelOptions)[0]), _default(_options(TopLevelOptions)[1]))
    written = yaml.safe_load((Path(config_dir()) / "schema" / "common.yaml").read_text())  # compose_config sets it
    assert written["output_dir"] == TopLevelOptions.output_dir


def test_the_trainer_defaults_are_lightnings():
    parameters = inspect.signature(L.Trainer.__init__).parameters
    for spec_field in _options(TrainerOptions):
        assert _default(spec_field) == parameters[spec_field.name].default, spec_field.name


@pytest.mark.parametrize("family", FAMILY_TASKS)
def test_each_familys_own_defaults_are_its_task_configs(family):
    cfg = compose_config(FAMILY_TASKS[family])
    _assert_defaults_are_the_configs(DATA_SCHEMAS[family], cfg.data, "data", DataOptions)
    if TASK_SCHEMAS[family] is not TaskOptions:
        task_node = cfg.task
        for spec_field in _options(TASK_SCHEMAS[family], TaskOptions):
            if spec_field.name in task_node and spec_field.name not in ("train_split", "val_split"):
                written = OmegaConf.to_container(task_node, resolve=False)[spec_field.name]
                default = _default(spec_field)
                if dataclasses.is_dataclass(default):
                    written = type(default)(**written)
                assert written == default, f"task.{spec_field.name}"
    for name, schema in FAMILY_GROUPS.get(family, {}).items():
        _assert_defaults_are_the_configs(schema, cfg[name], name)


def test_the_family_choices_are_the_builders():
    from loldu_lightning.builders import TASK_FAMILIES

    assert set(TASK_SCHEMAS) == set(DATA_SCHEMAS) == set(TASK_FAMILIES)


@pytest.mark.parametrize("family", FAMILY_TASKS)
def test_every_family_reads_as_its_typed_options(family):
    options = run_options(compose_config(FAMILY_TASKS[family]))
    assert options.task.family == family
    assert isinstance(options.data, DATA_SCHEMAS[family]) and isinstance(options.task, TASK_SCHEMAS[family])
    assert set(options.family_groups) == set(FAMILY_GROUPS.get(family, {}))
    assert options.output_dir == "unused" and options.seed == 42


def test_typed_values_and_what_passes_through():
    options = run_options(
        compose_config(
            [
                "task=vision/cifar10",
                "model=tiny-vit",
                "optimizer.lr=1",
                "+optimizer.betas=[0.9,0.98]",
                "+trainer.max_time=00:01:00:00",
                "+my_table={a: 1}",  # an experiment's own top-level key
            ]
        )
    )
    assert options.optimizer.lr == 1.0 and isinstance(options.optimizer.lr, float)
    assert options.optimizer.torch_options == {"betas": [0.9, 0.98]}
    assert options.trainer.lightning["max_time"] == "00:01:00:00" and options.trainer.max_epochs == 3
    assert isinstance(options.data, VisionDataOptions) and options.data.augment is True
    assert options.adapter.rank == "full"  # LoLDU's own options dataclass, parsed, no adapter built


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.batch_size=0"],
            r"^data.batch_size=0 is not allowed: it must be an integer >= 1\. Set e.g. data.batch_size=32$",
        ),
        (
            ["optimizer.lr=-1"],
            r"^optimizer.lr=-1 is not allowed: it must be a number > 0\. Set e.g. optimizer.lr=1e-3$",
        ),
        (
            ["trainer.max_epochs=three"],
            r"trainer.max_epochs='three' is not allowed: it must be an integer >= -1 \(or null\)",
        ),
        (["data.group_by_length=1"], r"data.group_by_length=1 is not allowed: it must be true or false"),
        (
            ["data.length_group_megabatch=0"],
            r"data.length_group_megabatch=0 is not allowed: it must be an integer >= 1 \(or null\)",
        ),
        (
            ["scheduler.name=step"],
            r"scheduler.name='step' is not allowed: it must be one of constant, cosine, linear, none",
        ),
        (["task.mode=maximum"], r"task.mode='maximum' is not allowed: it must be one of max, min"),
        (
            ["task.family=audio"],
            r"task.family='audio' is not allowed: it must be one of diffusion, glue, instruct, vision",
        ),
        (["checkpoint.save_top_k=-2"], r"checkpoint.save_top_k=-2 is not allowed: it must be an integer >= -1"),
        (
            ["+resume.allow_changes=trainer.max_epochs"],
            r"resume.allow_changes='trainer.max_epochs' .* a list of strings",
        ),
        (
            ["task=vision/cifar10", "model=tiny-vit", "data.holdout_fraction=1"],
            r"data.holdout_fraction=1 .* > 0 and < 1",
        ),
        (["task=instruct/alpaca", "model=tiny-llama", "data.prompt_format=vicuna"], r"one of alpaca, chat"),
        (
            ["task=instruct/alpaca", "model=tiny-llama", "task.generation.num_prompts=-1"],
            r"^task.generation.num_prompts=-1 ",
        ),
        (["task=diffusion/subject", "model=tiny-sd", "sampling.scheduler=lms"], r"sampling.scheduler='lms'"),
        (["seed=-1"], r"^seed=-1 is not allowed: it must be an integer >= 0"),
        (
            ["+data.batchsize=8"],
            r"^data.batchsize is not an option of data for task.family=glue; did you mean data.batch_size\?",
        ),
        (["+task.generation={num_prompts: 2}"], r"^task.generation is not an option of task for task.family=glue"),
        (
            ["+trainer.max_epoch=2"],
            r"^trainer.max_epoch is not an option of trainer .*did you mean trainer.max_epochs\?",
        ),
        (["+optimizer.momentum=0.9"], r"optimizer.momentum is not an option of optimizer with optimizer.name=adamw"),
        (
            ["task=instruct/alpaca", "model=tiny-llama", "+task.generation.max_tokens=8"],
            r"task.generation.max_tokens .*did you mean task.generation.max_new_tokens\?",
        ),
        (["adapter.rank=0"], r"rank must be >= 1"),  # the adapter's own options dataclass
    ],
)
def test_a_bad_value_or_key_is_refused_in_one_line_naming_it(overrides, message):
    with pytest.raises(ValueError, match=message) as refused:
        validate_config(compose_config(overrides))
    assert "\n" not in str(refused.value)


def test_another_familys_options_are_refused_by_name():
    with pytest.raises(ValueError, match=r"data.root is not an option of data for task.family=glue"):
        validate_config(compose_config(["+data.root=/images"]))
    assert validate_config(compose_config(["task=glue/sst2", "+data.train_from_dev=100"])).data.train_from_dev == 100


def test_the_options_page_is_the_schemas():
    assert OPTIONS_PAGE.read_text() == options_page() + "\n", (
        "docs/options.md differs from the schema: python -m loldu_lightning.cli.options --markdown > docs/options.md"
    )


def test_importing_registers_no_resolver_and_a_notebook_composition_still_resolves():
    """Nothing registers at import; validate_config (which train() calls first) registers the tree's
    resolvers, so compose() + validate_config/train(cfg) in a notebook resolves ${package_path:...}."""
    script = """
from omegaconf import OmegaConf
import loldu_lightning.cli.config, loldu_lightning.train, loldu_lightning.__main__, loldu_lightning.builders.schema
names = ("glue_dir", "package_path", "auto_precision", "help_config_groups", "help_options")
print("at import:", [name for name in names if OmegaConf.has_resolver(name)])
from hydra import compose, initialize_config_dir
from loldu_lightning.cli.config import config_dir, validate_config
with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
    cfg = compose("config", overrides=["output_dir=unused"])
validate_config(cfg)
print("after validate_config:", sorted(name for name in names if OmegaConf.has_resolver(name)))
print("data_dir:", cfg.data.data_dir)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=600, check=True
    )
    lines = result.stdout.splitlines()
    assert "at import: []" in lines, result.stdout
    assert (
        "after validate_config: ['auto_precision', 'glue_dir', 'help_config_groups', 'help_options', 'package_path']"
        in lines
    )
    assert any(line.startswith("data_dir: /") and line.endswith("data/quickstart/sst2") for line in lines), lines


def test_the_generated_default_files_are_the_schemas():
    """conf/schema/ is written from the schema; a schema change without `--write` fails here."""
    from loldu_lightning.builders.schema_yaml import stale_files

    assert stale_files(Path(config_dir())) == [], "run `python -m loldu_lightning.builders.schema_yaml --write`"


def test_no_hand_written_file_restates_a_default():
    """Each default is declared once (the schema): config.yaml, the group files and the tasks hold only
    what they change."""
    from loldu_lightning.builders.schema_yaml import restated_defaults

    assert restated_defaults(Path(config_dir())) == []


def test_a_restated_default_is_found(tmp_path):
    """The check above can fail: a task that writes the default `task.mode: max` again is named."""
    import shutil

    from loldu_lightning.builders.schema_yaml import restated_defaults

    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    task = conf / "task" / "glue" / "rte.yaml"
    task.write_text(task.read_text().replace("  name: rte\n", "  name: rte\n  mode: max\n"))
    assert restated_defaults(conf) == ["task/glue/rte.yaml: task.mode"]
