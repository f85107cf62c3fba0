"""The package has no import cycle (a function-level import counts, an `if TYPE_CHECKING:` one does not),
and one command-line run reads its config into typed options once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def structure_report():
    spec = importlib.util.spec_from_file_location("structure_report", ROOT / "scripts" / "structure_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_cycle():
    cycles = structure_report().import_cycles(ROOT / "src" / "loldu_lightning")
    assert cycles == [], f"import cycles: {cycles}"


def test_the_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nimport pkg.a\nif TYPE_CHECKING:\n    from .d import x\n"
    )
    (package / "d.py").write_text("from .c import y\n")
    assert structure_report().import_cycles(package) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


def test_one_command_line_run_reads_its_config_into_typed_options_once():
    """main() checks the run (validate_config, preflight) and hands the same options to the job and train()."""
    calls, error = structure_report().count_run_options_calls()
    assert calls == 1, error or f"run_options ran {calls} times in one run"
