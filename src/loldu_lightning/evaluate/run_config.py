"""A finished run's configuration as plain dicts and lists, read with PyYAML (no Hydra, no OmegaConf).

`python -m loldu_lightning` saves the composed config to `<run>/.hydra/config.yaml` as composed:
plain YAML in which interpolations are still `${...}` strings. `read_run_config` loads it, applies
`key=value` overrides (values parsed as YAML, `5e-2` a float as on the command line) and resolves
the interpolations:

- references to other keys, whole (`${model.target_modules}`, `${seed}`) or inside a string;
- `${oc.select:key,default}`;
- the config tree's own resolvers (`${auto_precision:...}`, `${glue_dir:...}`, `${package_path:...}`),
  computed on this machine as when the run resolved them.

Anything else (`${hydra:runtime.output_dir}`, `${now:...}`: the launch's own values) stays as
written; evaluations never read those keys.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

RUN_CONFIG = Path(".hydra") / "config.yaml"
_MISSING = object()


class _Loader(yaml.SafeLoader):
    """YAML as the command line reads it: `1e-3` is a float, dates stay strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def read_run_config(run_dir: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    """`<run_dir>/.hydra/config.yaml` with `overrides` (`key=value`) applied and interpolations resolved."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --run-dir must be a directory written by `python -m loldu_lightning "
            "task=...`; for an adapter folder use --adapter <folder> --model <config>."
        )
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a mapping; is it a run's saved config?")
    return resolve(apply_overrides(config, overrides))


def apply_overrides(config: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `config` with each `dotted.key=value` set (missing levels created; a leading `+` allowed)."""
    result = copy.deepcopy(dict(config))
    for override in overrides:
        key, equals, text = override.partition("=")
        key = key.lstrip("+")
        if not equals or not key:
            raise ValueError(f"override {override!r} is not key=value (e.g. data.val_limit=100)")
        node = result
        *parents, last = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = yaml.load(text, Loader=_Loader) if text else ""
    return result


def resolve(config: Mapping[str, Any], resolvers: Mapping[str, Callable[..., Any]] | None = None) -> dict[str, Any]:
    """`config` with its interpolations resolved (see the module docstring); `resolvers` replace the defaults."""
    root = copy.deepcopy(dict(config))
    return _Resolver(root, resolvers).node(root, ())


def _default_resolvers() -> dict[str, Callable[..., Any]]:
    # The config tree's own resolvers are plain functions kept in cli/config_tree.py (which imports OmegaConf to
    # register them), so they are looked up only for a config that calls one.
    from ..cli.config_tree import auto_precision, glue_dir, package_path

    return {"auto_precision": auto_precision, "glue_dir": glue_dir, "package_path": package_path}


class _Resolver:
    def __init__(self, root: dict[str, Any], resolvers: Mapping[str, Callable[..., Any]] | None) -> None:
        self.root = root
        self._resolvers = resolvers
        self.active: set[tuple[str, ...]] = set()

    def node(self, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {key: self.node(item, (*path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [self.node(item, path) for item in value]
        if isinstance(value, str) and "${" in value:
            return self.string(value)
        return value

    def string(self, text: str) -> Any:
        pieces = _split(text)
        if len(pieces) == 1 and isinstance(pieces[0], tuple):
            return self.interpolation(pieces[0][1], text)
        parts = []
        for piece in pieces:
            if isinstance(piece, tuple):
                value = self.interpolation(piece[1], piece[0])
                parts.append("null" if value is None else str(value))
            else:
                parts.append(piece)
        return "".join(parts)

    def interpolation(self, inner: str, original: str) -> Any:
        name, colon, arguments = inner.partition(":")
        if not colon or "${" in name:  # a key, perhaps built from other keys: ${budget.${task.name}.epochs}
            found = self.lookup(str(self.string(inner)) if "${" in inner else inner.strip())
            return original if found is _MISSING else found
        name = name.strip()
        if name == "oc.select":
            key, *default = _split_arguments(arguments)
            found = self.lookup(str(self.argument(key)))
            if found is _MISSING:
                return self.argument(default[0]) if default else None
            return found
        if name in self.resolvers():
            return self.resolvers()[name](*(self.argument(argument) for argument in _split_arguments(arguments)))
        return original

    def resolvers(self) -> Mapping[str, Callable[..., Any]]:
        if self._resolvers is None:
            self._resolvers = _default_resolvers()
        return self._resolvers

    def argument(self, text: str) -> Any:
        text = text.strip()
        if "${" in text:
            return self.string(text)
        return yaml.load(text, Loader=_Loader) if text else ""

    def lookup(self, dotted: str) -> Any:
        path = tuple(dotted.split("."))
        if path in self.active:
            raise ValueError(f"the interpolation ${{{dotted}}} refers to itself")
        value: Any = self.root
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
        self.active.add(path)
        try:
            return self.node(value, path)
        finally:
            self.active.discard(path)


def _split(text: str) -> list[str | tuple[str, str]]:
    """Literal pieces and (`${...}`, inner text) pairs of `text`, the pairs matched with nesting."""
    pieces: list[str | tuple[str, str]] = []
    index = 0
    while True:
        start = text.find("${", index)
        if start < 0:
            if index < len(text):
                pieces.append(text[index:])
            return pieces
        if start > index:
            pieces.append(text[index:start])
        depth, position = 0, start
        while position < len(text):
            if text.startswith("${", position):
                depth += 1
                position += 2
                continue
            if text[position] == "}":
                depth -= 1
                if depth == 0:
                    break
            position += 1
        if depth:
            raise ValueError(f"unbalanced interpolation in {text!r}")
        pieces.append((text[start : position + 1], text[start + 2 : position]))
        index = position + 1


def _split_arguments(text: str) -> list[str]:
    """A resolver's comma-separated arguments; commas inside a nested `${...}` do not split."""
    arguments, depth, current = [], 0, ""
    for index, character in enumerate(text):
        if text.startswith("${", index):
            depth += 1
        elif character == "}" and depth:
            depth -= 1
        if character == "," and not depth:
            arguments.append(current)
            current = ""
        else:
            current += character
    arguments.append(current)
    return arguments
