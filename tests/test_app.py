"""The Hydra + Lightning application end to end on the real GLUE files with a tiny RoBERTa."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from loldu_lightning.adapters import build_adapter
from loldu_lightning.cli.config import validate_config
from loldu_lightning.cli.overrides import check_override_keys
from loldu_lightning.loldu.manifest import AdapterManifest
from loldu_lightning.train import train
from tests.helpers import TINY_GLUE, compose_config, logged_values
from tests.test_adapters import FOLDER_FILES


@pytest.fixture
def rte(glue_root):
    return [*TINY_GLUE, "task=glue/rte", f"data.data_dir={glue_root / 'RTE'}"]


def test_default_config_is_the_offline_quickstart():
    cfg = compose_config([])
    assert cfg.model.name_or_path == "minilm"
    assert cfg.adapter.name == "loldu"
    assert os.path.isfile(os.path.join(cfg.data.data_dir, "train.tsv"))
    validate_config(cfg)


def test_quickstart_path_runs_on_the_packaged_data(tmp_path):
    """The default config (real MiniLM, packaged SST-2 sample) end to end, on a few batches."""
    result = train(compose_config(["debug=fast", "data.batch_size=8"], tmp_path))
    assert result["status"] == "completed" and result["task"] == "glue/sst2"
    assert result["params"]["adapter"] == 12 * (384 + 1)  # 6 layers x (query, value), full rank 384
    assert result["params"]["head"] == 384 * 384 + 384 + 384 * 2 + 2  # BERT pooler + classifier


def test_glue_paper_hyperparameters_are_encoded():
    cfg = compose_config(["experiment=paper/glue_mrpc"])
    assert (cfg.optimizer.lr, cfg.trainer.max_epochs, cfg.data.max_length) == (3e-4, 20, 512)
    assert (cfg.adapter.rank, cfg.adapter.alpha, list(cfg.adapter.target_modules)) == (768, 768, ["query", "value"])
    assert cfg.data.batch_size == 32 and cfg.scheduler.warmup_ratio == 0.06


def test_train_on_real_rte_writes_every_output(rte, tmp_path):
    result = train(compose_config([*rte, "callbacks.throughput=2"], tmp_path))
    assert result["status"] == "completed"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    logged = logged_values(tmp_path, "val/accuracy")
    assert len(logged) == 1 and 0.0 <= logged[0] <= 1.0  # one epoch: one validation
    assert metrics["objective"] == pytest.approx(max(logged)) and metrics["best"]["epoch"] == 0
    assert metrics["params"]["adapter"] == 2 * 2 * (8 + 1)  # 2 layers x (query, value) x (r + 1)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"best", "last"}
    for kind in ("best", "last"):
        assert {p.name for p in (tmp_path / "adapter" / kind).iterdir()} == FOLDER_FILES["loldu"]
        assert AdapterManifest.read(tmp_path / "adapter" / kind).adapter == "loldu"
    header = next((tmp_path / "logs").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    # Lightning's ThroughputMonitor: "device/" rates are this process's (items = non-padding tokens)
    assert {"train/loss", "val/accuracy", "train/device/samples_per_sec", "train/device/items_per_sec"} <= set(header)


@pytest.mark.parametrize(("adapter", "layout"), [("lora", "peft"), ("bitfit", "parameters")])
def test_training_writes_exactly_the_files_of_the_adapters_layout(rte, tmp_path, adapter, layout):
    """The PEFT and parameter-subset layouts end to end (LoLDU's is checked above): nothing missing, nothing extra."""
    overrides = [o for o in rte if not o.startswith(("adapter.rank=", "adapter.alpha="))]
    result = train(compose_config([*overrides, f"adapter={adapter}", "data.train_limit=16"], tmp_path))
    assert result["status"] == "completed" and result["adapter"] == adapter
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"best", "last"}
    for kind in ("best", "last"):
        folder = tmp_path / "adapter" / kind
        assert {p.name for p in folder.iterdir()} == FOLDER_FILES[layout]
        manifest = AdapterManifest.read(folder)
        assert (manifest.adapter, manifest.layout) == (adapter, layout)


def test_resume_after_epoch_one_matches_uninterrupted_run(rte, tmp_path):
    two_epochs = [*rte, "trainer.max_epochs=2"]
    straight = train(compose_config(two_epochs, tmp_path / "straight"))

    interrupted_dir = tmp_path / "interrupted"
    cfg = compose_config(two_epochs, interrupted_dir)
    cfg.callbacks.extra = {"stop": {"_target_": "tests.helpers.StopAfterFirstEpoch"}}
    first = train(cfg)
    assert first["final"]["epoch"] == 0 and first["start_step"] == 0 and first["steps_run"] > 0
    resumed = train(compose_config([*two_epochs, "ckpt_path=last"], interrupted_dir))
    assert resumed["final"]["epoch"] == 1
    # deterministic training would end equal after a restart from step 0 too: the step counts tell them apart
    assert (resumed["start_step"], resumed["steps_run"]) == (
        first["steps_run"],
        straight["steps_run"] - first["steps_run"],
    )
    assert resumed["final"]["val/accuracy"] == pytest.approx(straight["final"]["val/accuracy"], abs=1e-6)
    assert resumed["final"]["val/loss"] == pytest.approx(straight["final"]["val/loss"], rel=1e-4)


def test_checkpoints_omit_frozen_weights(rte, tmp_path):
    import torch

    train(compose_config(rte, tmp_path))
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any("word_embeddings" in key for key in state)
    assert any(key.endswith(".z") for key in state)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(rte, tmp_path):
    cfg = compose_config([*rte, "optimizer.lr=1e30", "trainer.max_epochs=3", "scheduler=constant"], tmp_path)
    with pytest.raises(FloatingPointError, match="Lower optimizer.lr"):
        train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "FloatingPointError" in metrics["error"]
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("adapter.rnak=8", "Keys under 'adapter': .*rank"),
        ("optimizer.lrr=1", "Keys under 'optimizer': .*lr"),
    ],
)
def test_unknown_keys_list_the_allowed_ones(override, message):
    with pytest.raises(ValueError, match=message):
        check_override_keys([override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("adapter.init=unifrom", "uniform"),
        ("adapter.scaling=sometimes", "learned"),
        ("optimizer.name=adamx", "adamw"),
        ("+trainer.max_epoch=2", "max_epochs"),
    ],
)
def test_bad_values_fail_before_any_model_loads(override, message):
    with pytest.raises(ValueError, match=message):
        validate_config(compose_config([override]))


def test_missing_model_and_data_name_the_fix(glue_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.name_or_path"):
        train(
            compose_config(
                [
                    "model=roberta-base",
                    "model.name_or_path=/nonexistent/roberta",
                    f"data.data_dir={glue_root / 'RTE'}",
                    "task=glue/rte",
                ],
                tmp_path / "a",
            )
        )
    with pytest.raises(FileNotFoundError, match="data.data_dir"):
        train(compose_config([*TINY_GLUE, "task=glue/rte", "data.data_dir=/nonexistent/RTE"], tmp_path / "b"))


def _cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "loldu_lightning", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_typo_fails_fast_with_the_allowed_keys(tmp_path):
    run = _cli("adapter.rnak=8", cwd=tmp_path)
    assert run.returncode != 0
    assert "Unknown config key 'adapter.rnak'" in run.stderr and "rank" in run.stderr


def test_cli_multirun_yields_one_run_per_init(rte, tmp_path):
    run = _cli("-m", "adapter.init=uniform,zeros", *rte, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    assert len(jobs) == 2
    assert {json.loads(p.read_text())["status"] for p in jobs} == {"completed"}
    overrides_seen = {tuple(OmegaConf.load(p.parent / ".hydra" / "overrides.yaml")) for p in jobs}
    assert any("adapter.init=zeros" in o for o in overrides_seen)


@pytest.mark.parametrize(
    "overrides, adapter_scale, head_lr",
    [
        (["adapter.decomposition=lu"], 1.0, None),  # one group, as before rates could differ
        ([], 30.0, None),  # the default: svd's z and sigma at 30 x optimizer.lr, the head at optimizer.lr
        (["adapter.decomposition=qr"], 20.0, None),
        (["adapter.decomposition=lu", "optimizer.head_lr=0.05"], 1.0, 0.05),
        (["adapter.lr_scale=4", "optimizer.head_lr=0.05"], 4.0, 0.05),
    ],
)
def test_the_adapter_and_the_head_train_at_their_own_rates(rte, tmp_path, overrides, adapter_scale, head_lr):
    from loldu_lightning.builders import build_task

    cfg = compose_config([*rte, *overrides, "scheduler.name=none"], tmp_path)
    module, _ = build_task(cfg)
    adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
    module.model = adapter.apply(module.model, module.head_modules)
    groups = module.configure_optimizers().param_groups
    lr = cfg.optimizer.lr
    if adapter_scale == 1.0 and head_lr is None:
        assert [g["lr"] for g in groups] == [lr]
        return
    assert [g["lr"] for g in groups] == pytest.approx([lr * adapter_scale, lr if head_lr is None else head_lr])
    assert sum(p.numel() for p in groups[0]["params"]) == 2 * 2 * (8 + 1)  # only z and sigma
