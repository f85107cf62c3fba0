"""What `--help` lists: the config groups a user chooses from, and every option with its type,
default and allowed values (read from the typed options of options/, through builders/schema.py).

Hydra's own list (`$APP_CONFIG_GROUPS`) shows every folder of the config tree. The arms of a study
(`experiment/studies/...`) are selected by that study's sweep, not by hand, and `schema/` holds the
defaults every composition starts from (generated from the typed schema), so both are left out; the
listing keeps Hydra's `group: option, option` lines.

`options_page()` is docs/options.md, written from the same schemas
(`python -m loldu_lightning.cli.options --markdown > docs/options.md`; a test keeps the page in step).
"""

from __future__ import annotations

from pathlib import Path

# folders under conf/ that hold no user choices
HIDDEN_GROUPS = ("hydra", "experiment/studies", "schema")


def _hidden(group: str) -> bool:
    return any(group == hidden or group.startswith(hidden + "/") for hidden in HIDDEN_GROUPS)


def config_groups() -> str:
    """`group: options` per folder of the config tree that holds options, sorted, one per line."""
    from .config_tree import config_dir

    root = Path(config_dir())
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and not _hidden(group):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def options_listing(full_adapters: bool = False) -> str:
    """Every typed option as `key=default  allowed values  meaning`, by group (`--help` and
    `python -m loldu_lightning.cli.options`); with `full_adapters`, each adapter's options too."""
    from ..builders.schema import adapter_sections, sections

    lines = []
    for section in [*sections(), *(adapter_sections() if full_adapters else [])]:
        lines.append(f"{section.title}:")
        if not section.rows:
            lines.append("  (no options)")
            continue
        # a long default (a list of prompts) overflows its column rather than widening it for all
        width = min(max(len(f"{row.key}={row.default}") for row in section.rows), 48)
        allowed = max(len(row.allowed) for row in section.rows)
        lines += [
            f"  {f'{row.key}={row.default}':<{width}}  {row.allowed:<{allowed}}  {row.help}".rstrip()
            for row in section.rows
        ]
        if section.note:
            lines.append(f"  ({section.note})")
    if not full_adapters:
        # each adapter's options come from its options dataclass, which imports PEFT: not for --help
        lines.append("adapter (each adapter's own options, typed: python -m loldu_lightning.cli.options)")
    return "\n".join(lines)


def help_options() -> str:
    """options_listing for Hydra's help template, indented under its heading (the template indents the
    first line). Hydra substitutes `$NAME` in the help text, so a literal `$` is written `$$`."""
    return options_listing().replace("$", "$$").replace("\n", "\n  ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def options_page() -> str:
    """docs/options.md: one table per group of options, generated from the schemas."""
    from ..builders.schema import adapter_sections, sections

    lines = [
        "# Options",
        "",
        "<!-- Generated from src/loldu_lightning/options/ by "
        "`python -m loldu_lightning.cli.options --markdown > docs/options.md`; tests/test_config_schema.py "
        "fails when this page and the schema disagree. -->",
        "",
        "Every option the app reads, with its type, default and allowed values. Set one on the command line",
        "as `key=value` (`data.batch_size=16`); a value of the wrong type or out of range, and a key no group",
        "declares, are refused before anything loads (docs/cli.md). A default is the value an option takes",
        "when no config file sets it; config.yaml and each group's files write the same values (a test",
        "checks), and the trainer keys take Lightning's. The chosen task, model, trainer or experiment may set",
        "others: see a run's values with `--cfg job`.",
        "`data` and `task` hold the options every family reads plus those of the chosen `task.family`.",
        "",
    ]
    for section in [*sections(), *adapter_sections()]:
        lines += [f"## {section.title}", ""]
        if section.note:
            lines += [section.note[0].upper() + section.note[1:] + ".", ""]
        lines += ["| option | allowed | default | meaning |", "| --- | --- | --- | --- |"]
        lines += [
            f"| `{row.key}` | {_cell(row.allowed)} | `{_cell(row.default)}` | {_cell(row.help)} |".replace(
                " |  |", " | |"
            )
            for row in section.rows
        ]
        lines.append("")
    return "\n".join(lines)
