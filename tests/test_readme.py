"""The README stays true: its install and test lines are the ones CI runs, and every command it shows
composes (a renamed task, group or key would otherwise leave the README pointing at nothing)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import compose_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CI = (REPO / ".ci" / "run").read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)


def readme_commands() -> list[str]:
    """Every `python -m loldu_lightning ...` line of the README's code blocks and tables, continuations joined."""
    joined = "\n".join(code_blocks(README)).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in joined.splitlines()]
    lines += re.findall(r"`(python -m loldu_lightning [^`]*)`", README)
    return sorted({line for line in lines if line.startswith("python -m loldu_lightning ") and "..." not in line})


def test_install_and_test_lines_are_the_ones_ci_runs():
    install = code_blocks(README.split("## Install", 1)[1])[0]
    for line in install.splitlines():
        command = line.split("#")[0].strip()
        if command.startswith("pip install"):
            assert command in CI, f"README install line not in .ci/run: {command}"
    assert "python -m pytest" in code_blocks(README.split("## The two commands", 1)[1])[0]
    assert "python -m pytest -q" in CI


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_composes(command: str):
    args = shlex.split(command)[3:]
    if args and args[0] == "-m":
        # a sweep: compose its first job (the first value of every comma list)
        args = [re.sub(r"=([^=\[{]*?),[^\s]*$", r"=\1", arg) for arg in args[1:]]
    args = [arg for arg in args if not arg.startswith("hydra")]
    cfg = compose_config(args)
    assert cfg.task.family and cfg.adapter.name
