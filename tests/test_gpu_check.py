"""scripts/gpu_check.sh --dry-run end to end: the GPU tests and benchmarks run on the CPU at tiny sizes and
leave the record a real GPU run leaves. This is how CI runs the GPU check, so it cannot rot unnoticed."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
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
