"""The benchmark command runs end to end (toy shapes); the real numbers live in benchmarks/RESULTS.md."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "RESULTS.md"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--threads", "1", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    text = out.read_text()
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## Targets"):
        assert section in text
