"""Scale-out on Lightning's own engines, for real on CPU: DDP with 2 gloo ranks through the CLI,
Hydra multirun x DDP, the submitit launcher, and bf16 autocast.

The DDP runs start the real CLI (`python -m loldu_lightning ... trainer=ddp trainer.accelerator=cpu
trainer.devices=2`): Lightning's launcher starts rank 1 as a second process, exactly as on GPUs.
`tests.ddp_probe.DistributedProbe` makes every rank write what it holds; the tests gather and compare.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from loldu_lightning.adapters import build_adapter
from loldu_lightning.builders import build_task
from loldu_lightning.loldu import loldu_modules
from loldu_lightning.train import train
from tests import helpers
from tests.helpers import TINY_GLUE, compose_config

TESTS = Path(__file__).resolve().parent
# 32 training examples = 2 steps per epoch on each of 2 ranks (batch 8); 21 dev examples do not split
# evenly over 2 ranks, so an evaluation that repeated an example to pad the last round would differ.
TINY_DDP = [
    "model=tiny-roberta",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "data.train_limit=32",
    "data.val_limit=21",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.max_length=64",
    "adapter.rank=8",
    "adapter.alpha=8",
    "logger=none",
    "callbacks.lr_monitor=false",
    "callbacks.throughput=0",
    "+callbacks.extra.probe={_target_:tests.ddp_probe.DistributedProbe}",
]


@pytest.fixture
def rte(glue_root) -> list[str]:
    """The real GLUE RTE from ../shared/data (a generated stand-in in the same format in a plain clone)."""
    return ["task=glue/rte", f"data.data_dir={glue_root / 'RTE'}"]


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> str:
    return helpers.run_cli(args, cwd, timeout, OMP_NUM_THREADS="1")  # one thread per rank on 2 cores


def probes(run_dir: Path, step: int | None = None) -> list[dict]:
    """The ranks' records, by rank (only those of the run that ended at `step`, when given)."""
    records = [json.loads(p.read_text()) for p in (run_dir / "probe").glob("rank*.json")]
    return sorted((r for r in records if step is None or r["global_step"] == step), key=lambda r: r["global_rank"])


def without(options: list[str], *prefixes: str) -> list[str]:
    return [o for o in options if not o.startswith(prefixes)]


def test_ddp_two_ranks_one_set_of_outputs_synced_metrics_and_resume(rte, tmp_path):
    run_dir = tmp_path / "run"
    run_cli([*rte, *TINY_DDP, f"hydra.run.dir={run_dir}"], cwd=tmp_path)

    # every rank decomposed on its own (fingerprints taken before DDP wraps the model) to the same factors,
    # and after the optimizer steps the trainable parameters (z, sigma, head) are equal on both ranks
    rank0, rank1 = probes(run_dir)
    assert (rank0["global_rank"], rank1["global_rank"], rank0["world_size"]) == (0, 1, 2)
    assert rank0["pid"] != rank1["pid"]
    assert rank0["factors"] == rank1["factors"]
    # the adapter callback injected (and the probe fingerprinted) before Lightning wrapped the model
    assert not rank0["wrapped_at_setup"] and rank0["wrapped_at_train_start"]
    assert rank0["trainable_at_end"] == rank1["trainable_at_end"] != rank0["trainable_at_setup"]
    assert rank0["global_step"] == 2

    # one adapter/, one set of checkpoints, one metrics.json, written by rank 0 only
    assert [p.relative_to(run_dir) for p in run_dir.rglob("metrics.json")] == [Path("metrics.json")]
    assert sorted(p.name for p in (run_dir / "adapter").iterdir()) == ["best", "last"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-epoch=0.ckpt", "last.ckpt"]
    rank0_log, rank1_log = (run_dir / "__main__.log").read_text(), (run_dir / "train_ddp_process_1.log").read_text()
    assert "Wrote " in rank0_log and "Wrote " not in rank1_log
    assert "Trainable parameters" in rank0_log and "Trainable parameters" not in rank1_log
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"

    # the synced validation metrics equal a single-process evaluation of the saved weights
    cfg = compose_config([*rte, *without(TINY_DDP, "trainer", "+callbacks"), "trainer=cpu"], tmp_path / "single")
    L.seed_everything(cfg.seed, workers=True)  # train() does the same: the tiny model's base weights match
    module, datamodule = build_task(cfg)
    adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
    module.model = adapter.load(module.model, run_dir / "adapter" / "last")  # refuses a different base model
    [single] = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    ).validate(module, datamodule=datamodule, verbose=False)
    assert len(datamodule.datasets["validation"]) == 21
    assert metrics["final"]["val/accuracy"] == pytest.approx(single["val/accuracy"], abs=1e-7)
    assert metrics["final"]["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)

    # ckpt_path=last resumes the DDP run in its folder, extended on purpose: epoch 1 continues from step 2
    extend = ["trainer.max_epochs=2", "+resume.allow_changes=[trainer.max_epochs]"]
    run_cli([*rte, *TINY_DDP, *extend, "ckpt_path=last", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["status"] == "completed"
    assert [resumed["final"]["epoch"], resumed["final"]["step"]] == [1, 4]
    assert (resumed["start_step"], resumed["steps_run"]) == (2, 2)  # continued, not restarted from step 0
    rank0, rank1 = probes(run_dir, step=4)
    assert rank0["factors"] == rank1["factors"] and rank0["trainable_at_end"] == rank1["trainable_at_end"]


def test_multirun_with_ddp_runs_each_job_once_with_its_own_two_ranks(rte, tmp_path):
    sweep = tmp_path / "sweep"
    output = run_cli(
        ["-m", "adapter.init=uniform,normal", *rte, *TINY_DDP, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=400
    )
    assert output.count("Launching 2 jobs") == 1  # no child process re-ran the sweep
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()

    pids = {}
    for job in ("0", "1"):
        records = probes(sweep / job)
        assert [r["global_rank"] for r in records] == [0, 1]  # exactly one process per rank per job
        assert records[0]["factors"] == records[1]["factors"]
        assert records[0]["trainable_at_end"] == records[1]["trainable_at_end"]
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
        pids[job] = [r["pid"] for r in records]
    # rank 0 of both jobs is the sweep process; each job started its own rank-1 process
    assert pids["0"][0] == pids["1"][0] and pids["0"][1] != pids["1"][1]
    assert len({pid for job in pids.values() for pid in job}) == 3
    # different inits, hence different factors' c and trainable values per job
    assert probes(sweep / "0")[0]["trainable_at_setup"] != probes(sweep / "1")[0]["trainable_at_setup"]

    from loldu_lightning.report import build_report

    report = build_report(sweep)
    assert len(report.runs) == 2 and set(report.runs["status"]) == {"completed"}


def test_submitit_local_launcher_runs_a_two_job_sweep(rte, tmp_path):
    """hydra/launcher=submitit_local: the submitit engine (as on SLURM) with each job in its own process."""
    sweep = tmp_path / "sweep"
    run_cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "adapter.init=uniform,normal",
            *rte,
            *without(TINY_GLUE, "data.train_limit", "data.val_limit"),
            "data.train_limit=16",
            "data.val_limit=16",
            "logger=none",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        timeout=400,
    )
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert (sweep / job / "adapter" / "last" / "adapter_config.json").is_file()
    # submitit's own records: one pickled job and one result per job
    results = sorted((sweep / ".submitit").rglob("*_result.pkl"))
    assert len(results) == 2


def test_bf16_autocast_on_cpu_keeps_step0_output_and_fp32_adapter(rte, tmp_path):
    """The autocast path Lightning's bf16-mixed uses (on CPU here): step-0 output equals the base model's,
    training loss is finite, and z, sigma, c stay float32."""
    cfg = compose_config(
        [
            *rte,
            *without(TINY_GLUE, "data.train_limit"),
            "trainer.precision=bf16-mixed",
            "data.train_limit=32",
            "logger=none",
            "+callbacks.extra.precision={_target_:tests.ddp_probe.PrecisionProbe}",
        ],
        tmp_path,
    )
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build_task(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()[0]))
    base = copy.deepcopy(module.model).eval()  # eval: no dropout, so the comparison can be exact
    adapted = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True)).apply(
        copy.deepcopy(base), cfg.model.head_modules
    )
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        base_logits, adapted_logits = base(**batch).logits, adapted(**batch).logits
    assert adapted_logits.dtype == torch.bfloat16
    torch.testing.assert_close(adapted_logits, base_logits, atol=0, rtol=0)

    result = train(cfg)
    assert result["status"] == "completed"
    probe = json.loads((tmp_path / "precision_probe.json").read_text())
    assert len(probe["losses"]) == 2 and all(torch.isfinite(torch.tensor(probe["losses"])))
    assert probe["dtypes"] == ["torch.float32"]


def test_fp16_autocast_with_grad_scaler_keeps_fp32_adapter(rte, tmp_path):
    """What `trainer.precision=16-mixed` does on a GPU (fp16 autocast + GradScaler), with torch's CPU
    autocast and scaler: z, sigma and c stay float32, the step-0 output is the base model's, z trains."""
    cfg = compose_config([*rte, *TINY_GLUE], tmp_path)
    L.seed_everything(cfg.seed, workers=True)
    module, datamodule = build_task(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    base = copy.deepcopy(module.model).eval()
    model = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True)).apply(module.model, cfg.model.head_modules)
    model.eval()  # no dropout: the step-0 comparison is exact
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, atol=0, rtol=0)

    layers = [layer for _, layer in loldu_modules(model)]
    z0 = [layer.z.detach().clone() for layer in layers]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(**batch).loss
        assert torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    assert {(layer.z.dtype, layer.sigma.dtype, layer.c.dtype) for layer in layers} == {(torch.float32,) * 3}
    assert any(not torch.equal(layer.z, before) for layer, before in zip(layers, z0, strict=True))


def test_slurm_launcher_config_asks_one_task_per_device_on_every_node():
    from hydra import compose, initialize_config_dir

    from loldu_lightning.cli.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "hydra/launcher=submitit_slurm_ddp",
                "trainer=ddp",
                "trainer.num_nodes=2",
                "trainer.devices=4",
                "hydra.launcher.partition=gpu",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (2, 4, 4, "gpu")
    assert cfg.trainer.strategy.broadcast_buffers is False


def test_adapter_from_a_sharded_fsdp2_model_loads_into_a_plain_model(tmp_path):
    """Lightning's FSDPStrategy and torch's FSDP1 refuse the CPU; torch's FSDP2 (`fully_shard`) runs on it.
    Injection before sharding, sharded z trained on 2 ranks, files gathered on rank 0, same outputs."""
    import socket

    import torch.multiprocessing as mp

    from tests.ddp_probe import fsdp2_worker

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(fsdp2_worker, args=(port, str(tmp_path / "adapter")), nprocs=2)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_ddp_child_runs_its_parent_job_not_the_sweep(monkeypatch):
    from loldu_lightning.cli.hydra_ddp import JOB_ENV, child_arguments

    sweep = ["-m", "-cn", "config", "--config-dir=/extra", "adapter.init=uniform,normal", "trainer=ddp"]
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv(JOB_ENV, json.dumps({"overrides": ["adapter.init=normal", "trainer=ddp"], "output_dir": "/s/1"}))
    assert child_arguments(sweep) == sweep  # the sweep process itself (rank 0) runs what it was given
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert child_arguments(sweep) == [
        "-cn",
        "config",
        "--config-dir=/extra",
        "adapter.init=normal",
        "trainer=ddp",
        'hydra.run.dir="/s/1"',
        "hydra.output_subdir=null",
        "hydra.job.name=train_ddp_process_1",
    ]
    monkeypatch.delenv(JOB_ENV)
    assert child_arguments(sweep) == sweep  # torchrun / SLURM ranks: nothing exported, nothing changed


def _ddp_wrapper_after_one_step(strategy):
    """The `DistributedDataParallel` module `strategy` trains a model with, in this process (world size 1)."""
    from lightning.pytorch.demos.boring_classes import BoringModel
    from torch.nn.parallel import DistributedDataParallel

    seen = {}

    class Capture(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["model"] = trainer.strategy.model

    variables = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE")
    saved = {name: os.environ.get(name) for name in variables}
    try:
        trainer = L.Trainer(
            strategy=strategy,
            accelerator="cpu",
            devices=1,
            max_steps=1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Capture()],
        )
        trainer.fit(BoringModel())
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():  # Lightning exports the rendezvous variables; later tests must not see them
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    assert isinstance(seen["model"], DistributedDataParallel)
    return seen["model"]


def test_trainer_configs_build_lightning_strategies_with_their_options():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from loldu_lightning.builders.schema import run_options
    from loldu_lightning.builders.trainer import trainer_options

    ddp = trainer_options(run_options(compose_config(["trainer=ddp"])).trainer)["strategy"]
    assert isinstance(ddp, DDPStrategy)
    # its options reach the DistributedDataParallel wrapper: a one-process gloo run wraps a model with it
    wrapped = _ddp_wrapper_after_one_step(ddp)
    assert wrapped.broadcast_buffers is False and wrapped.find_unused_parameters is False
    fsdp = trainer_options(run_options(compose_config(["trainer=fsdp"])).trainer)["strategy"]
    assert isinstance(fsdp, FSDPStrategy) and fsdp.kwargs["use_orig_params"] is True
    assert (
        trainer_options(run_options(compose_config(["trainer=ddp", "trainer.strategy=ddp_spawn"])).trainer)["strategy"]
        == "ddp_spawn"
    )
