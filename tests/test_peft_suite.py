"""PEFT's own generic test suite, run on LoLDU against the installed PEFT release.

PEFT's contributing guide asks a new method to pass ``tests/test_custom_models.py`` with its cases
added. PEFT's tests are not copied here: the sdist of the installed PEFT version (which the
``peft`` extra pins to the supported range) is fetched from the package index with pip when the
test runs, unpacked into a temporary folder, and run in a child pytest with ``peft_suite_plugin``,
which adds the LoLDU cases and deselects every other method's. Without the index (offline, a
mirror without sdists) the test skips and says why.

The whole LoLDU selection (some 630 tests) runs in the default test run: about a minute on two
CPU cores, most of it PEFT collecting its 20,000 tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import peft
import pytest

from tests.peft_suite_plugin import (
    LOLDU_MIXED_ADAPTER_TEST_CASES,
    LOLDU_MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES,
    LOLDU_TEST_CASES,
    REFUSED_BY_FINGERPRINT,
)

TESTS_DIR = Path(__file__).resolve().parent
PEFT_TEST_FILE = "tests/test_custom_models.py"


@pytest.fixture(scope="session")
def peft_sdist(tmp_path_factory) -> Path:
    """The unpacked sdist of the installed PEFT version, with an ``__init__.py`` in its tests folder."""
    version = peft.__version__
    download = tmp_path_factory.mktemp("peft_sdist")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(download),
        f"peft=={version}",
    ]
    try:
        fetched = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"PEFT {version}'s sdist could not be fetched from the package index within 300 s")
    archives = sorted(download.glob(f"peft-{version}.tar.gz"))
    if fetched.returncode != 0 or not archives:
        reason = (fetched.stderr.strip().splitlines() or ["no sdist in the download folder"])[-1]
        pytest.skip(
            f"PEFT {version}'s sdist could not be fetched from the package index ({' '.join(command[2:])}): {reason}"
        )
    with tarfile.open(archives[0]) as archive:
        # the "data" filter (no absolute paths, links out or devices) where this Python has it (3.10.12+)
        archive.extractall(download, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    root = download / f"peft-{version}"
    if not (root / PEFT_TEST_FILE).is_file():
        pytest.skip(f"PEFT {version}'s sdist has no {PEFT_TEST_FILE}")
    (root / "tests" / "__init__.py").touch()  # PEFT's tests import their helpers relatively
    return root


def run_peft_suite(root: Path, report: Path) -> subprocess.CompletedProcess:
    # the plugin goes in as a top-level module from this folder: in the child, `tests` is PEFT's own package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))}
    env.setdefault("HF_HUB_OFFLINE", "1")
    command = [
        sys.executable,
        "-m",
        "pytest",
        PEFT_TEST_FILE,
        "-p",
        "peft_suite_plugin",
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        f"--junitxml={report}",
    ]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)


def outcomes(report: Path) -> dict[str, list[str]]:
    """Test ids by outcome (passed, failed, skipped, xfailed) from a JUnit XML report."""
    found: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": [], "xfailed": []}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        children = {child.tag: child for child in case}
        if "failure" in children or "error" in children:
            found["failed"].append(name)
        elif "skipped" in children:
            kind = "xfailed" if children["skipped"].get("type") == "pytest.xfail" else "skipped"
            found[kind].append(name)
        else:
            found["passed"].append(name)
    return found


def test_peft_suite_passes_every_loldu_case(peft_sdist, tmp_path):
    report = tmp_path / "report.xml"
    result = run_peft_suite(peft_sdist, report)
    tail = "\n".join(result.stdout.splitlines()[-40:])
    assert report.is_file(), f"PEFT's suite did not run (exit {result.returncode}):\n{tail}\n{result.stderr[-2000:]}"
    found = outcomes(report)
    assert not found["failed"], f"{len(found['failed'])} of PEFT's LoLDU tests failed:\n{tail}"
    assert result.returncode == 0, tail
    # Every LoLDU case ran (a case PEFT's parametrization lost would otherwise go unnoticed).
    ran = " ".join(found["passed"] + found["xfailed"])
    cases = {
        row[0] for row in LOLDU_TEST_CASES + LOLDU_MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES + LOLDU_MIXED_ADAPTER_TEST_CASES
    }
    assert {case for case in cases if f"[{case}-" not in ran and f"-{case}-" not in ran} == set()
    assert len(found["passed"]) >= 500, {kind: len(ids) for kind, ids in found.items()}
    # The fingerprint refusals happen, and only where documented (strict xfail: they must raise it).
    refused = Counter(name.partition("[")[0] for name in found["xfailed"])
    assert set(refused) == REFUSED_BY_FINGERPRINT, refused
