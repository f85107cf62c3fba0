"""How an option is declared: a dataclass field carrying its default, what it means, an example and
its allowed range or choices (`option`), or a field every config sets itself (`required`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Option:
    """What one option means and which values it takes beyond its type.

    `minimum`/`maximum` bound numbers (`above`/`below` make a bound strict); `choices` returns the
    allowed names (a function, so that registries are imported only when a config is checked);
    `path` marks a folder or file that must exist when set (checked by preflight, not at composition).
    `listed=False` leaves the option out of the config tree's base files (conf/schema/, generated from
    here): a config that uses it lists it, and elsewhere it is added as `+key=value`.
    """

    help: str
    example: str
    minimum: float | None = None
    above: bool = False
    maximum: float | None = None
    below: bool = False
    choices: Callable[[], Iterable[str]] | None = None
    path: Literal["folder", "file"] | None = None
    holds: str = ""  # for a path: what it must hold, named in the error
    listed: bool = True


def option(default: Any, help: str, example: str, **allowed: Any) -> Any:
    """A dataclass field declaring one option: its default, what it means, an example and its range."""
    metadata = {"option": Option(help, example, **allowed)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def required(help: str, example: str, **allowed: Any) -> Any:
    """A dataclass field declaring an option every config sets itself (a task's family and name)."""
    return field(metadata={"option": Option(help, example, **allowed)})


def group(schema: type, help: str) -> Any:
    """A field holding a nested group of options (e.g. `task.generation`)."""
    return field(default_factory=schema, metadata={"option": Option(help, "")})


def passthrough(help: str) -> Any:
    """A field collecting the keys a group passes on unchecked (a torch optimizer's or Lightning's)."""
    return field(default_factory=dict, metadata={"passthrough": help})


def registry(module: str, name: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(module, __package__), name))

    return names
