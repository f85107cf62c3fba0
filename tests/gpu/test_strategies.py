"""Lightning's strategies on the GPUs there are: the adapter saved by the run loads into a plain,
single-process model whose validation equals the run's own final validation (metrics.json).

- `trainer=fsdp` on every GPU (one is enough to run the strategy: process group, FSDP wrapping,
  the gather before saving);
- `trainer=ddp` on every GPU when there are two or more;
- `trainer=gpu` on one device: the same check without a strategy, which the dry run runs on the CPU.

The multi-process runs start the real CLI: Lightning's launcher re-runs the command for ranks 1..N-1.
Precision is 32-true so the comparison can be tight; tests/gpu/test_training_precision.py covers
bf16 and fp16. `tests.ddp_probe.DistributedProbe` records each rank's factors and trainables.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from loldu_lightning.adapters import build_adapter
from loldu_lightning.builders import build_task
from loldu_lightning.train import train
from tests.helpers import compose_config, run_cli

from .runtime import lightning_accelerator, require_cuda, tiny_roberta_tokenizer

pytestmark = pytest.mark.gpu

PROBE = "+callbacks.extra.probe={_target_:tests.ddp_probe.DistributedProbe}"


def _run(glue_root: Path) -> list[str]:
    """Tiny RoBERTa on RTE: 32 training examples (2 steps on each of 2 ranks at batch 8), 21 dev examples."""
    return [
        "task=glue/rte",
        f"data.data_dir={glue_root / 'RTE'}",
        "model=tiny-roberta",
        *tiny_roberta_tokenizer(),
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "data.train_limit=32",
        "data.val_limit=21",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "data.max_length=64",
        "adapter.rank=8",
        "adapter.alpha=8",
        "optimizer.lr=1e-2",
        "callbacks.lr_monitor=false",
        "callbacks.throughput=0",
    ]


def _probes(run_dir: Path) -> list[dict]:
    records = [json.loads(path.read_text()) for path in (run_dir / "probe").glob("rank*.json")]
    return sorted(records, key=lambda record: record["global_rank"])


def _check_saved_adapter(
    run_dir: Path, glue_root: Path, device: torch.device, world_size: int, tmp_path: Path, sharded: bool = False
) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed", metrics
    ranks = _probes(run_dir)
    assert [record["global_rank"] for record in ranks] == list(range(world_size))
    # every rank decomposed its own copy to the same factors (buffers: FSDP does not shard them)
    assert len({record["factors"] for record in ranks}) == 1
    if not (sharded and world_size > 1):  # FSDP ranks hold different shards of the trainables
        assert len({record["trainable_at_end"] for record in ranks}) == 1
        assert ranks[0]["trainable_at_end"] != ranks[0]["trainable_at_setup"]

    cfg = compose_config([*_run(glue_root), "trainer=cpu"], tmp_path / "plain")
    L.seed_everything(cfg.seed, workers=True)  # train() does the same: the tiny model's base weights match
    module, datamodule = build_task(cfg)
    adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
    module.model = adapter.load(module.model, run_dir / "adapter" / "last")  # refuses another base model
    [plain] = L.Trainer(
        accelerator=lightning_accelerator(device),
        devices=1,
        precision="32-true",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).validate(module, datamodule=datamodule, verbose=False)
    assert metrics["final"]["val/accuracy"] == pytest.approx(plain["val/accuracy"], abs=1e-6)
    assert metrics["final"]["val/loss"] == pytest.approx(plain["val/loss"], rel=1e-4)


def test_single_device_adapter_loads_into_a_plain_model(glue_root, device, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        *_run(glue_root),
        "trainer=gpu",
        f"trainer.accelerator={lightning_accelerator(device)}",
        "trainer.devices=1",
        PROBE,
    ]
    result = train(compose_config(overrides, run_dir))
    assert result["status"] == "completed"
    _check_saved_adapter(run_dir, glue_root, device, 1, tmp_path)


def test_fsdp_adapter_loads_into_a_plain_model(glue_root, device, tmp_path):
    require_cuda(device, "Lightning's FSDPStrategy and torch's FSDP refuse the CPU (docs/scaling_out.md)")
    run_dir, gpus = tmp_path / "run", torch.cuda.device_count()
    run_cli([*_run(glue_root), "trainer=fsdp", f"trainer.devices={gpus}", PROBE, f"hydra.run.dir={run_dir}"], tmp_path)
    _check_saved_adapter(run_dir, glue_root, device, gpus, tmp_path, sharded=True)


def test_ddp_on_every_gpu_adapter_loads_into_a_plain_model(glue_root, device, tmp_path):
    require_cuda(device, "DDP over GPUs (NCCL); tests/test_scale_out.py runs DDP on 2 CPU ranks", min_devices=2)
    run_dir, gpus = tmp_path / "run", torch.cuda.device_count()
    run_cli([*_run(glue_root), "trainer=ddp", f"trainer.devices={gpus}", PROBE, f"hydra.run.dir={run_dir}"], tmp_path)
    _check_saved_adapter(run_dir, glue_root, device, gpus, tmp_path)
