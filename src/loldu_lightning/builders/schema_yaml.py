"""The schema's defaults as the config tree's base files (conf/schema/), so that each default is
declared once, in Python, and every other YAML file holds only what its config changes.

Hydra composes a key only if some YAML file lists it, and overrides a listed key as `key=value`; an
unlisted one needs `+key=value` in `compose()` (the command line adds the `++` for a typed option). The base files list every option the schema marks
`listed`, with its default and its help as a comment; the primary config and the choice files
(models, adapters, tasks) compose them first through their defaults lists:

    conf/schema/common.yaml          top-level options and the groups every family reads
    conf/schema/model.yaml           the model options (each conf/model/<name>.yaml composes it first)
    conf/schema/<family>.yaml        a family's own task and data options (and diffusion's groups)
    conf/schema/adapter/<name>.yaml  an adapter's options dataclass

    python -m loldu_lightning.builders.schema_yaml           # exit 1 and name the stale files
    python -m loldu_lightning.builders.schema_yaml --write   # regenerate them after a schema change

Generated files rather than a Hydra ConfigStore: they are part of the tree a user browses (every
default with its meaning, in one place), and every composition (the app, `compose()` in tests and
notebooks, evaluate/) reads them without registering anything first. tests/test_config_schema.py
fails when they are stale.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from .. import options
from . import schema

HEADER = (
    "# @package {package}\n"
    "# Generated from src/loldu_lightning/{source} by\n"
    "# `python -m loldu_lightning.builders.schema_yaml --write`; edit the schema, not this file.\n"
    "# {what}\n"
)
SCHEMA_SOURCE = "options/groups.py"


def _comment(text: str) -> str:
    return f"  # {text}" if text else ""


def _block(schema_type: type, indent: str, skip: set[str] = frozenset()) -> list[str]:
    """One line per listed option of `schema_type` with a default (a nested group as its own block)."""
    lines = []
    hints = typing.get_type_hints(schema_type)
    for spec_field in schema._options_of(schema_type):
        spec: options.Option = spec_field.metadata["option"]
        if spec_field.name in skip or not spec.listed or not schema._has_default(spec_field):
            continue
        nested = schema._group_schema(hints[spec_field.name])
        if nested is not None:
            lines.append(f"{indent}{spec_field.name}:{_comment(spec.help)}")
            lines += _block(nested, indent + "  ")
            continue
        value = _value(schema._default(spec_field))
        lines.append(f"{indent}{spec_field.name}: {value}{_comment(spec.help)}")
    return lines


def _value(value: Any) -> str:
    """`value` as YAML reads it back (in flow style: a string with `{` or `: ` in quotes)."""
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump([value], default_flow_style=True, width=1_000_000, sort_keys=False).strip()[1:-1]


def _section(name: str, lines: list[str]) -> list[str]:
    return [f"{name}:", *lines] if lines else []


def common_file() -> str:
    lines = _block(options.TopLevelOptions, "")
    lines += _section("task", _block(options.TaskOptions, "  "))
    lines += _section("data", _block(options.DataOptions, "  "))
    for name, group in options.COMMON_GROUPS.items():
        if name != "trainer":  # Lightning's arguments: the presets in conf/trainer/ set them whole
            lines += _section(name, _block(group, "  "))
    what = "The options every run has (config.yaml composes this file first); each family adds its own."
    return HEADER.format(package="_global_", source=SCHEMA_SOURCE, what=what) + "\n".join(lines) + "\n"


def family_file(family: str) -> str | None:
    # a family's own options only: those every family shares are common.yaml's
    shared_task = {f.name for f in dataclasses.fields(options.TaskOptions)}
    shared_data = {f.name for f in dataclasses.fields(options.DataOptions)}
    lines = _section("task", _block(options.TASK_SCHEMAS[family], "  ", shared_task))
    lines += _section("data", _block(options.DATA_SCHEMAS[family], "  ", shared_data))
    for name, group in options.FAMILY_GROUPS.get(family, {}).items():
        lines += _section(name, _block(group, "  "))
    if not lines:
        return None
    what = f"The {family} family's own options (task=<{family} task> composes this file first)."
    return HEADER.format(package="_global_", source=SCHEMA_SOURCE, what=what) + "\n".join(lines) + "\n"


def model_file() -> str:
    what = "The model options' defaults (each conf/model/<name>.yaml composes this file first)."
    lines = _block(options.ModelOptions, "")
    return HEADER.format(package="model", source=SCHEMA_SOURCE, what=what) + "\n".join(lines) + "\n"


def adapter_file(name: str, options_type: type) -> str | None:
    """The adapter's options with their library defaults (conf/adapter/<name>.yaml changes some)."""
    lines = []
    for spec_field in dataclasses.fields(options_type):
        if not schema._has_default(spec_field):
            continue
        value = _value(schema._default(spec_field))
        lines.append(f"{spec_field.name}: {value}{_comment(spec_field.metadata.get('help', ''))}")
    if not lines:
        return None
    source = options_type.__module__.removeprefix("loldu_lightning.").replace(".", "/") + ".py"
    what = f"The defaults of {options_type.__name__} (conf/adapter/{name}.yaml composes this file first)."
    return HEADER.format(package="adapter", source=source, what=what) + "\n".join(lines) + "\n"


def generated_files() -> dict[str, str]:
    """Path under conf/ -> the text the schema gives it."""
    from ..adapters import ADAPTERS

    files = {"schema/common.yaml": common_file(), "schema/model.yaml": model_file()}
    for family in options.FAMILIES:
        text = family_file(family)
        if text is not None:
            files[f"schema/{family}.yaml"] = text
    for name, adapter_type in ADAPTERS.items():
        text = adapter_file(name, adapter_type.options_type)
        if text is not None:
            files[f"schema/adapter/{name}.yaml"] = text
    return files


def stale_files(conf: Path) -> list[str]:
    """The generated files that are missing or differ from what the schema gives, and stray ones."""
    files = generated_files()
    stale = [path for path, text in files.items() if not (conf / path).is_file() or (conf / path).read_text() != text]
    stray = [
        str(p.relative_to(conf)) for p in (conf / "schema").rglob("*.yaml") if str(p.relative_to(conf)) not in files
    ]
    return sorted(stale + stray)


def write(conf: Path) -> list[str]:
    """Regenerate conf/schema/ (stray files removed); the paths written."""
    files = generated_files()
    for path in stale_files(conf):
        target = conf / path
        if path in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[path])
        else:
            target.unlink()
    return sorted(files)


def main(argv: list[str] | None = None) -> int:
    from ..cli.config_tree import config_dir

    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--write"]):
        print("usage: python -m loldu_lightning.builders.schema_yaml [--write]", file=sys.stderr)
        return 2
    conf = Path(config_dir())
    if args:
        print(f"wrote {len(write(conf))} files under {conf / 'schema'}")
        return 0
    stale = stale_files(conf)
    for path in stale:
        print(f"{conf / path} is stale: run `python -m loldu_lightning.builders.schema_yaml --write`")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())


# Files that restate a value on purpose: an experiment pins its values whatever the task sets, and the
# trainer presets are Lightning's settings in full.
PINNING_FOLDERS = ("schema", "experiment", "trainer", "hydra", "logger", "debug")


def flatten(mapping: dict, prefix: str):
    """(dotted key, value) of every leaf a config file sets (its defaults list and hydra block aside)."""
    for key, value in mapping.items():
        if key in ("defaults", "hydra"):
            continue
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            yield from flatten(value, dotted)
        else:
            yield dotted, value


def _inherited_defaults(conf: Path) -> dict[str, dict[str, Any]]:
    """Per family (and `adapter/<name>`), the value each key has from the generated files alone."""
    common = dict(flatten(yaml.safe_load((conf / "schema" / "common.yaml").read_text()), ""))
    inherited = {}
    for family in options.FAMILIES:
        path = conf / "schema" / f"{family}.yaml"
        own = dict(flatten(yaml.safe_load(path.read_text()), "")) if path.is_file() else {}
        inherited[family] = {**common, **own}
    inherited["model"] = dict(flatten(yaml.safe_load((conf / "schema" / "model.yaml").read_text()), ""))
    for path in (conf / "schema" / "adapter").glob("*.yaml"):
        inherited[f"adapter/{path.stem}"] = dict(flatten(yaml.safe_load(path.read_text()), ""))
    return inherited


def restated_defaults(conf: Path) -> list[str]:
    """`file: key` for every value a hand-written file sets to the default it already gets from
    conf/schema/ (which the files composed after it cannot have changed). Experiments and trainer
    presets are left out (PINNING_FOLDERS), and so is a choice file's `name` (its identity)."""
    inherited = _inherited_defaults(conf)
    found = []
    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        if rel.parts[0] in PINNING_FOLDERS:
            continue
        data = yaml.safe_load(path.read_text()) or {}
        if rel.parts[0] == "task":
            family = (data.get("task") or {}).get("family", "glue")
            defaults = inherited[family]
        elif rel.parts[0] == "adapter":
            defaults = inherited.get(f"adapter/{path.stem}", {})
        elif rel.parts[0] == "model":
            defaults = inherited["model"]
        elif len(rel.parts) == 1:
            defaults = inherited["glue"]  # config.yaml: the keys every family has
        else:
            group = rel.parts[0]
            defaults = {
                key.removeprefix(f"{group}."): v for key, v in inherited["glue"].items() if key.startswith(group)
            }
        for key, value in flatten(data, ""):
            if key == "name" and value == path.stem:
                continue
            if key in defaults and defaults[key] == value:
                found.append(f"{rel}: {key}")
    return found
