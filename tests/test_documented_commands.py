"""Every `python -m loldu_lightning` command in README.md and docs/ composes as written and passes the
command line's checks offline, or is refused in one line that says what it needs (a model folder, a
GPU, the hub). A command that names the real data beside the checkout (../shared/data) is an
offline example and must pass outright, when that data is here.

Each command goes through `check_command_line`, the checks `python -m loldu_lightning` makes before
Hydra starts a run (composition, values, paths, hub, model files, hardware, rank), in this process.
A sweep (`-m`) is checked as its first job.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from loldu_lightning.__main__ import check_command_line
from loldu_lightning.cli.errors import user_error_message
from loldu_lightning.cli.overrides import add_declared_options

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMAND = re.compile(r"python -m loldu_lightning(?=\s|$|`)(.*)")
INLINE = re.compile(r"`python -m loldu_lightning(?=\s|`)([^`]*)`")


def _logical_lines(text: str) -> list[str]:
    """The page's lines with shell continuations (`\\` at the end) joined."""
    return text.replace("\\\n", " ").splitlines()


def documented_commands() -> list[tuple[str, str, bool]]:
    """(where, arguments, whether the page shows it refused) of each distinct command, from code
    blocks and inline code alike; a refusal shown is an `error:` line right after the command."""
    found: dict[str, tuple[str, bool]] = {}
    for page in PAGES:
        in_block = False
        lines = _logical_lines(page.read_text())
        for number, line in enumerate(lines, start=1):
            if line.lstrip().startswith("```"):
                in_block = not in_block
                continue
            matches = [m.group(1) for m in INLINE.finditer(line)]
            if in_block and not matches:
                match = COMMAND.search(line)
                matches = [match.group(1).split(" #")[0]] if match else []
            following = next((later for later in lines[number:] if later.strip()), "")
            refused = in_block and following.startswith("error:")
            for arguments in matches:
                found.setdefault(arguments.strip(), (f"{page.relative_to(ROOT)}:{number}", refused))
    return [(where, arguments, refused) for arguments, (where, refused) in found.items()]


COMMANDS = documented_commands()
# usage placeholders: `...`, `<folder>`, `[KEY=VALUE ...]`, `/path/to/...`
PLACEHOLDER = re.compile(r"^\.\.\.$|<[^>]*>|^\[|\]$|KEY=|^[A-Z_]+=|/path/to/")


def first_job(arguments: str) -> tuple[list[str], bool]:
    """The command line of the command's single run (a sweep's first job), and whether placeholders
    (`...`, `<folder>`) were left out of it."""
    tokens = shlex.split(arguments)
    kept = [t for t in tokens if not PLACEHOLDER.search(t)]
    args = []
    parser = OverridesParser.create()
    for token in kept:
        if token in ("-m", "--multirun"):
            continue
        if "=" in token and not token.startswith("-"):
            override = parser.parse_overrides([token])[0]
            if override.is_sweep_override():
                first = next(iter(override.sweep_string_iterator()))
                token = f"{override.get_key_element()}={first}"
        args.append(token)
    return args, len(kept) != len(tokens)


def test_the_pages_have_commands():
    assert len(COMMANDS) > 50
    wheres = {where.split(":")[0] for where, _, _ in COMMANDS}
    assert {"README.md", "docs/resume.md", "docs/cli.md"} <= wheres


@pytest.mark.parametrize(("where", "arguments", "refused"), COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_a_documented_command_runs_offline_or_says_what_it_needs(where, arguments, refused, monkeypatch):
    monkeypatch.chdir(ROOT)  # the pages' relative paths (../shared/data) are from the checkout
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args, has_placeholders = first_job(arguments)
    # names the real data beside the checkout and no folder of another machine (/models/..., /data/...)
    offline_example = (
        "../shared/data" in arguments
        and not has_placeholders
        and not re.search(r"=/", arguments)
        and (ROOT.parent / "shared" / "data").is_dir()
    )
    GlobalHydra.instance().clear()
    try:
        check_command_line(add_declared_options(args))
    except Exception as error:
        message = user_error_message(error)
        assert message is not None, f"{where}: {arguments} raised a bug, not a user error: {error!r}"
        assert refused or not offline_example, f"{where}: the offline example `{arguments}` was refused: {message}"
    else:
        # a refusal that needs its context (an earlier run's checkpoint, `...`) cannot be replayed here
        assert not refused or has_placeholders, f"{where}: the page shows `{arguments}` refused, but it passes"
    finally:
        GlobalHydra.instance().clear()
