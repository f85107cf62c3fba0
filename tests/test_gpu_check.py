"""scripts/gpu_check.sh --dry-run end to end: the GPU tests and benchmarks run on the CPU at tiny sizes and
leave the record a real GPU run leaves. This is how CI runs the GPU check, so it cannot rot unnoticed."""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
FAMILIES = ("glue", "vision", "instruct", "diffusion")


def run_script(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("LOLDU_GPU_DRY_RUN", None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_dry_run_runs_every_gpu_check_on_the_cpu_and_writes_the_record(tmp_path):
    out = tmp_path / "gpu_check"
    result = run_script("--dry-run", "--out", str(out))
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]

    # pytest: every GPU test ran on the CPU; only what truly needs CUDA skipped, with its reason
    suite = ET.parse(out / "pytest" / "junit.xml").getroot()
    cases = list(suite.iter("testcase"))
    outcomes: dict[str, str] = {}
    for case in cases:
        name = case.get("name")
        skip = case.find("skipped")
        assert case.find("failure") is None and case.find("error") is None, name
        outcomes[name] = "passed" if skip is None else skip.get("message", "")
    assert len(cases) >= 30, sorted(outcomes)
    skipped = {name: reason for name, reason in outcomes.items() if reason != "passed"}
    assert all(reason.startswith("needs CUDA (dry run on the CPU)") for reason in skipped.values()), skipped
    assert sorted(skipped) == sorted(
        [f"test_mixed_precision_training_step[{family}-16-mixed]" for family in FAMILIES]
        + ["test_fsdp_adapter_loads_into_a_plain_model", "test_ddp_on_every_gpu_adapter_loads_into_a_plain_model"]
    )
    for family in FAMILIES:
        assert outcomes[f"test_mixed_precision_training_step[{family}-bf16-mixed]"] == "passed"
    assert outcomes["test_single_device_adapter_loads_into_a_plain_model"] == "passed"
    assert sum(name.startswith("test_storage_and_forward_mode_on_the_device[") for name in outcomes) == 18

    # benchmarks: both GPU sections through the same code at toy sizes, every ratio a finite positive number
    report = (out / "benchmarks" / "RESULTS.md").read_text()
    assert "SMOKE RUN (--dry-run)" in report and "- device: cpu" in report
    assert "## GPU 1. Training step, tiny roberta" in report and "## GPU 2. Training step, tiny LLaMA" in report
    ratios = re.findall(r"\| (\d+\.\d+)x \|", report)
    assert len(ratios) >= 20 and all(math.isfinite(float(r)) and float(r) > 0 for r in ratios), ratios

    # the environment and the summary
    versions = (out / "environment" / "versions.txt").read_text()
    assert f"torch: {torch.__version__}" in versions and "lightning: " in versions
    assert (out / "environment" / "nvidia-smi.txt").read_text().strip()
    assert (out / "environment" / "pip-freeze.txt").is_file()
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check (dry run on the CPU)")
    assert "| pytest -m gpu | passed |" in summary and "| benchmarks | passed |" in summary
    assert f"{len(cases) - len(skipped)} passed, 0 failed, {len(skipped)} skipped." in summary


def test_bad_arguments_are_refused_with_usage():
    result = run_script("--frobnicate", timeout=60)
    assert (
        result.returncode == 2 and "unknown argument '--frobnicate'" in result.stderr and "--dry-run" in result.stderr
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check would run")
def test_the_real_check_without_cuda_points_at_the_dry_run(tmp_path):
    result = run_script("--out", str(tmp_path / "real"), timeout=120)
    assert result.returncode == 2 and "--dry-run" in result.stderr
    assert not (tmp_path / "real").exists()  # nothing half-written


# --- the offline bundle (scripts/gpu_bundle.sh, gpu_check.sh --bundle) ---------------------------------------

BUNDLE_SCRIPT = REPO / "scripts" / "gpu_bundle.sh"
_spec = importlib.util.spec_from_file_location("gpu_bundle", REPO / "scripts" / "gpu_bundle.py")
gpu_bundle = sys.modules["gpu_bundle"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_bundle)


@pytest.fixture(scope="module")
def project_bundle(tmp_path_factory) -> Path:
    """A bundle of this checkout's wheel alone (no download): what --bundle installs for the code under test."""
    folder = tmp_path_factory.mktemp("bundle")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(BUNDLE_SCRIPT), "--project-only", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        # building needs setuptools>=68 here, else an isolated build fetches it from the package index
        pytest.skip(f"could not build this checkout's wheel (offline, without setuptools>=68?): {result.stderr[-500:]}")
    return folder


def fake_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A minimal wheel file: only its METADATA matters to the bundle's plan."""
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta + "\n")
    return path


def test_the_plan_keeps_the_machines_copy_only_where_it_satisfies_the_bundle(tmp_path):
    pluggy = metadata.version("pluggy")
    wheels = [
        gpu_bundle.read_wheel(fake_wheel(tmp_path, "pluggy", "1.0.0")),
        gpu_bundle.read_wheel(fake_wheel(tmp_path, "pytest", "8.0.0")),
        gpu_bundle.read_wheel(fake_wheel(tmp_path, "not-on-this-machine", "1.0")),
    ]
    # nothing asks more of pluggy than any version: the machine's is kept
    assert gpu_bundle.decide(wheels[0], wheels) == f"keep the machine's {pluggy}: satisfies (any version)"
    assert gpu_bundle.decide(wheels[2], wheels) == "install: the machine lacks it"
    # a bundle wheel that needs a pluggy the machine does not have: the bundle's copy goes in
    wheels.append(gpu_bundle.read_wheel(fake_wheel(tmp_path, "needs-new-pluggy", "1.0", ("pluggy>=999",))))
    assert gpu_bundle.decide(wheels[0], wheels) == f"install: the machine's {pluggy} is outside >=999"
    # the project's requirements count with their extras (peft's pinned range lives in the peft extra)
    wheels.append(
        gpu_bundle.read_wheel(fake_wheel(tmp_path, "loldu-lightning", "0.1.0", ('pytest<1; extra == "test"',)))
    )
    wheels[-1].extras = ["test"]
    assert gpu_bundle.decide(wheels[1], wheels).startswith(
        f"install: the machine's {metadata.version('pytest')} is outside <1"
    )


def test_a_bundle_holding_torch_or_another_checkout_is_refused(project_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(project_bundle, bundle)
    install = [sys.executable, str(REPO / "scripts" / "gpu_bundle.py"), "install", str(bundle), str(tmp_path / "site")]

    checkout = tmp_path / "checkout"  # this checkout with one module changed after the bundle was made
    shutil.copytree(REPO / "src", checkout / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", checkout / "conf")
    changed = checkout / "src" / "loldu_lightning" / "train.py"
    changed.write_text(changed.read_text() + "\n# changed\n")
    result = subprocess.run([*install, "--repo", str(checkout)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "is not this checkout (1 files differ, e.g. src/loldu_lightning/train.py)" in result.stderr
    assert f"bash scripts/gpu_bundle.sh {bundle}" in result.stderr and not (tmp_path / "site").exists()

    fake_wheel(bundle, "torch", "2.0.0")
    result = subprocess.run([*install, "--repo", str(REPO)], capture_output=True, text=True)
    assert result.returncode == 2 and "the check runs on the machine's own torch" in result.stderr, result.stderr


def test_a_bundle_over_the_size_limit_fails_its_description(project_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(project_bundle, bundle)
    size = sum(path.stat().st_size for path in bundle.iterdir() if path.name != "BUNDLE.md")
    assert gpu_bundle.describe(bundle, limit_mib=60) == 0
    assert gpu_bundle.describe(bundle, limit_mib=0.5 * size / 2**20) == 1
    manifest = (bundle / "BUNDLE.md").read_text()
    assert f"Total: {size:,} bytes" in manifest and "| loldu_lightning-0.1.0-py3-none-any.whl |" in manifest


def test_setup_only_with_a_bundle_installs_this_checkout_over_the_environment(project_bundle, tmp_path):
    out = tmp_path / "record"
    result = run_script("--dry-run", "--bundle", str(project_bundle), "--setup-only", "--out", str(out), timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    versions = (out / "environment" / "versions.txt").read_text().splitlines()
    assert versions[0].startswith("python: ")
    assert f"torch: {torch.__version__} (built for CUDA {torch.version.cuda}) (machine)" in versions
    assert "loldu-lightning: 0.1.0 (bundle)" in versions
    assert f"lightning: {metadata.version('lightning')} (machine)" in versions
    plan = (out / "environment" / "bundle.txt").read_text()
    assert "loldu-lightning 0.1.0: install: the code under test (matches this checkout)" in plan
    site = Path(re.search(r"installed into: (\S+)", plan).group(1))
    assert not site.exists(), "the temporary install folder outlives the check"
    assert not (out / "pytest" / "junit.xml").exists() and "did not run" in result.stdout


def test_a_missing_bundle_is_refused_before_anything_is_written(tmp_path):
    result = run_script("--dry-run", "--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 2 and "scripts/gpu_bundle.sh" in result.stderr
    assert not (tmp_path / "out").exists()
