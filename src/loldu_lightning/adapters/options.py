"""Turn a config mapping (plain dict or OmegaConf node) into a validated options dataclass."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

OptionsT = TypeVar("OptionsT")


def to_plain(value: Any) -> Any:
    """Recursively convert OmegaConf containers (or any Mapping/Sequence) into dicts and lists.

    Done here, rather than with OmegaConf.to_container, so that the adapters accept plain dicts
    without depending on OmegaConf; iterating a DictConfig resolves its interpolations.
    """
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [to_plain(item) for item in value]
    return value


def described(default: Any, help: str) -> Any:
    """An adapter option's dataclass field with what it means (listed by `--help`, docs/options.md and
    the config tree's generated defaults, conf/schema/adapter/)."""
    return dataclasses.field(default=default, metadata={"help": help})


def parse_options(options_type: type[OptionsT], raw: Mapping[str, Any], adapter_name: str) -> OptionsT:
    """Build `options_type` from `raw`, rejecting keys the adapter does not know.

    Unknown keys are almost always typos (`adapter.rnak=8`); failing loudly here, before any model
    is loaded, is what lets the app check a config in milliseconds.
    """
    allowed = [field.name for field in dataclasses.fields(options_type)]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        # PEFT users type `r`; here every low-rank adapter shares the key `rank`.
        hint = " (PEFT's `r` is called `rank` here: adapter.rank=...)" if "r" in unknown and "rank" in allowed else ""
        raise ValueError(
            f"adapter {adapter_name!r} got unknown option(s) {unknown}; allowed options are {allowed}{hint}"
        )
    required = [
        field.name
        for field in dataclasses.fields(options_type)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ValueError(f"adapter {adapter_name!r} needs option(s) {missing}; allowed options are {allowed}")
    return options_type(**{key: to_plain(value) for key, value in raw.items()})


def require_positive_int(adapter_name: str, option: str, value: Any) -> None:
    """Raise a ValueError naming the option unless `value` is an int >= 1 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"adapter {adapter_name!r}: option {option!r} must be an integer >= 1, got {value!r}")


def require_number(
    adapter_name: str, option: str, value: Any, *, minimum: float | None = None, maximum: float | None = None
) -> None:
    """Raise a ValueError naming the option unless `value` is a real number inside [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"adapter {adapter_name!r}: option {option!r} must be a number, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(
            f"adapter {adapter_name!r}: option {option!r} must lie in [{minimum}, {maximum}], got {value!r}"
        )


def require_target_modules(adapter_name: str, value: Any) -> None:
    """Target modules are a list of module-name suffixes, one regex string, or None (PEFT's default)."""
    if value is None or isinstance(value, str):
        return
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return
    raise ValueError(
        f"adapter {adapter_name!r}: option 'target_modules' must be a non-empty list of module names "
        f"(e.g. [query, value]), a regex string, or null; got {value!r}"
    )
