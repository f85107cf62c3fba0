"""Experiment trackers for real: tiny trainings with logger=tensorboard|mlflow|wandb, read back with
each tracker's own reader (TensorBoard's EventAccumulator, MlflowClient, W&B's record format)."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from PIL import Image

from loldu_lightning.cli.errors import user_error_message
from loldu_lightning.train import train
from tests.helpers import TINY_GLUE, compose_config

pytest.importorskip("tensorboard", reason="the tracking extra: pip install -e '.[tracking]'")
pytest.importorskip("mlflow", reason="the tracking extra: pip install -e '.[tracking]'")
pytest.importorskip("wandb", reason="the tracking extra: pip install -e '.[tracking]'")

# two optimizer steps (logged at every step) and one validation: the least that has every kind of metric
FAST = [*TINY_GLUE, "debug=fast", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


@pytest.fixture
def tracker_env(monkeypatch, tmp_path):
    """W&B and MLflow exactly as a user without an account or server has them; nothing written to $HOME."""
    for key in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(key, raising=False)
    for key in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home" / key.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once: creating one runs every schema migration (seconds on 2 cores)."""
    from mlflow.tracking import MlflowClient

    database = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


def seed_mlflow_store(folder: Path, template: Path) -> None:
    """Put the empty store where the run's default MLflow store will be (a copy opens in a fraction of a second);
    a run that looked elsewhere would leave this one without runs, so the checks below still hold the path."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "mlflow.db")


# --- readers -----------------------------------------------------------------------------------


def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def tensorboard_hparams(events) -> tuple[dict, list[str]]:
    """The HParams tab's view of a run: its hyper-parameters and the metric names it compares."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    params = {}
    for key, value in start.session_start_info.hparams.items():
        params[key] = getattr(value, value.WhichOneof("kind"))
    return params, [info.name.tag for info in experiment.experiment.metric_infos]


def wandb_records(run_folder: Path) -> list:
    """Every record of an offline run's `.wandb` file, parsed with W&B's own protobuf messages.

    The file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-log
    blocks of 32 KiB holding chunks (7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST).
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_folder.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, position, chunks, records = 32 * 1024, 7, [], []
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            position += left_in_block
            continue
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def wandb_run(run_folder: Path) -> dict:
    """The parts of an offline W&B run a test checks: run record, config, history rows, summary, artifacts, exit."""

    def items(updates) -> dict:
        return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}

    run = {"config": {}, "history": [], "summary": {}, "artifacts": [], "exit_code": None}
    for record in wandb_records(run_folder):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["run"] = record.run
        elif kind == "config":
            run["config"].update(items(record.config.update))
        elif kind == "history":
            run["history"].append(items(record.history.item))
        elif kind == "summary":
            run["summary"].update(items(record.summary.update))
        elif kind == "artifact":
            run["artifacts"].append(record.artifact)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def mlflow_client(folder: Path):
    from mlflow.tracking import MlflowClient

    database = folder / "mlflow.db"
    assert database.is_file(), f"no MLflow store at {database}"
    return MlflowClient(f"sqlite:///{database}")


def mlflow_runs(client, experiment_name: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([experiment.experiment_id])


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("logger, package", [("mlflow", "mlflow"), ("wandb", "wandb"), ("tensorboard", "tensorboard")])
def test_missing_tracker_package_stops_before_the_model_loads(monkeypatch, tmp_path, logger, package):
    import importlib.util

    from loldu_lightning import train as train_module
    from loldu_lightning.builders import loggers

    real_find_spec = importlib.util.find_spec
    missing = {package, "tensorboardX"}
    monkeypatch.setattr(
        loggers.importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a)
    )

    def model_loads(cfg):
        raise AssertionError("the model was built before the missing package was reported")

    monkeypatch.setattr(train_module, "build_task", model_loads)
    with pytest.raises(ModuleNotFoundError) as error:
        train(compose_config([*FAST, f"logger={logger}"], tmp_path))
    message = str(error.value)
    assert user_error_message(error.value) == message  # the CLI prints it as one `error:` line, exit status 2
    assert (
        "\n" not in message and f"logger={logger}" in message and "pip install 'loldu-lightning[tracking]'" in message
    )


def test_one_run_lands_in_every_tracker(tracker_env, mlflow_template, tmp_path):
    seed_mlflow_store(tmp_path, mlflow_template)
    result = train(compose_config([*FAST, "logger=[csv,tensorboard,mlflow,wandb]"], tmp_path))
    assert result["status"] == "completed"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    objective, trainable = metrics["objective"], metrics["params"]["adapter"]
    assert trainable == 2 * 2 * (8 + 1)

    # TensorBoard: step metrics with their steps, metrics.json's values, the HParams tab
    events = tensorboard_events(tmp_path / "tensorboard")
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    assert len(events.Scalars("val/accuracy")) == 1
    assert events.Scalars("objective")[-1].value == pytest.approx(objective)
    assert events.Scalars("final/val/loss")[-1].value == pytest.approx(metrics["final"]["val/loss"])
    params, compared = tensorboard_hparams(events)
    assert params["adapter.rank"] == 8 and params["params/adapter"] == trainable and params["task.name"] == "sst2"
    assert params["adapter.target_modules"] == '["query", "value"]'
    assert {"objective", "best/val/accuracy"} <= set(compared)

    # MLflow: the default SQLite store in the run folder, one finished run with params, metrics, artifacts
    client = mlflow_client(tmp_path)
    (run,) = mlflow_runs(client, "glue/sst2")
    assert run.info.status == "FINISHED" and run.info.run_name == "sst2-loldu"
    assert run.data.params["adapter.rank"] == "8" and run.data.params["params/adapter"] == str(trainable)
    assert run.data.metrics["objective"] == pytest.approx(objective)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "metrics.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "adapter/best")} >= {
        "adapter/best/adapter_config.json",
        "adapter/best/adapter_model.safetensors",
    }
    downloaded = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / "download"))
    assert json.loads(Path(downloaded).read_text())["objective"] == objective
    assert (tmp_path / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()

    # W&B: offline, in the run folder; history with steps, config, summary, adapter artifact, a clean exit
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    wandb = wandb_run(folder)
    assert wandb["run"].display_name == "sst2-loldu" and wandb["run"].run_group == ""
    assert wandb["config"]["adapter.rank"] == 8 and wandb["config"]["params/adapter"] == trainable
    losses = [row for row in wandb["history"] if "train/loss" in row]
    assert [row["trainer/global_step"] for row in losses] == [0, 1]
    assert any("val/accuracy" in row for row in wandb["history"])
    assert wandb["summary"]["objective"] == pytest.approx(objective)
    (artifact,) = wandb["artifacts"]
    assert artifact.type == "model" and "best/adapter_model.safetensors" in {e.path for e in artifact.manifest.contents}
    assert wandb["exit_code"] == 0
    assert (folder / "files" / "metrics.json").is_file()

    # CSV: the final values after the step rows
    (csv,) = (tmp_path / "logs").rglob("metrics.csv")
    assert "objective" in csv.read_text().splitlines()[0].split(",")


def _run_cli_in_process(monkeypatch, arguments: list[str]) -> None:
    """`python -m loldu_lightning ...` in this process (a subprocess would re-import torch and Lightning)."""
    from hydra.core.global_hydra import GlobalHydra

    from loldu_lightning.__main__ import main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "argv", ["loldu", *arguments])
    try:
        main()
    finally:  # Hydra configures logging and its global state for the job; give both back to pytest
        for handler in set(root.handlers) - set(handlers):
            root.removeHandler(handler)
        root.setLevel(level)
        GlobalHydra.instance().clear()


def test_sweep_jobs_are_separate_runs_in_one_group(tracker_env, mlflow_template, monkeypatch, tmp_path):
    sweep = tmp_path / "sweep"
    seed_mlflow_store(sweep, mlflow_template)
    _run_cli_in_process(
        monkeypatch, ["-m", "seed=1,2", "logger=[tensorboard,mlflow,wandb]", *FAST, f"hydra.sweep.dir={sweep}"]
    )
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert not HydraConfig.initialized()  # a later train(cfg) in this process is no sweep job

    # MLflow: one store for the sweep, one experiment named after it, one finished run per job
    client = mlflow_client(sweep)
    runs = mlflow_runs(client, str(sweep))
    assert sorted((r.data.params["seed"], r.data.tags["job_num"], r.info.status) for r in runs) == [
        ("1", "0", "FINISHED"),
        ("2", "1", "FINISHED"),
    ]
    assert {r.info.run_name for r in runs} == {"sst2-loldu-0", "sst2-loldu-1"}

    # W&B: one run per job, both in the sweep's group, each with its own config and history only
    wandb = {job: wandb_run(next((sweep / job / "wandb").glob("offline-run-*"))) for job in ("0", "1")}
    assert wandb["0"]["run"].run_id != wandb["1"]["run"].run_id
    assert {run["run"].run_group for run in wandb.values()} == {str(sweep)}
    assert (wandb["0"]["config"]["seed"], wandb["1"]["config"]["seed"]) == (1, 2)
    for run in wandb.values():
        assert [row["trainer/global_step"] for row in run["history"] if "train/loss" in row] == [0, 1]
        assert run["exit_code"] == 0

    # TensorBoard: one folder per job under the sweep, so `tensorboard --logdir <sweep>` lists both
    for job in ("0", "1"):
        assert len(tensorboard_events(sweep / job / "tensorboard").Scalars("val/accuracy")) == 1


def test_sample_grids_reach_every_tracker_that_takes_images(tracker_env, mlflow_template, tmp_path):
    """callbacks/sampling.py's `log_image` (diffusion sampling grids) against real loggers."""
    from types import SimpleNamespace

    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    from loldu_lightning.callbacks.sampling import log_image

    seed_mlflow_store(tmp_path, mlflow_template)
    grid = Image.new("RGB", (64, 32), (200, 30, 30))
    loggers = [
        CSVLogger(tmp_path),  # takes no images: skipped
        TensorBoardLogger(tmp_path, name="tensorboard", version=""),
        MLFlowLogger(
            "samples", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location=(tmp_path / "a").as_uri()
        ),
        WandbLogger(save_dir=str(tmp_path), project="samples", mode="offline"),
    ]
    log_image(SimpleNamespace(loggers=loggers), "samples", grid, step=4)
    run_id = loggers[2].run_id
    for logger in loggers:
        logger.finalize("success")
    loggers[3].experiment.finish()

    images = tensorboard_events(tmp_path / "tensorboard").Images("samples")
    assert [(i.step, i.width, i.height) for i in images] == [(4, 64, 32)]
    client = mlflow_client(tmp_path)
    path = client.download_artifacts(run_id, "samples/step_000004.png", str(tmp_path / "download"))
    assert Image.open(path).size == (64, 32)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    (row,) = [row for row in wandb_run(folder)["history"] if "samples/_type" in row]
    assert row["samples/_type"] == "images/separated" and row["trainer/global_step"] == 4
    assert list((folder / "files" / "media" / "images").glob("samples_*.png"))


def test_instruct_generations_reach_the_trackers_as_text(tracker_env, mlflow_template, tmp_path):
    """callbacks/generation.py's GenerationSamples files, as TensorBoard text, a W&B table and an MLflow artifact."""
    records = [
        {"instruction": f"Say the number {i} in words.", "input": "", "output": f"The number is {i}."}
        for i in range(24)
    ]
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(records))
    overrides = [
        "task=instruct/alpaca",
        "model=tiny-llama",
        "trainer=cpu",
        "callbacks.lr_monitor=false",
        f"data.path={data}",
        "data.prompt_format=chat",
        "data.max_length=128",
        "data.train_limit=16",
        "data.val_limit=8",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "adapter.rank=4",
        "adapter.alpha=4",
        "task.generation.num_prompts=1",
        "task.generation.max_new_tokens=4",
        "logger=[tensorboard,mlflow,wandb]",
    ]
    run_dir = tmp_path / "run"
    seed_mlflow_store(run_dir, mlflow_template)
    assert train(compose_config(overrides, run_dir))["status"] == "completed"
    written = (run_dir / "generations" / "epoch_0.md").read_text()
    assert "## Prompt 1" in written

    texts = tensorboard_events(run_dir / "tensorboard").Tensors("generations/text_summary")
    assert [t.step for t in texts] == [2] and "## Prompt 1" in texts[0].tensor_proto.string_val[0].decode()
    (run,) = mlflow_runs(mlflow_client(run_dir), "instruct/alpaca")
    path = mlflow_client(run_dir).download_artifacts(run.info.run_id, "generations/epoch_0.md", str(tmp_path / "d"))
    assert Path(path).read_text() == written
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (row,) = [row for row in wandb_run(folder)["history"] if "generations/_type" in row]
    assert row["generations/_type"] == "table-file" and row["generations/nrows"] == 1
