"""Every task and every experiment composes to the same resolved config and the same typed options as the
committed snapshot (tests/snapshots/resolved_configs.json), so moving where an option is declared never
silently changes a run.

After a change that is meant to alter a default, regenerate the snapshot and review its diff:

    LOLDU_UPDATE_SNAPSHOT=1 python -m pytest tests/test_config_snapshot.py -q -p no:cacheprovider
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from loldu_lightning.builders.schema import run_options
from loldu_lightning.cli.config import config_dir
from tests.helpers import compose_config, list_config_options

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "resolved_configs.json"
PACKAGE_ROOT = str(Path(config_dir()).resolve().parent)


def machine_free(value):
    """Values that depend on where the test runs (the checkout's path, whether a GPU is present) as
    placeholders, so the snapshot is the same on every machine."""
    if isinstance(value, dict):
        return {key: machine_free(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [machine_free(item) for item in value]
    if isinstance(value, str) and "/loldu_lightning/" in value:
        return "<package>/" + value.split("/loldu_lightning/", 1)[1]
    return value


def plain_options(options):
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return {f.name: plain_options(getattr(options, f.name)) for f in dataclasses.fields(options)}
    if isinstance(options, dict):
        return {key: plain_options(value) for key, value in options.items()}
    if isinstance(options, (list, tuple)):
        return [plain_options(value) for value in options]
    return value_of(options)


def value_of(value):
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def resolved(overrides: list[str]) -> dict:
    """The resolved config and the typed options of one composition, or the one-line refusal it gets."""
    try:
        cfg = compose_config(overrides)
        config = machine_free(OmegaConf.to_container(cfg, resolve=True))
        options = machine_free(plain_options(run_options(cfg)))
        # trainer=auto's precision is decided on the machine that trains: keep the interpolation itself
        raw_precision = str(cfg.trainer._get_node("precision")._value())
        if raw_precision.startswith("${auto_precision"):
            config["trainer"]["precision"] = options["trainer"]["precision"] = raw_precision
        return {"config": config, "options": options}
    except Exception as error:  # a composition the tree refuses is part of the snapshot too
        return {"refused": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}


def compositions() -> dict[str, list[str]]:
    cases = {"(defaults)": []}
    for task in list_config_options("task"):
        cases[f"task={task}"] = [f"task={task}"]
    for experiment in list_config_options("experiment"):
        cases[f"experiment={experiment}"] = [f"experiment={experiment}"]
    return cases


def current() -> dict:
    return {name: resolved(overrides) for name, overrides in compositions().items()}


def test_every_task_and_experiment_resolves_as_in_the_snapshot():
    now = current()
    if os.environ.get("LOLDU_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    snapshot = json.loads(SNAPSHOT.read_text())
    assert sorted(now) == sorted(snapshot), "a task or experiment was added or removed: regenerate the snapshot"
    changed = [name for name in snapshot if now[name] != snapshot[name]]
    assert not changed, f"these compositions resolve differently from the snapshot: {changed}"
    # the snapshot holds real compositions, not only refusals
    assert sum("options" in entry for entry in snapshot.values()) >= len(snapshot) // 2


@pytest.mark.parametrize("name", ["(defaults)", "task=glue/sst2"])
def test_a_changed_default_is_caught(name):
    """The comparison above sees a change of one value deep inside a composition."""
    snapshot = json.loads(SNAPSHOT.read_text())
    now = resolved(compositions()[name])
    assert now == snapshot[name]
    now["options"]["data"]["batch_size"] += 1
    assert now != snapshot[name]
