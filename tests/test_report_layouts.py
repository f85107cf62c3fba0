"""The report in the paper's layouts: pivots, the categorical figure, the paper's published numbers."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from loldu_lightning.report import build_report
from loldu_lightning.report.__main__ import main as report_main
from loldu_lightning.report.layout import pivot_layout
from loldu_lightning.report.paper import paper_table, paper_tables
from tests.helpers import run_sweep_notebook

# Table V's layout on two of its datasets: accuracy per (init, scaling, task) and seed.
TABLE5 = {
    ("uniform", "learned", "vision/cifar10"): [0.90, 0.94],
    ("uniform", "none", "vision/cifar10"): [0.80, 0.86],
    ("zeros", "learned", "vision/cifar10"): [0.50, 0.54],
    ("zeros", "none", "vision/cifar10"): [0.40, 0.48],
    ("uniform", "learned", "vision/eurosat"): [0.96, 0.98],
    ("uniform", "none", "vision/eurosat"): [0.92, 0.90],
    ("zeros", "learned", "vision/eurosat"): [0.70, 0.74],
    ("zeros", "none", "vision/eurosat"): [0.66, 0.60],
}
# Table I's layout: dev accuracy per (method, task) over three seeds; medians differ from means.
TABLE1 = {
    ("loldu", "glue/sst2"): [0.80, 0.90, 0.82],
    ("loldu", "glue/rte"): [0.60, 0.55, 0.70],
    ("lora", "glue/sst2"): [0.85, 0.86, 0.70],
    ("lora", "glue/rte"): [0.62, 0.64, 0.50],
}
ADAPTER_PARAMS = {"loldu": 4620, "lora": 147456}


def write_job(job_dir: Path, overrides: list[str], config: dict, value: float, adapter_params: int = 18456) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    task = f"{config['task']['family']}/{config['task']['name']}"
    metrics = {
        "status": "completed",
        "task": task,
        "seed": config["seed"],
        "monitor": "val/accuracy",
        "mode": "max",
        "objective": value,
        "best": {"val/accuracy": value},
        "final": {"val/accuracy": value},
        "params": {"adapter": adapter_params, "head": 1000, "trainable": adapter_params + 1000, "total": 10**6},
        "time_s": 1.0,
    }
    (job_dir / "metrics.json").write_text(json.dumps(metrics))


def config(task: str, seed: int, **adapter: object) -> dict:
    family, name = task.split("/")
    return {
        "task": {"family": family, "name": name, "val_split": "validation"},
        "model": {"name_or_path": "all-MiniLM-L6-v2"},
        "adapter": {"name": "loldu", "decomposition": "lu", **adapter},
        "trainer": {"max_epochs": 1},
        "data": {"train_limit": 1000},
        "seed": seed,
    }


@pytest.fixture()
def table5_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "table5"
    for num, ((init, scaling, task), values) in enumerate(TABLE5.items()):
        for seed, value in enumerate(values):
            overrides = [f"task={task}", f"adapter.init={init}", f"adapter.scaling={scaling}", f"seed={seed}"]
            cfg = config(task, seed, init=init, scaling=scaling)
            write_job(sweep / f"{num}_{seed}", overrides, cfg, value)
    return sweep


@pytest.fixture()
def table1_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "table1"
    for num, ((adapter, task), values) in enumerate(TABLE1.items()):
        for seed, value in enumerate(values):
            cfg = config(task, seed)
            cfg["adapter"]["name"] = adapter
            write_job(
                sweep / f"{num}_{seed}",
                [f"task={task}", f"adapter={adapter}", f"seed={seed}"],
                cfg,
                value,
                ADAPTER_PARAMS[adapter],
            )
    return sweep


def cell(layout, **identity: object):
    frame = layout.frame
    for key, value in identity.items():
        frame = frame[frame[key] == value]
    assert len(frame) == 1, identity
    return frame.iloc[0]


def test_table5_layout_pivots_init_by_scaling_per_task_with_the_papers_numbers(table5_sweep: Path) -> None:
    report = build_report(table5_sweep, rows="adapter.init", cols="adapter.scaling", paper="V", write=False)
    layout = report.layout
    table = paper_tables()["V"]
    for (init, scaling, task), values in TABLE5.items():
        found = cell(layout, **{"adapter.init": init, "adapter.scaling": scaling, "task": task})
        assert found["value"] == pytest.approx(100 * statistics.median(values))
        row = next(r for r in table.rows if r.match == {"adapter.init": init, "adapter.scaling": scaling})
        assert found["paper"] == row.values[task]
        assert found["diff"] == pytest.approx(found["value"] - row.values[task])
        assert found["paper_cite"] == f"Table V, row {row.row}, column {table.columns[task]}"
    # uniform, learned on CIFAR10: ours 92.00 against the paper's 98.59
    assert "| uniform | 92.00 (paper 98.59, -6.59) |" in layout.markdown
    # the average over the two tasks, for ours and for the paper's same columns
    avg = layout.markdown.split("#### Avg. over")[1]
    ours = (statistics.median(TABLE5[("zeros", "none", "vision/cifar10")]) + 0.63) / 2 * 100
    theirs = (72.13 + 96.05) / 2
    assert f"{ours:.2f} (paper {theirs:.2f}, {ours - theirs:+.2f})" in avg
    caption = layout.markdown.split("####")[0]
    assert "Table V" in caption and "the model (all-MiniLM-L6-v2; the paper: vit-base" in caption
    assert "subsets of 1000 examples" in caption and "the seeds (2 here; the paper: 1)" in caption
    assert "adapter.decomposition" not in caption.split("differ in")[1]  # lu, as the paper's
    assert "layout.csv" not in {path.name for path in report.files}  # write=False


def test_table1_layout_has_tasks_as_columns_an_average_and_the_parameter_counts(table1_sweep: Path) -> None:
    layout = build_report(table1_sweep, rows="adapter.name", paper="I", write=False).layout
    table = paper_table("Table I")
    lines = {line.split(" | ")[0].strip("| "): line for line in layout.markdown.splitlines() if line.startswith("| lo")}
    assert layout.markdown.count("| name | SST-2 | RTE | Avg. | adapter params | trainable params |") == 1
    for adapter in ("loldu", "lora"):
        row = next(r for r in table.rows if r.match == {"adapter.name": adapter})
        sst2, rte = (statistics.median(TABLE1[(adapter, task)]) * 100 for task in ("glue/sst2", "glue/rte"))
        paper_sst2, paper_rte = row.values["glue/sst2"], row.values["glue/rte"]
        cells = [part.strip() for part in lines[adapter].strip("|").split("|")]
        assert cells[1] == f"{sst2:.2f} (paper {paper_sst2:.2f}, {sst2 - paper_sst2:+.2f})"
        assert cells[2] == f"{rte:.2f} (paper {paper_rte:.2f}, {rte - paper_rte:+.2f})"
        ours, theirs = (sst2 + rte) / 2, (paper_sst2 + paper_rte) / 2
        assert cells[3] == f"{ours:.2f} (paper {theirs:.2f}, {ours - theirs:+.2f})"
        assert cells[4] == f"{ADAPTER_PARAMS[adapter]:,}" and cells[5] == f"{ADAPTER_PARAMS[adapter] + 1000:,}"
        assert cells[6] == row.params
    mean = pivot_layout(build_report(table1_sweep, write=False).runs, "adapter.name", cell="mean")
    values = TABLE1[("lora", "glue/rte")]
    expected = f"{statistics.mean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}"
    assert expected in mean.markdown and "paper" not in mean.markdown


def test_a_task_the_paper_has_no_column_for_is_compared_with_its_average(table1_sweep: Path) -> None:
    layout = build_report(table1_sweep, rows="adapter.name", paper="IV", write=False).layout
    loldu = cell(layout, **{"adapter.name": "loldu", "task": "glue/sst2"})
    assert layout.notes == ["Table IV: rows LoLDU (r=64), LoLDU (r=768) all match; group by adapter.rank to pick one"]
    assert math.isnan(loldu["paper"])
    lora = cell(layout, **{"adapter.name": "lora", "task": "glue/rte"})
    assert lora["paper"] == 76.22 and lora["paper_cite"] == "Table IV, row LoRA (r=16), column Avg."
    assert "glue/rte, glue/sst2 are no column of Table IV" in layout.markdown


def test_the_paper_table_is_chosen_by_the_sweeps_experiment(tmp_path: Path) -> None:
    sweep = tmp_path / "paper_sweep"
    for seed, init in itertools.product([0, 1], ["ldu", "ones"]):
        cfg = config("vision/cifar100", seed, init=init, scaling="none")
        overrides = ["experiment=paper/table5_init_scaling", f"adapter.init={init}", f"seed={seed}"]
        write_job(sweep / f"{init}_{seed}", overrides, cfg, 0.5 + seed / 10)
    report = build_report(sweep, write=False)
    assert report.layout is not None and report.layout.rows == ["adapter.init"]
    assert cell(report.layout, **{"adapter.init": "ones"})["paper"] == pytest.approx(8.60)  # scaling=none
    off = build_report(sweep, paper="none", write=False)
    assert off.layout is None and "## Layout" not in off.markdown


def test_categorical_figure_shows_mean_std_seeds_and_the_reference_arm(table5_sweep: Path) -> None:
    report = build_report(table5_sweep, by="adapter.init", write=False)
    assert set(report.figures) == {"init_vs_metric.png"}  # one adapter size: no params figure
    axes = report.figures["init_vs_metric.png"].get_axes()
    assert [ax.get_title() for ax in axes] == ["vision/cifar10", "vision/eurosat"]
    cifar = axes[0]
    assert [label.get_text() for label in cifar.get_xticklabels()] == ["uniform", "zeros"]
    means = cifar.containers[0].lines[0].get_ydata()
    for position, init in enumerate(["uniform", "zeros"]):
        values = [v for s in ("learned", "none") for v in TABLE5[(init, s, "vision/cifar10")]]
        assert means[position] == pytest.approx(statistics.mean(values))
    assert len(cifar.collections[-1].get_offsets()) == 8  # every seed of both arms as a point
    shaded = [patch for patch in cifar.patches if "reference" in patch.get_label()]
    assert shaded and shaded[0].get_label() == "reference (adapter.init=uniform)"  # the run default
    marked = build_report(table5_sweep, by="adapter.init", reference="adapter.init=zeros", write=False)
    labels = [p.get_label() for p in marked.figures["init_vs_metric.png"].get_axes()[0].patches]
    assert "reference (adapter.init=zeros)" in labels


def test_a_committed_runs_csv_renders_the_same_layout(table1_sweep: Path, tmp_path: Path) -> None:
    build_report(table1_sweep, out=tmp_path / "first")
    again = build_report(tmp_path / "first" / "runs.csv", rows="adapter.name", paper="I", out=tmp_path / "second")
    direct = build_report(table1_sweep, rows="adapter.name", paper="I", write=False)
    assert again.layout.markdown.split("### Layout")[1].split("Not recorded")[0] in direct.layout.markdown
    assert (tmp_path / "second" / "layout.csv").is_file()
    with pytest.raises(ValueError, match="pass --out DIR"):
        build_report(tmp_path / "first" / "runs.csv", rows="adapter.name")


def test_layout_options_name_what_is_wrong(table1_sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(table1_sweep), "--rows", "adapter.name", "--paper", "VII"]) == 2
    assert "the package has the paper's Tables I, III, IV, V, VI, XI, XII" in capsys.readouterr().err
    assert report_main([str(table1_sweep), "--rows", "adapter.nme"]) == 2
    assert "layout key 'adapter.nme'" in capsys.readouterr().err
    assert report_main([str(table1_sweep), "--rows", "adapter.name", "--cols", "adapter.name"]) == 2
    assert "is also a --rows key" in capsys.readouterr().err


def test_the_papers_printed_averages_are_the_means_of_their_rows() -> None:
    """A transcription check: every printed Avg. is the mean of its row's printed values (the paper
    rounds to 0.01, Table I to 0.1), except Table VI's LoLDU row, which the data's notes name."""
    tables = paper_tables()
    assert list(tables) == ["I", "III", "IV", "V", "VI", "XI", "XII"]
    for table in tables.values():
        tolerance = 0.051 if table.name == "I" else 0.0051
        for row in table.rows:
            assert set(row.values) == set(table.columns), (table.name, row.row)
            if row.avg is None:
                continue
            mean = statistics.mean(row.values.values())
            if (table.name, row.row) == ("VI", "LoLDU"):
                assert abs(mean - row.avg) > 0.1 and any("0.624" in note for note in table.notes)
            else:
                assert mean == pytest.approx(row.avg, abs=tolerance), (table.name, row.row)
    # Table XI's 3e-3 row is Table V's Regular LDU without scaling (docs/paper_notes.md)
    lr = next(r for r in tables["XI"].rows if r.row == "3e-3")
    ldu = next(r for r in tables["V"].rows if r.match == {"adapter.init": "ldu", "adapter.scaling": "none"})
    assert lr.values == ldu.values


def test_notebook_shows_the_layout_beside_the_papers_numbers(
    table1_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = run_sweep_notebook(table1_sweep, tmp_path, monkeypatch, LOLDU_ROWS="adapter.name", LOLDU_PAPER="I")
    assert not [output for output in outputs if output.output_type == "error"]
    markdown = "".join(output.get("data", {}).get("text/markdown", "") for output in outputs)
    sst2 = statistics.median(TABLE1[("loldu", "glue/sst2")]) * 100
    assert f"{sst2:.2f} (paper 94.80, {sst2 - 94.8:+.2f})" in markdown  # Table I, row LoLDU, SST-2
    assert "**Table XII**" in markdown and any("image/png" in output.get("data", {}) for output in outputs)
