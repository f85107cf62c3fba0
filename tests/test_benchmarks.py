"""The benchmark command runs end to end (toy shapes); the real numbers live in benchmarks/RESULTS.md."""

import math
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--threads", "1", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.read_text()
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## Targets"):
        assert section in text
    # every ratio cell ("1.23x") is a finite, positive number: a zero or missing timing would show here
    cells = [cell.strip() for line in text.splitlines() if line.startswith("|") for cell in line.split("|")]
    ratios = [cell[:-1] for cell in cells if re.fullmatch(r"[-+0-9.a-zA-Z]+x", cell) and cell[0] in "-+0123456789ni"]
    assert len(ratios) >= 10, f"expected the ratio columns of every section, found {ratios}"
    values = [float(value) for value in ratios]
    assert all(math.isfinite(value) and value > 0 for value in values), ratios
