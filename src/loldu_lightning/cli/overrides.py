"""Check a command line's overrides before Hydra starts a run.

- `check_override_keys`: name the allowed keys when an override has a typo (`adapter.rnak=8`).
  Hydra already refuses unknown keys; this check runs first so the message also lists what exists.
- `compose_single_run`: the config one run of this command line would get, composed without
  creating a run folder, so its values can be checked (and refused in one line) before Hydra
  starts the job. Sweeps are composed per job by Hydra and checked there.
"""

from __future__ import annotations

import difflib
import functools

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from .config import config_dir, register_resolvers

_ABSENT = object()


def _groups() -> set[str]:
    from pathlib import Path

    return {p.name for p in Path(config_dir()).iterdir() if p.is_dir()}


def check_override_keys(args: list[str]) -> None:
    """Raise ValueError naming the allowed keys when an override sets a key the config lacks."""
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:
        return  # a syntax error: Hydra reports it with its own message
    groups = _groups()
    selections, value_keys = [], []
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_add() or override.is_force_add() or override.is_delete():
            continue
        if key.split("/")[0] in groups and "." not in key:
            if override.is_sweep_override():
                return  # keys depend on which group option each job picks; Hydra checks each job
            selections.append(override.input_line)
        else:
            value_keys.append(key)
    if not value_keys:
        return
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=selections)
    for key in value_keys:
        if OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            raise unknown_key(cfg, key)


def add_declared_options(args: list[str]) -> list[str]:
    """`args` with `key=value` turned into `++key=value` for an option the schema declares
    (options/, docs/options.md) that the composed config leaves out, such as
    `trainer.max_steps` where the trainer file sets none: every listed option is then set as
    `key=value`, whichever files a run composes. `+key=value` keeps working; other keys are left
    for check_override_keys and Hydra to refuse."""
    from ..builders.schema import group_keys

    candidates = [(i, a) for i, a in enumerate(args) if "=" in a and not a.startswith("-")]
    try:
        parsed = [(i, OverridesParser.create().parse_overrides([a])[0]) for i, a in candidates]
    except Exception:
        return args  # a syntax error: reported by _parse_each or Hydra
    groups = _groups()
    selections, plain = [], []
    for i, override in parsed:
        key = override.key_or_group
        if key.startswith("hydra") or override.is_add() or override.is_force_add() or override.is_delete():
            continue
        if key.split("/")[0] in groups and "." not in key:
            if override.is_sweep_override():
                return args  # the keys depend on each job's group options; Hydra checks each job
            selections.append(override.input_line)
        elif "." in key:
            plain.append((i, key))
    if not plain:
        return args
    register_resolvers()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=selections)
    except Exception:
        return args  # a group option that does not exist: Hydra names it
    result = list(args)
    for i, key in plain:
        present = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False, throw_on_resolution_failure=False)
        if present is not _ABSENT:
            continue
        parent, _, leaf = key.rpartition(".")
        typed = group_keys(cfg, parent)
        if typed is not None and leaf in typed[0]:
            result[i] = "++" + args[i]
    return result


def unknown_key(cfg: DictConfig, key: str) -> ValueError:
    """`key` is not in the composed config: name the closest key and say how to set it, which
    depends on the group. A typed group (builders/schema.py) takes only its options (and, for
    `optimizer` and `trainer`, the keys it passes on), so `+key` helps only for one of those; keys
    elsewhere (the top level, `model`, `logger`) are free to add with `+key`."""
    from ..builders.schema import group_keys

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    present = set(map(str, parent.keys())) if isinstance(parent, DictConfig) else set()
    typed = group_keys(cfg, parent_key)
    declared, passed_on = typed if typed is not None else (set(), set())
    allowed = sorted(present | declared)
    where = f"under '{parent_key}'" if parent_key else "at the top level"
    close = difflib.get_close_matches(leaf, allowed or sorted(passed_on), n=1, cutoff=0.5)
    if not close and passed_on:
        close = difflib.get_close_matches(leaf, sorted(passed_on), n=1, cutoff=0.5)
    dotted = f"{parent_key}." if parent_key else ""
    guess = f" Did you mean '{dotted}{close[0]}'?" if close and close[0] != leaf else ""
    if typed is None:
        how = f"To add a new key on purpose use +{key}=..."
    elif leaf in declared or leaf in passed_on:
        how = f"It is an option of {parent_key} that this config leaves out: set it with +{key}=..."
    else:
        how = f"'{parent_key}' is typed and takes no other keys"
        if passed_on:
            how += f" than these and the ones it passes on ({_passed_on_what(parent_key)}) with +{dotted}<key>=..."
        how += "; every option is listed by `python -m loldu_lightning.cli.options`"
    return ValueError(f"Unknown config key '{key}'.{guess} Keys {where}: {', '.join(allowed)}. ({how})")


def _passed_on_what(group: str) -> str:
    return {"optimizer": "the torch optimizer's keyword arguments", "trainer": "lightning.Trainer's arguments"}.get(
        group, "passed on unchecked"
    )


# flags after which Hydra prints something instead of running the app (or reads a different config)
_NO_RUN_FLAGS = frozenset(
    {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--version"}
)
_CONFIG_SOURCE_FLAGS = frozenset({"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"})


def compose_single_run(args: list[str]) -> DictConfig | None:
    """The composed config of a single run of `args`; None for sweeps and for commands that run nothing.

    Raises Hydra's own exceptions for an override that does not compose (unknown option, bad syntax).
    """
    flags = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    if flags & (_NO_RUN_FLAGS | _CONFIG_SOURCE_FLAGS) or flags & {"--multirun", "-m"}:
        return None
    parsed = _parse_each([a for a in args if not a.startswith("-")])
    if any(o.is_sweep_override() for o in parsed):
        return None
    # hydra.* settings (run folder, launcher) do not change the app's config
    app_overrides = [o.input_line for o in parsed if not o.key_or_group.lstrip("+~").startswith("hydra")]
    register_resolvers()  # callers resolve the composed values (the CLI's checks, evaluate's base model)
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=app_overrides)


@functools.cache
def _composed_model(name: str) -> dict:
    return OmegaConf.to_container(compose_single_run([f"model={name}"]).model, resolve=True)


def model_config(name: str) -> DictConfig:
    """The `model` node that `model=<name>` composes (conf/model/<name>.yaml over its generated defaults),
    for code that reads one model's options without a whole run (examples, tests); composed once per
    process. `builders.schema.model_options` types it."""
    return OmegaConf.create(_composed_model(name))


def _parse_each(overrides: list[str]) -> list:
    """Hydra's parsed overrides; a malformed one is refused naming it (Hydra's message does not)."""
    from hydra.errors import OverrideParseException

    from .errors import UserError

    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except OverrideParseException as error:
            reason = str(error).splitlines()[0]
            raise UserError(
                f"cannot parse the override {line!r} ({reason}). Quote values holding [ ] , = or spaces, "
                "e.g. 'adapter.target_modules=[query,value]'; grammar: "
                "https://hydra.cc/docs/advanced/override_grammar/basic/"
            ) from error
    return parsed
