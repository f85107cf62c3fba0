"""Reading a composed config into the typed options (`run_options(cfg)`), and listing them.

The options are declared once, in `loldu_lightning.options` (pure dataclasses: type, default, meaning,
range). `run_options` turns a composed config into them, refusing in one line that names the key a
value of the wrong type, out of range or not among the choices, and a key that no schema declares
(naming the closest declared one). `--help`, `python -m loldu_lightning.cli.options`, docs/options.md
and the config tree's generated defaults (conf/schema/, builders/schema_yaml.py) list them from here.

What is typed: the top-level `seed`, `ckpt_path` and `output_dir`; the groups `task`, `data` and
`model` (options every family reads, plus each family's own); `optimizer`, `scheduler`, `checkpoint`,
`callbacks`, `resume`; the numeric keys of `trainer`; diffusion's `loss`, `sampling` and `eval`.
The adapter's options are typed by each adapter's own options dataclass (adapters/options.py).

What passes through: `logger`, the Trainer keys other than the numeric ones (Lightning checks them,
and a key `lightning.Trainer` does not take is refused here), keyword arguments of the chosen torch
optimizer (`+optimizer.betas=[0.9,0.98]`), and top-level keys that an experiment adds for its own
interpolations (`minilm_gap_budget`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from omegaconf import DictConfig, OmegaConf

from ..options import (
    COMMON_GROUPS,
    DATA_SCHEMAS,
    FAMILY_GROUPS,
    MODEL_SCHEMAS,
    TASK_SCHEMAS,
    DataOptions,
    ModelOptions,
    Option,
    RunOptions,
    TaskOptions,
    TopLevelOptions,
)
from .plain import plain

NoneType = type(None)


# -- types and ranges -----------------------------------------------------------------------------


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _accepts(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    if len(_members(annotation)) > 1:
        return any(_accepts(value, member) for member in _members(annotation))
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_accepts(entry, item) for entry in value)
    if origin is dict or dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    if annotation is NoneType:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    raise TypeError(f"the option schema uses a type it cannot check: {annotation!r}")


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _kind_word(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of {_PLURALS[item]}"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    return _WORDS.get(annotation, "any value")


def describe(annotation: Any, spec: Option) -> str:
    """The allowed values in words, e.g. `an integer >= 1 (or null)`, `a number > 0 and <= 1`."""
    members = [member for member in _members(annotation) if member is not NoneType]
    if float in members and int in members:
        members.remove(int)  # a number covers the integers
    kind = " or ".join(_kind_word(member) for member in members)
    limits = []
    if spec.minimum is not None:
        limits.append(f"{'>' if spec.above else '>='} {spec.minimum:g}")
    if spec.maximum is not None:
        limits.append(f"{'<' if spec.below else '<='} {spec.maximum:g}")
    text = f"{kind} {' and '.join(limits)}".strip()
    if spec.choices is not None:
        text = f"one of {', '.join(sorted(spec.choices()))}"
    return text + (" (or null)" if NoneType in _members(annotation) else "")


def _in_range(value: Any, spec: Option) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    if spec.minimum is not None and (value <= spec.minimum if spec.above else value < spec.minimum):
        return False
    return spec.maximum is None or (value < spec.maximum if spec.below else value <= spec.maximum)


def check_value(key: str, value: Any, annotation: Any, spec: Option) -> Any:
    """`value` as the option's type (an integer given for a number becomes a float); a ValueError
    naming the key, the value, what is allowed and an example when it does not fit."""
    allowed = _accepts(value, annotation) and _in_range(value, spec)
    if allowed and spec.choices is not None and value is not None:
        allowed = value in set(spec.choices())
    if not allowed:
        raise ValueError(
            f"{key}={value!r} is not allowed: it must be {describe(annotation, spec)}. Set e.g. {key}={spec.example}"
        )
    if isinstance(value, int) and not isinstance(value, bool) and int not in _members(annotation):
        return float(value)
    return value


# -- reading a composed config --------------------------------------------------------------------

_UNRESOLVED = object()


def _read(node: DictConfig, key: str, raw: Mapping[str, Any]) -> Any:
    """The resolved value of `node[key]`. A `${hydra:...}` value is known only inside the Hydra job
    (the command line is checked before Hydra starts it): until then it stays as written."""
    written = raw.get(key)
    if isinstance(written, str) and written.startswith("${hydra:"):
        from omegaconf.errors import InterpolationResolutionError

        try:
            value = plain(node[key])
        except InterpolationResolutionError:
            return _UNRESOLVED
        return _UNRESOLVED if value is None else value
    return plain(node[key])


def _group_schema(annotation: Any) -> type | None:
    """The schema of a nested group (`task.generation`), which may be declared optional (null = off)."""
    members = [member for member in _members(annotation) if member is not NoneType]
    if len(members) == 1 and dataclasses.is_dataclass(members[0]):
        return members[0]
    return None


def _options_of(schema: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(schema) if "option" in f.metadata]


def _passthrough_field(schema: type) -> str | None:
    return next((f.name for f in dataclasses.fields(schema) if "passthrough" in f.metadata), None)


def _has_default(spec_field: dataclasses.Field) -> bool:
    return spec_field.default is not dataclasses.MISSING or spec_field.default_factory is not dataclasses.MISSING


def _default(spec_field: dataclasses.Field) -> Any:
    if spec_field.default_factory is not dataclasses.MISSING:
        return spec_field.default_factory()
    return spec_field.default


def unknown_key_error(prefix: str, key: str, known: Iterable[str], where: str = "") -> ValueError:
    """A misspelt key: name the closest declared one, and every one."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    guess = f"; did you mean {prefix}.{close[0]}?" if close else "."
    return ValueError(
        f"{prefix}.{key} is not an option of {prefix}{where}{guess} Options of {prefix}: {', '.join(known)} "
        f"(all listed by `python -m loldu_lightning.cli.options`)"
    )


def read_group(schema: type, node: Any, prefix: str, where: str = "", open_keys: bool = False) -> Any:
    """`node` (a config mapping, or None for every default) as `schema`, each value checked.

    A key the schema does not declare is refused unless `open_keys` (the top level, where experiments
    keep their own tables) or the schema passes it on (`passthrough_keys`).
    """
    if node is None:
        node = OmegaConf.create({})
    if not isinstance(node, (DictConfig, Mapping)):
        raise ValueError(
            f"{prefix}={node!r} is not allowed: it must be a mapping of options. Set e.g. {prefix}.<key>=..."
        )
    if not isinstance(node, DictConfig):
        node = OmegaConf.create(dict(node))
    raw = OmegaConf.to_container(node, resolve=False)
    hints = typing.get_type_hints(schema)
    values: dict[str, Any] = {}
    for spec_field in _options_of(schema):
        key = f"{prefix}.{spec_field.name}" if prefix else spec_field.name
        annotation = hints[spec_field.name]
        nested = _group_schema(annotation)
        if nested is not None:
            if raw.get(spec_field.name, ...) is None and NoneType in _members(annotation):
                values[spec_field.name] = None  # written as null: the group is off
            else:
                values[spec_field.name] = read_group(nested, node.get(spec_field.name), key, where)
            continue
        value = _read(node, spec_field.name, raw) if spec_field.name in node else _default(spec_field)
        if value is _UNRESOLVED:
            values[spec_field.name] = raw[spec_field.name]
            continue
        values[spec_field.name] = check_value(key, value, annotation, spec_field.metadata["option"])
    extra_name = _passthrough_field(schema)
    if extra_name is not None:
        values[extra_name] = {}
    options = schema(**values)
    declared = {f.name for f in _options_of(schema)}
    passed_on = schema.passthrough_keys(options) if hasattr(schema, "passthrough_keys") else set()
    for key in node:
        if key in declared:
            continue
        if key in passed_on:
            values[extra_name][key] = plain(node[key])
        elif not open_keys:
            if hasattr(schema, "passthrough_where"):
                where += schema.passthrough_where(options)
            raise unknown_key_error(prefix, str(key), declared | passed_on, where)
    return dataclasses.replace(options, **{extra_name: values[extra_name]}) if extra_name else options


def group_keys(cfg: DictConfig, prefix: str) -> tuple[set[str], set[str]] | None:
    """The keys the typed schema at `prefix` (e.g. `data`, `task.generation`, `adapter`) takes: its
    declared options and the keys it passes on (a torch optimizer's, Lightning's); None where keys
    are free (the top level, `logger`, `callbacks.extra`, experiments' own tables)."""
    head, *rest = prefix.split(".") if prefix else [""]
    family = OmegaConf.select(cfg, "task.family", default=None)
    if head == "adapter" and not rest:
        from ..adapters import ADAPTERS

        name = OmegaConf.select(cfg, "adapter.name", default=None)
        if name not in ADAPTERS:
            return None
        return {"name", *(f.name for f in dataclasses.fields(ADAPTERS[name].options_type))}, set()
    schema = {
        "task": TASK_SCHEMAS.get(family, TaskOptions),
        "data": DATA_SCHEMAS.get(family, DataOptions),
        "model": MODEL_SCHEMAS.get(family, ModelOptions),
        **COMMON_GROUPS,
        **FAMILY_GROUPS.get(family, {}),
    }.get(head)
    for part in rest:
        if schema is None:
            return None
        annotation = typing.get_type_hints(schema).get(part)
        schema = _group_schema(annotation) if annotation is not None else None
    if schema is None:
        return None
    declared = {f.name for f in _options_of(schema)}
    passed_on: set[str] = set()
    if hasattr(schema, "passthrough_keys"):
        try:
            options = read_group(schema, OmegaConf.select(cfg, prefix, default=None), prefix)
        except ValueError:
            options = schema()
        passed_on = schema.passthrough_keys(options) - declared
    return declared, passed_on


def parse_adapter_options(options: Mapping[str, Any]) -> Any:
    """The adapter's options dataclass, checked by the adapter's own type; no adapter is built."""
    from ..adapters import ADAPTERS
    from ..adapters.options import parse_options

    name = options.get("name")
    if name not in ADAPTERS:
        raise ValueError(f"adapter.name={name!r} is not allowed: it must be one of {', '.join(sorted(ADAPTERS))}.")
    return parse_options(
        ADAPTERS[name].options_type, {key: value for key, value in options.items() if key != "name"}, name
    )


def run_options(cfg: DictConfig | Mapping[str, Any]) -> RunOptions:
    """The composed config (or its plain conversion) as typed objects; the first value or key that does
    not fit is refused with a ValueError naming it. Reads only the config (paths, the hub and the model
    are preflight's)."""
    from ..cli.config_tree import register_value_resolvers
    from .adapter import adapter_options

    register_value_resolvers()
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    top = read_group(TopLevelOptions, cfg, "", open_keys=True)
    family_field = next(f for f in _options_of(TaskOptions) if f.name == "family")
    family = check_value("task.family", plain(cfg.task.get("family")), str, family_field.metadata["option"])
    where = f" for task.family={family}"
    task = read_group(TASK_SCHEMAS[family], cfg.task, "task", where)
    groups = {name: read_group(schema, cfg.get(name), name) for name, schema in COMMON_GROUPS.items()}
    data = read_group(DATA_SCHEMAS[family], cfg.get("data"), "data", where)
    family_groups = {
        name: read_group(schema, cfg.get(name), name, where) for name, schema in FAMILY_GROUPS.get(family, {}).items()
    }
    model = model_options(cfg.get("model"), family)
    adapter = adapter_options(cfg, model)
    parsed_adapter = parse_adapter_options(adapter)  # refuses a missing or unknown adapter.name first
    return RunOptions(
        seed=top.seed,
        ckpt_path=top.ckpt_path,
        output_dir=top.output_dir,
        task=task,
        data=data,
        model=model,
        **groups,
        adapter_name=adapter["name"],
        adapter=parsed_adapter,
        family_groups=family_groups,
    )


def model_options(node: DictConfig | Mapping[str, Any] | None, family: str = "glue") -> ModelOptions:
    """The `model` node (a composed config's, or `cli.overrides.model_config(name)`) as the
    family's model options; a key no model schema declares is refused, naming the closest one."""
    where = f" for task.family={family}" if family in MODEL_SCHEMAS else ""
    return read_group(MODEL_SCHEMAS.get(family, ModelOptions), node, "model", where)


def check_paths(options: RunOptions) -> None:
    """Refuse a path option that is set but missing (null means the option is not used)."""
    for prefix, group_options in (("data", options.data), *options.family_groups.items()):
        for spec_field in _options_of(type(group_options)):
            spec: Option = spec_field.metadata["option"]
            value = getattr(group_options, spec_field.name)
            if spec.path is None or value in (None, ""):
                continue
            key = f"{prefix}.{spec_field.name}"
            path = Path(str(value)).expanduser()
            if not (path.is_dir() if spec.path == "folder" else path.is_file()):
                found = (
                    f"{path} is a {'file' if path.is_file() else 'folder'}"
                    if path.exists()
                    else f"{path} does not exist"
                )
                raise FileNotFoundError(
                    f"{key}={value} is not a {spec.path}: {found}. Point {key} at {spec.holds}, e.g. {key}={spec.example}"
                )


# -- listing the options (--help, python -m loldu_lightning.cli.options, docs/options.md) -------------


@dataclass(frozen=True)
class OptionRow:
    key: str
    allowed: str
    default: str
    help: str
    example: str = ""  # a value to set it to (tests set every listed option)


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[OptionRow]
    note: str = ""


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_yaml(item)}" for key, item in value.items()) + "}"
    return str(value)


def _rows(schema: type, prefix: str, inherited: type | None = None) -> list[OptionRow]:
    hints = typing.get_type_hints(schema)
    skip = {f.name for f in dataclasses.fields(inherited)} if inherited else set()
    rows = []
    for spec_field in _options_of(schema):
        if spec_field.name in skip:
            continue
        key = f"{prefix}.{spec_field.name}" if prefix else spec_field.name
        annotation, spec = hints[spec_field.name], spec_field.metadata["option"]
        if _group_schema(annotation) is not None:
            rows += _rows(_group_schema(annotation), key)
            continue
        default = _yaml(_default(spec_field)) if _has_default(spec_field) else "(required)"
        rows.append(OptionRow(key, describe(annotation, spec), default, spec.help, spec.example))
    return rows


def sections() -> list[Section]:
    """Every typed option, grouped as a user meets them: top level, task and data per family, the rest."""
    result = [
        Section("top level", _rows(TopLevelOptions, ""), "other top-level keys are free for experiments' own tables")
    ]
    result.append(Section("task (every family)", _rows(TaskOptions, "task")))
    for family, schema in TASK_SCHEMAS.items():
        if schema is not TaskOptions:
            result.append(Section(f"task ({family})", _rows(schema, "task", TaskOptions)))
    result.append(Section("data (every family)", _rows(DataOptions, "data")))
    for family, schema in DATA_SCHEMAS.items():
        result.append(Section(f"data ({family})", _rows(schema, "data", DataOptions)))
    model_note = (
        "each conf/model/<name>.yaml sets its own values; a default applies where a model file leaves the key out"
    )
    result.append(Section("model (every family)", _rows(ModelOptions, "model"), model_note))
    for family, schema in MODEL_SCHEMAS.items():
        if schema is not ModelOptions:
            result.append(Section(f"model ({family})", _rows(schema, "model", ModelOptions)))
    for name, schema in COMMON_GROUPS.items():
        passthrough_name = _passthrough_field(schema)
        note = ""
        if passthrough_name is not None:
            note = next(f for f in dataclasses.fields(schema) if f.name == passthrough_name).metadata["passthrough"]
        result.append(Section(name, _rows(schema, name), note))
    for family, family_groups in FAMILY_GROUPS.items():
        for name, schema in family_groups.items():
            result.append(Section(f"{name} ({family})", _rows(schema, name)))
    return result


def adapter_sections() -> list[Section]:
    """Each adapter's options, typed by its own options dataclass (adapters/options.py), with the
    run's default: the value in the adapter's config file (conf/adapter/<name>.yaml) where it sets
    one, the dataclass default otherwise (a library default that differs is named beside it)."""
    import yaml

    from ..adapters import ADAPTERS
    from ..cli.config_tree import config_dir

    result = []
    for name, adapter_type in ADAPTERS.items():
        config_file = Path(config_dir()) / "adapter" / f"{name}.yaml"
        run_defaults = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        rows = []
        for spec_field in dataclasses.fields(adapter_type.options_type):
            required = spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING
            library = "(required)" if required else _yaml(_default(spec_field))
            run = _yaml(run_defaults[spec_field.name]) if spec_field.name in run_defaults else library
            note = (
                ""
                if run == library or required
                else f"library default ({adapter_type.options_type.__name__}): `{library}`"
            )
            # an options type that declares its options' meaning and allowed names (LoLDUConfig) is listed with them
            choices = spec_field.metadata.get("choices")
            allowed = f"one of: {' | '.join(sorted(choices))}" if choices else str(spec_field.type)
            meaning = "; ".join(part for part in (spec_field.metadata.get("help", ""), note) if part)
            rows.append(OptionRow(f"adapter.{spec_field.name}", allowed, run, meaning))
        result.append(Section(f"adapter ({name})", rows))
    return result
