"""The installed package finds its config tree: a wheel built from this checkout, installed in a fresh
virtual environment outside the repository, composes the config and answers --help."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*command, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools leaves build/ and *.egg-info beside the sources it builds.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    built = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        work / "dist",
        source,
        cwd=work,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("loldu_lightning-*.whl")
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel, cwd=work)
    assert installed.returncode == 0, installed.stderr
    # Dependencies come from this interpreter's site-packages, added as a plain path: .pth files there (such
    # as the editable install's finder) are not processed, so the wheel's copy is the one imported.
    site_packages = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work)
    Path(site_packages.stdout.strip(), "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def test_wheel_carries_the_config_tree(wheel_env):
    outside = wheel_env.parent
    located = _run(
        wheel_env / "bin" / "python",
        "-c",
        "import loldu_lightning, loldu_lightning.cli.config as c; print(loldu_lightning.__file__); print(c.config_dir())",
        cwd=outside,
    )
    assert located.returncode == 0, located.stderr
    package_file, conf = located.stdout.split()
    assert str(REPO) not in package_file and str(REPO) not in conf
    assert Path(conf, "config.yaml").is_file() and Path(conf, "task", "glue", "sst2.yaml").is_file()


def test_wheel_carries_the_papers_published_tables(wheel_env):
    read = _run(
        wheel_env / "bin" / "python",
        "-c",
        "from loldu_lightning.report.paper import paper_tables; print(' '.join(paper_tables()))",
        cwd=wheel_env.parent,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == ["I", "III", "IV", "V", "VI", "XI", "XII"]


def test_installed_cli_composes_and_helps(wheel_env):
    outside = wheel_env.parent
    job = _run(wheel_env / "bin" / "loldu", "--cfg", "job", "task=glue/rte", cwd=outside)
    assert job.returncode == 0, job.stderr
    assert "name: rte" in job.stdout and "adapter:" in job.stdout
    helped = _run(wheel_env / "bin" / "python", "-m", "loldu_lightning", "--help", cwd=outside)
    assert helped.returncode == 0, helped.stderr
    groups = dict(line.split(": ", 1) for line in helped.stdout.splitlines() if ": " in line)
    assert "rte" in groups["task/glue"].split(", ") and "loldu" in groups["adapter"].split(", ")
