"""The benchmark command runs end to end (toy shapes); the real numbers live in benchmarks/RESULTS.md.

Every section must produce the rows it promises, named after the shapes it ran at: a variant that a
section silently drops (or a section that stops running) fails here, not only a missing header.
"""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.shapes import QUICK  # noqa: E402


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--threads", "1", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out.read_text()


def tables(text: str) -> dict[str, list[list[str]]]:
    """Each `## ` section's table rows (cells, without the header and separator rows), by title."""
    found: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:]
            found[title] = []
        elif title is not None and line.startswith("|"):
            found[title].append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return {title: rows[2:] for title, rows in found.items()}


def expected_rows(shapes=QUICK) -> dict[str, list[tuple[str, ...]]]:
    """The leading cells of every row each section promises, in order, at `shapes`."""
    full, low, ref = shapes.full_rank, shapes.low_rank, shapes.lora_reference_rank
    dim, layer_r = shapes.layer_dim, shapes.layer_rank
    hidden = shapes.encoder_overrides.get("hidden_size", 768)
    products = (
        "W update L diag(s) U (merged path)",
        "rowsum((L^T G) * U) (v's gradient, merged path)",
        "(U x) * s then L (factored path, per step)",
    )
    triangular_shapes = [
        (hidden, full, shapes.batch * shapes.seq_len),
        (dim, layer_r, shapes.layer_tokens),
        (dim, dim, shapes.layer_tokens),
    ]
    kernels = {"lu": "torch.linalg.lu_factor_ex", "svd": "torch.linalg.svd", "qr": "torch.linalg.qr"}
    return {
        "1.": [
            (f"PEFT LoRA r={ref}",),
            (f"PEFT LoRA r={full}",),
            (f"LoLDU r={full} auto",),
            (f"LoLDU r={full} factored",),
            (f"LoLDU r={full} merged",),
            (f"LoLDU r={low} auto",),
            (f"LoLDU r={full} auto, storage=packed",),
            (f"LoLDU r={full} auto, storage=lu",),
            ("frozen backbone (floor)",),
            (f"naive P@L@diag(z)@U r={full}",),
        ],
        "2.": [
            (f"PEFT LoRA r={ref}",),
            (f"LoLDU r={layer_r} auto",),
            (f"LoLDU r={layer_r} factored",),
            (f"LoLDU r={layer_r} merged",),
            ("frozen layer (floor)",),
            (f"naive P@L@diag(z)@U r={layer_r}",),
        ],
        "3.": [
            (f"LoLDU inject r={full} (LU + wrap)",),
            (f"PEFT PiSSA r={full} (full SVD)",),
            (f"PEFT PiSSA r={full} pissa_niter_4 (randomised SVD)",),
            ("kernel only: torch.linalg.lu_factor_ex",),
            ("kernel only: torch.linalg.svd",),
        ],
        "4.": [
            ("base model",),
            (f"LoLDU r={full} unmerged (adapter active)",),
            (f"LoLDU r={full} merged + unloaded",),
        ],
        "5.": [
            (f"PEFT LoRA r={ref}",),
            (f"LoLDU r={layer_r} dense (default)",),
            (f"LoLDU r={layer_r} dense, dtype=bfloat16",),
            (f"LoLDU r={layer_r} lu",),
            (f"LoLDU r={dim} (full) dense",),
            (f"LoLDU r={dim} (full) packed",),
            (f"LoLDU r={dim} (full) lu",),
            ("frozen pair (floor)",),
        ],
        "6.": [(f"{m} x {m}, r={r}, {tokens}", product) for m, r, tokens in triangular_shapes for product in products],
        "7.": [(name, "inject (decompose + wrap)") for name in kernels]
        + [(name, f"kernel only: {kernel}") for name, kernel in kernels.items()]
        + [(name, "training step (forward + backward + AdamW)") for name in kernels],
        "Targets": [
            (f"encoder: LoLDU r={full} auto step time / LoRA r={ref}",),
            (f"encoder: LoLDU r={full} auto step time / LoRA r={full}",),
            (f"encoder: LoLDU r={low} auto step time / LoRA r={ref}",),
            (f"encoder: LoLDU r={full} storage=packed step time / LoRA r={ref}",),
            (f"encoder: LoLDU r={full} storage=lu step time / LoRA r={ref}",),
            (f"encoder: LoLDU r={full} auto peak memory / LoRA r={ref}",),
            (f"encoder: LoLDU r={low} auto peak memory / LoRA r={ref}",),
            (f"layer {dim}x{dim}: naive / LoLDU r={layer_r} auto step time",),
            (f"init: PiSSA (full SVD) / LoLDU inject r={full}",),
            (f"inference: LoLDU r={full} merged + unloaded / base latency",),
            (f"q/v pair {dim}: LoLDU r={layer_r} lu resident memory / LoRA r={ref}",),
            (f"q/v pair {dim}: LoLDU r={layer_r} lu step time / LoRA r={ref}",),
            (f"q/v pair {dim}: LoLDU r={layer_r} dense step time / LoRA r={ref}",),
            (f"triangular: build speed-up at {hidden} x {hidden}, r={full}",),
            (f"decompositions: training step svd / lu at {hidden}, r={full}",),
            (f"decompositions: training step qr / lu at {hidden}, r={full}",),
        ],
    }


def test_every_section_produces_the_rows_it_promises(quick_report):
    found = tables(quick_report)
    sections = {title.split(" ", 1)[0]: rows for title, rows in found.items() if title not in ("Machine", "Method")}
    expected = expected_rows()
    assert sorted(sections) == sorted(expected), f"sections written: {sorted(found)}"
    for key, rows in expected.items():
        width = len(rows[0])
        assert [tuple(row[:width]) for row in sections[key]] == rows, f"section {key}"


def test_every_timing_ratio_is_finite_and_positive(quick_report):
    # a zero or missing timing would show as inf, nan or 0.00x in a ratio cell ("1.23x")
    cells = [cell.strip() for line in quick_report.splitlines() if line.startswith("|") for cell in line.split("|")]
    ratios = [cell[:-1] for cell in cells if re.fullmatch(r"[-+0-9.a-zA-Z]+x", cell) and cell[0] in "-+0123456789ni"]
    assert len(ratios) >= 10, f"expected the ratio columns of every section, found {ratios}"
    values = [float(value) for value in ratios]
    assert all(math.isfinite(value) and value > 0 for value in values), ratios
