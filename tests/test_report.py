"""The results report on synthetic Hydra multirun trees: aggregates, problem runs, files, CLI, notebook."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from loldu_lightning.report import build_report
from loldu_lightning.report.__main__ import main as report_main
from tests.helpers import run_sweep_notebook

SRC = Path(__file__).resolve().parents[1] / "src"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

# val/accuracy per (init, scaling) and seed; medians differ from means so both are checked.
ACCURACY = {
    ("uniform", "learned"): {1: 0.80, 2: 0.90, 3: 0.82},
    ("uniform", "fixed"): {1: 0.70, 2: 0.71, 3: 0.75},
    ("ones", "learned"): {1: 0.60, 2: 0.50, 3: 0.61},
    ("ones", "fixed"): {1: 0.40, 2: 0.41, 3: 0.42},
}
FAILED_JOB, MISSING_JOB = "10", "11"  # (ones, fixed) seeds 2 and 3


def metrics_json(
    task: str, seed: int, value: float, monitor: str = "val/accuracy", adapter_params: int = 18456
) -> dict:
    return {
        "status": "completed",
        "error": None,
        "task": task,
        "adapter": "loldu",
        "seed": seed,
        "monitor": monitor,
        "mode": "max",
        "objective": value,
        "best": {monitor: value, "val/loss": 1.0 - value, "epoch": 2},
        "final": {monitor: value - 0.01, "val/loss": 1.01 - value, "epoch": 3},
        "params": {"adapter": adapter_params, "head": 592130, "trainable": adapter_params + 592130, "total": 125257000},
        "time_s": 10.0 + seed,
    }


def write_job(job_dir: Path, overrides: list[str], config: dict, metrics: dict | None) -> None:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (job_dir / "metrics.json").write_text(json.dumps(metrics))


def write_multirun(sweep: Path, task_overrides: list[str]) -> None:
    multirun = {
        "hydra": {
            "sweeper": {"_target_": BASIC_SWEEPER, "max_batch_size": None, "params": None},
            "overrides": {"task": task_overrides},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun))


def job_config(
    task: str = "glue/sst2",
    init: str = "uniform",
    scaling: str = "learned",
    rank: int = 8,
    lr: float = 3e-4,
    seed: int = 42,
) -> dict:
    family, name = task.split("/")
    return {
        "task": {"family": family, "name": name},
        "adapter": {"name": "loldu", "init": init, "scaling": scaling, "rank": rank},
        "optimizer": {"lr": lr},
        "seed": seed,
    }


@pytest.fixture()
def init_sweep(tmp_path: Path) -> Path:
    """2 inits x 2 scalings x 3 seeds in Hydra's job order; one job failed, one left no metrics.json."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_multirun(sweep, ["adapter.init=uniform,ones", "adapter.scaling=learned,fixed", "seed=1,2,3"])
    for num, (init, scaling, seed) in enumerate(
        itertools.product(["uniform", "ones"], ["learned", "fixed"], [1, 2, 3])
    ):
        overrides = [f"adapter.init={init}", f"adapter.scaling={scaling}", f"seed={seed}"]
        metrics: dict[str, Any] | None = metrics_json("glue/sst2", seed, ACCURACY[(init, scaling)][seed])
        if str(num) == FAILED_JOB:
            metrics.update(
                status="failed",
                error="RuntimeError: loss is NaN at step 12\nTraceback (most recent call last):",
                objective=None,
                best={},
                final={},
            )
        if str(num) == MISSING_JOB:
            metrics = None
        write_job(sweep / str(num), overrides, job_config(init=init, scaling=scaling, seed=seed), metrics)
    return sweep


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_aggregates_over_seeds_per_varying_override(init_sweep: Path) -> None:
    report = build_report(init_sweep)
    assert report.by == ["adapter.init", "adapter.scaling"]
    assert len(report.runs) == 12 and len(report.groups) == 4
    for (init, scaling), by_seed in ACCURACY.items():
        group = report.groups[(report.groups["adapter.init"] == init) & (report.groups["adapter.scaling"] == scaling)]
        assert len(group) == 1
        group = group.iloc[0]
        values = list(by_seed.values()) if (init, scaling) != ("ones", "fixed") else [by_seed[1]]
        assert group["n"] == len(values)
        assert group["median"] == pytest.approx(statistics.median(values))
        assert group["mean"] == pytest.approx(statistics.mean(values))
        if len(values) > 1:
            assert group["std"] == pytest.approx(statistics.stdev(values))
        else:
            assert math.isnan(group["std"])
        assert (group["min"], group["max"]) == (pytest.approx(min(values)), pytest.approx(max(values)))
        assert group["params.adapter"] == 18456
    broken = report.groups[
        report.groups["adapter.init"].eq("ones") & report.groups["adapter.scaling"].eq("fixed")
    ].iloc[0]
    assert (broken["n_failed"], broken["n_missing"]) == (1, 1)


def test_writes_markdown_csvs_and_a_figure_per_swept_key(init_sweep: Path) -> None:
    report = build_report(init_sweep)
    names = {path.name for path in report.files}
    # every arm has the same adapter size, so metric vs size would stand in one column: no such figure
    assert names == {"results.md", "results.csv", "runs.csv", "init_vs_metric.png", "scaling_vs_metric.png"}
    assert all((init_sweep / name).stat().st_size > 0 for name in names)
    assert (init_sweep / "init_vs_metric.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (init_sweep / "results.md").read_text()
    assert "## glue/sst2 — val/accuracy" in markdown
    assert "| uniform | learned | 3 | **0.8200** | 0.8400 ± 0.0529 |" in markdown
    assert "| ones | fixed | 1 (1 failed, 1 missing) | 0.4000 |" in markdown
    failed_section = markdown.split("## Failed runs (1)")[1].split("## Missing runs (1)")[0]
    assert f"| {FAILED_JOB} |" in failed_section and "RuntimeError: loss is NaN at step 12" in failed_section
    assert "Traceback" not in failed_section  # only the error's first line
    missing_section = markdown.split("## Missing runs (1)")[1]
    assert f"| {MISSING_JOB} | `adapter.init=ones adapter.scaling=fixed seed=3` |" in missing_section
    assert "Not started" not in markdown
    runs = read_csv(init_sweep / "runs.csv")
    assert [row["job"] for row in runs] == [str(i) for i in range(12)]
    assert {row["status"] for row in runs} == {"completed", "failed", "missing"}
    assert {
        "adapter.init",
        "adapter.scaling",
        "metric",
        "params.adapter",
        "params.head",
        "params.trainable",
        "time_s",
    } <= set(runs[0])
    assert len(read_csv(init_sweep / "results.csv")) == 4


def test_jobs_that_never_started_are_listed(init_sweep: Path) -> None:
    shutil.rmtree(init_sweep / MISSING_JOB)
    report = build_report(init_sweep, write=False)
    assert report.unstarted == [["adapter.init=ones", "adapter.scaling=fixed", "seed=3"]]
    assert "## Not started (1)" in report.markdown and "Missing runs" not in report.markdown


def test_metric_option_reads_best_and_rejects_unknown_keys(init_sweep: Path) -> None:
    report = build_report(init_sweep, metric="val/loss", by="adapter.init", write=False)
    uniform = report.groups[report.groups["adapter.init"] == "uniform"].iloc[0]
    losses = [1.0 - value for key, by_seed in ACCURACY.items() if key[0] == "uniform" for value in by_seed.values()]
    assert uniform["n"] == 6 and uniform["median"] == pytest.approx(statistics.median(losses))
    with pytest.raises(ValueError, match="val/f1.*available: epoch, val/accuracy, val/loss"):
        build_report(init_sweep, metric="val/f1", write=False)
    with pytest.raises(ValueError, match="optimizer.momentum"):
        build_report(init_sweep, by="optimizer.momentum", write=False)


def test_rank_and_lr_sweep_draws_axis_figures(tmp_path: Path) -> None:
    sweep = tmp_path / "rank_lr"
    for num, (rank, lr, seed) in enumerate(itertools.product([1, 4, 16], [1e-4, 1e-3], [1, 2])):
        value = 0.5 + 0.1 * math.log2(rank) / 4 + (0.05 if lr == 1e-3 else 0.0) + 0.01 * seed
        write_job(
            sweep / str(num),
            [f"adapter.rank={rank}", f"optimizer.lr={lr}", f"seed={seed}"],
            job_config(rank=rank, lr=lr, seed=seed),
            metrics_json("glue/sst2", seed, value, adapter_params=25 * rank),
        )
    report = build_report(sweep)
    assert report.by == ["adapter.rank", "optimizer.lr"]
    assert {"rank_vs_metric.png", "lr_vs_metric.png", "params_vs_metric.png"} <= {path.name for path in report.files}
    assert list(report.groups["adapter.rank"]) == [1, 1, 4, 4, 16, 16]  # numeric, not string, order
    assert any("no multirun.yaml" in note for note in report.notes)


def test_several_tasks_in_nested_job_dirs_get_one_table_each(tmp_path: Path) -> None:
    sweep = tmp_path / "tasks"
    for task, monitor in (("glue/sst2", "val/accuracy"), ("glue/cola", "val/mcc")):
        for num, adapter in enumerate(["loldu", "lora"]):
            job = sweep / task.replace("/", "_") / str(num)
            write_job(
                job,
                [f"task={task}", f"adapter={adapter}"],
                job_config(task=task),
                metrics_json(task, 42, 0.5 + num / 10, monitor=monitor),
            )
    report = build_report(sweep, write=False)
    assert report.by == ["adapter"]
    assert "## glue/cola — val/mcc" in report.markdown and "## glue/sst2 — val/accuracy" in report.markdown
    assert len(report.groups) == 4 and set(report.runs["job"]) == {
        "glue_sst2/0",
        "glue_sst2/1",
        "glue_cola/0",
        "glue_cola/1",
    }


def test_a_single_run_directory_is_one_job(tmp_path: Path) -> None:
    write_job(tmp_path / "run", ["seed=7"], job_config(seed=7), metrics_json("glue/sst2", 7, 0.9))
    report = build_report(tmp_path / "run", write=False)
    assert (
        list(report.runs["job"]) == ["."] and report.by == [] and report.groups.iloc[0]["median"] == pytest.approx(0.9)
    )


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "loldu_lightning.report", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_prints_table_and_paths(init_sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(str(init_sweep), "--by", "adapter.scaling", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "| adapter.scaling | n | median |" in result.stdout
    assert f"wrote {out / 'results.md'}" in result.stdout
    assert len(read_csv(out / "results.csv")) == 2 and (out / "scaling_vs_metric.png").is_file()
    assert not (init_sweep / "results.md").exists()


def test_cli_names_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report_main([str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty" / "logs").mkdir(parents=True)
    assert report_main([str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert f"no job directories in {tmp_path / 'empty'}" in error and ".hydra/" in error


def test_notebook_runs_on_a_sweep(init_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = run_sweep_notebook(init_sweep, tmp_path, monkeypatch)
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs)
    assert any("0.8200" in output.get("data", {}).get("text/markdown", "") for output in outputs)
    assert not (init_sweep / "results.md").exists()  # the notebook only reads the sweep


def _vision_sweep(sweep: Path, val_split: str) -> None:
    """Two seeds of a vision run whose validation split is `val_split`; final = best - 0.01."""
    sweep.mkdir()
    write_multirun(sweep, ["seed=1,2"])
    for num, seed in enumerate([1, 2]):
        config = job_config(task="vision/cifar10", seed=seed)
        config["task"]["val_split"] = val_split
        config["report_note"] = "rows re-run under one schedule"
        write_job(sweep / str(num), [f"seed={seed}"], config, metrics_json("vision/cifar10", seed, 0.9 + seed / 100))


@pytest.mark.parametrize(
    ("val_split", "epoch", "expected"),
    [
        ("test", "auto", "final"),
        ("val", "auto", "best"),
        ("test", "best", "best"),
        ("val", "final", "final"),
    ],
)
def test_epoch_protocol_reports_the_last_epoch_for_runs_that_validate_on_test(tmp_path, val_split, epoch, expected):
    """The paper's vision tables report the last epoch: a best epoch picked on the test split is optimistic."""
    sweep = tmp_path / "sweep"
    _vision_sweep(sweep, val_split)
    report = build_report(sweep, epoch=epoch, write=False)
    assert set(report.runs["epoch"]) == {expected}
    values = sorted(report.runs["metric"])
    offset = 0.01 if expected == "final" else 0.0
    assert values == pytest.approx([0.91 - offset, 0.92 - offset])
    assert ("last epoch" in report.markdown) == (expected == "final")
    assert "rows re-run under one schedule" in report.markdown  # the config's report_note


def test_epoch_option_rejects_unknown_values_and_glue_runs_keep_the_best_epoch(init_sweep: Path) -> None:
    with pytest.raises(ValueError, match="epoch must be one of auto, best, final"):
        build_report(init_sweep, epoch="last", write=False)
    assert set(build_report(init_sweep, write=False).runs["epoch"]) == {"best"}  # GLUE: no val_split


def write_sweep_plan(sweep_dir: Path, params: dict[str, str], task: list[str]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    hydra = {"sweeper": {"_target_": BASIC_SWEEPER, "params": params}, "overrides": {"task": task}}
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))


SWEEPS = {
    "params then command line": (
        {"adapter.init": "ones,uniform"},
        ["seed=1,2", "adapter.rank=8"],
        [
            ["adapter.init=ones", "seed=1", "adapter.rank=8"],
            ["adapter.init=ones", "seed=2", "adapter.rank=8"],
            ["adapter.init=uniform", "seed=1", "adapter.rank=8"],
            ["adapter.init=uniform", "seed=2", "adapter.rank=8"],
        ],
    ),
    "a later override of a key replaces the earlier one": (
        {"adapter.init": "ones,uniform", "seed": "1"},
        ["adapter.init=normal"],
        [["adapter.init=normal", "seed=1"]],
    ),
    "choice(), range() and an appended key": (
        {},
        ["adapter.rank=range(2,6,2)", "+tag=choice(a,b)"],
        [
            ["adapter.rank=2", "+tag=a"],
            ["adapter.rank=2", "+tag=b"],
            ["adapter.rank=4", "+tag=a"],
            ["adapter.rank=4", "+tag=b"],
        ],
    ),
}


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_the_planned_jobs_are_the_basic_sweepers(sweep: str, tmp_path: Path) -> None:
    from loldu_lightning.report.unstarted import find_unstarted

    params, task, expected = SWEEPS[sweep]
    write_sweep_plan(tmp_path, params, task)
    assert find_unstarted(tmp_path, []) == (expected, None)
    started = [tuple(reversed(expected[0]))]  # a started job matches whatever the order of its overrides
    assert find_unstarted(tmp_path, started) == (expected[1:], None)


@pytest.mark.parametrize("sweep", sorted(SWEEPS))
def test_the_expansion_matches_hydras_own_basic_sweeper(sweep: str, tmp_path: Path) -> None:
    """The report expands sweeps with Hydra's public override API; this compares it with the sweeper that ran them."""
    import importlib

    import hydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from loldu_lightning.report.unstarted import find_unstarted

    module_name, _, class_name = BASIC_SWEEPER.rpartition(".")
    try:
        basic_sweeper = getattr(importlib.import_module(module_name), class_name)
        split_arguments = basic_sweeper.split_arguments
    except (ImportError, AttributeError) as error:
        pytest.fail(
            f"Hydra {hydra.__version__} has no {BASIC_SWEEPER}.split_arguments ({error}); check that "
            "loldu_lightning.report.unstarted still expands sweeps as Hydra's basic sweeper does, then update this test"
        )
    params, task, _ = SWEEPS[sweep]
    write_sweep_plan(tmp_path, params, task)
    arguments = [f"{key}={value}" for key, value in params.items()] + task
    (hydras,) = split_arguments(OverridesParser.create().parse_overrides(arguments), max_batch_size=None)
    assert find_unstarted(tmp_path, []) == (hydras, None)


def test_a_sweep_the_basic_sweeper_cannot_expand_is_a_note(tmp_path: Path) -> None:
    from loldu_lightning.report.unstarted import find_unstarted

    write_sweep_plan(tmp_path, {}, ["optimizer.lr=interval(0.1,0.2)"])
    unstarted, note = find_unstarted(tmp_path, [])
    assert unstarted == [] and "could not expand the sweep" in note and "interval" in note.lower()


def decision_sweep(tmp_path: Path, values: dict[str, dict[str, list[float]]]) -> Path:
    """arm -> task -> one value per seed, as a sweep over optimizer.lr (the arm) and seeds."""
    sweep = tmp_path / "decision"
    lrs = {arm: 10.0 ** -(i + 2) for i, arm in enumerate(values)}
    num = 0
    for arm, tasks in values.items():
        for task, seeds in tasks.items():
            for seed, value in enumerate(seeds):
                write_job(
                    sweep / str(num),
                    [f"task={task}", f"optimizer.lr={lrs[arm]}", f"seed={seed}"],
                    job_config(task=task, lr=lrs[arm], seed=seed),
                    metrics_json(task, seed, value + 0.01),  # `final` is value (metrics_json's final = best - 0.01)
                )
                num += 1
    return sweep


def test_decision_rule_adopts_rejects_and_leaves_undecided(tmp_path: Path) -> None:
    reference = {"glue/sst2": [0.80, 0.82, 0.84], "glue/mrpc": [0.70, 0.72, 0.74]}  # std 0.02 on each
    sweep = decision_sweep(
        tmp_path,
        {
            "defaults": reference,
            "better": {"glue/sst2": [0.83, 0.84, 0.85], "glue/mrpc": [0.72, 0.73, 0.74]},
            "worse": {"glue/sst2": [0.79, 0.80, 0.81], "glue/mrpc": [0.72, 0.72, 0.72]},
            "lopsided": {"glue/sst2": [0.90, 0.90, 0.90], "glue/mrpc": [0.67, 0.68, 0.69]},  # mrpc -0.04 > std
            "one_task": {"glue/sst2": [0.90, 0.90, 0.90]},
            "one_seed": {"glue/sst2": [0.90], "glue/mrpc": [0.80]},
        },
    )
    report = build_report(sweep, by="optimizer.lr", epoch="final", write=False, reference="optimizer.lr=0.01")
    section = report.markdown.split("## Decision", 1)[1]
    verdicts = {
        float(row.split("|")[1]): row.split("|")[6].strip("* ")
        for row in section.splitlines()
        if row.startswith("| ") and not row.startswith("| candidate")
    }
    assert verdicts == {
        0.001: "adopt",
        0.0001: "reject",
        1e-05: "reject",
        1e-06: "undecided",
        1e-07: "undecided",
    }
    assert "loses glue/mrpc by 4.00 > std 2.00" in section
    assert "not run on glue/mrpc" in section and "fewer seeds than the reference on" in section
    strict = build_report(
        sweep, by="optimizer.lr", epoch="final", write=False, reference="optimizer.lr=0.01", min_seeds=4
    ).markdown.split("## Decision", 1)[1]
    assert "**adopt**" not in strict and "fewer than 4 seeds (either side) on glue/mrpc, glue/sst2" in strict


def test_decision_options_name_what_is_wrong(tmp_path: Path) -> None:
    sweep = decision_sweep(tmp_path, {"a": {"glue/sst2": [0.8]}, "b": {"glue/sst2": [0.9]}})
    with pytest.raises(ValueError, match="not a --by key"):
        build_report(sweep, by="optimizer.lr", write=False, reference="adapter.rank=8")
    with pytest.raises(ValueError, match="selects no group"):
        build_report(sweep, by="optimizer.lr", write=False, reference="optimizer.lr=0.5")
    report = build_report(
        sweep, by="optimizer.lr", epoch="final", write=False, reference="optimizer.lr=0.01", candidates="optimizer.lr=1"
    )
    assert "| 0.001 |" not in report.markdown.split("## Decision", 1)[1]
    with pytest.raises(ValueError, match="each part must be key=value"):
        build_report(sweep, by="optimizer.lr", write=False, reference="optimizer.lr")
