"""The checkpoint-cost benchmark (benchmarks/checkpoint_cost.py) at toy sizes: the rows it promises, and
files that hold the trained state only. The real numbers live in docs/results/checkpoint_cost.md."""

import math
import re

import pytest
import torch

from benchmarks import checkpoint_cost as bench


def _table_rows(text: str, title: str) -> list[list[str]]:
    """The body rows of the Markdown table under the heading that starts with `title`."""
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    rows = [line for line in lines if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("checkpoint_cost")
    out, workdir = tmp / "checkpoint_cost.md", tmp / "work"
    assert (
        bench.main(["--quick", "--threads", "1", "--repeats", "2", "--out", str(out), "--workdir", str(workdir)]) == 0
    )
    return out.read_text(), workdir


def test_report_has_a_timed_row_per_case_and_the_layer_fit(quick_run):
    text, _ = quick_run
    rows = _table_rows(text, "Checkpoint save cost")
    labels = [row[0] for row in rows]
    assert len(rows) == 4 and labels[0].startswith("roberta-base")
    assert [re.search(r"(\d+) layers?", label).group(1) for label in labels[1:]] == ["1", "2", "3"]
    for row in rows:
        size, median = float(row[2]), float(row[5].replace(",", ""))
        low, high = (float(value.replace(",", "")) for value in row[6].split("-"))
        assert size > 0 and math.isfinite(median) and 0 < low <= median <= high
        assert row[2] == row[7], "the timed save and the step checkpoint written during fit should be the same size"
    scaling = _table_rows(text, "LLaMA2-7B-shaped checkpoint size against the layer count")
    assert [row[0] for row in scaling] == ["1", "2", "3", "32 (computed)"]
    # the middle count is not used by the fit, so it checks linearity: torch.save aligns records to 64 bytes
    assert abs(float(scaling[1][3].replace(",", ""))) <= 64 * 4
    assert "frozen parameters saved: 0 of" in text and "all present: yes" in text


def test_saved_file_holds_trainable_state_only(tmp_path):
    case = bench.roberta_case(bench.QUICK_ROBERTA, rank=8)
    measured = bench.measure_case(case, repeats=1, workdir=tmp_path)
    checkpoint = torch.load(tmp_path / case.key / "checkpoints" / "timed.ckpt", map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert checkpoint["frozen_weights_omitted"] is True
    assert not set(state) & set(measured.frozen_keys), "frozen base weights were saved"
    assert set(measured.trainable_keys) <= set(state), "a trainable parameter is missing from the checkpoint"
    # LoLDU's z and sigma per targeted matrix (2 layers x query, value) and the classifier head, nothing else trains
    assert sum(key.endswith((".z", ".sigma")) for key in measured.trainable_keys) == 8
    assert any(key.startswith("model.classifier.") for key in measured.trainable_keys)
    extra = set(state) - set(measured.trainable_keys)
    assert extra and all(key.endswith(".c") for key in extra), f"unexpected persistent state {sorted(extra)}"
    assert not any(re.search(r"\.(lower|upper|perm|packed)$", key) for key in state), "LU factors were saved"
    # one optimizer step ran, so AdamW holds moments for every trainable tensor
    (optimizer,) = checkpoint["optimizer_states"]
    assert len(optimizer["state"]) == len(measured.trainable_keys)
    assert checkpoint["global_step"] == 1
