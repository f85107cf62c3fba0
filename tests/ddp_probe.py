"""Test callbacks that record, per process, what a distributed or mixed-precision run holds.

Used through `+callbacks.extra.<name>={_target_:tests.ddp_probe.<Class>}` (helpers.cli_env puts the
repository root on PYTHONPATH for the CLI's DDP child processes). Each rank writes its own file; the tests
gather and compare them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch

from loldu_lightning.loldu import loldu_modules


def _sha256(tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(
            tensor.detach()
            .to("cpu", torch.float64 if tensor.is_floating_point() else torch.int64)
            .contiguous()
            .numpy()
            .tobytes()
        )
    return digest.hexdigest()


def factor_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every LoLDU layer's frozen factors (lower, upper, perm) and c, in module order."""
    tensors = []
    for _, layer in loldu_modules(model):
        tensors += [getattr(layer, name) for name in ("lower", "upper", "perm", "c") if hasattr(layer, name)]
    assert tensors, "no LoLDU layer with factors in the model"
    return _sha256(tensors)


def trainable_fingerprint(model: torch.nn.Module) -> str:
    return _sha256(p for _, p in sorted(model.named_parameters()) if p.requires_grad)


def _wrapped(trainer: L.Trainer) -> bool:
    """Whether the strategy has wrapped the model yet (DDP here; FSDP's wrap happens at the same point)."""
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(trainer.strategy.model, DistributedDataParallel)


class DistributedProbe(L.Callback):
    """Writes `<run dir>/probe/rank<global rank>-pid<pid>.json`.

    `setup` runs after the adapter callback injected LoLDU and before the strategy wraps the model in
    DDP (which would broadcast rank 0's buffers and hide a difference), so `factors` is what this
    rank's own decomposition produced.
    """

    def __init__(self) -> None:
        self.record: dict = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.record = {
            "pid": os.getpid(),
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "wrapped_at_setup": _wrapped(trainer),
            "factors": factor_fingerprint(pl_module.model),
            "trainable_at_setup": trainable_fingerprint(pl_module.model),
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record["wrapped_at_train_start"] = _wrapped(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record.update(
            trainable_at_end=trainable_fingerprint(pl_module.model),
            global_step=trainer.global_step,
            hydra_job=os.environ.get("LOLDU_HYDRA_JOB"),
        )
        directory = Path(trainer.default_root_dir) / "probe"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"rank{trainer.global_rank}-pid{os.getpid()}.json").write_text(json.dumps(self.record))


class PrecisionProbe(L.Callback):
    """Records each training loss and the dtypes of every LoLDU layer's z, sigma and c after fitting."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.dtypes: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for _, layer in loldu_modules(pl_module.model):
            self.dtypes |= {str(layer.z.dtype), str(layer.sigma.dtype), str(layer.c.dtype)}
        (Path(trainer.default_root_dir) / "precision_probe.json").write_text(
            json.dumps({"losses": self.losses, "dtypes": sorted(self.dtypes)})
        )


def fsdp2_worker(rank: int, port: int, directory: str) -> None:
    """One rank of the FSDP check in test_scale_out.py: inject LoLDU into a tiny RoBERTa, shard it with
    torch's `fully_shard` (FSDP2, which runs on CPU with gloo), train two steps on this rank's own data,
    gather the full state dict to rank 0, write adapter files there from a plain model, and check that
    they load into a fresh single-process model with the sharded model's outputs."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from loldu_lightning.loldu import LoLDUConfig, inject, load_adapter, save_adapter
    from tests.tiny_models import tiny_model

    def tiny_roberta():
        return tiny_model("tiny-roberta", vocab_size=100, max_position_embeddings=40, num_labels=2)

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        # scaling=fixed: fully_shard refuses scalar parameters, and a learned sigma is one (docs/scaling_out.md)
        config = LoLDUConfig(rank=8, alpha=8, init="uniform", scaling="fixed", target_modules=["query", "value"])
        model = inject(tiny_roberta(), config)  # before sharding: factors of the full weights
        reference = factor_fingerprint(inject(tiny_roberta(), config))
        assert factor_fingerprint(model) == reference
        model.classifier.requires_grad_(True)
        for layer in model.roberta.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
        z = model.roberta.encoder.layer[0].attention.self.query.z
        assert isinstance(z, DTensor) and z.to_local().numel() == 4  # z itself is sharded: 4 of 8 per rank
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        generator = torch.Generator().manual_seed(rank)
        for _ in range(2):
            ids = torch.randint(3, 100, (4, 12), generator=generator)
            model(input_ids=ids, labels=torch.randint(0, 2, (4,), generator=generator)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            sharded_logits = model(input_ids=ids).logits
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            plain = inject(tiny_roberta(), config)
            plain.load_state_dict(state)
            save_adapter(plain, directory, modules_to_save=["classifier"])
            fresh = load_adapter(tiny_roberta(), directory)  # recomputes the factors; checks W0 and pivots
            with torch.no_grad():
                torch.testing.assert_close(fresh(input_ids=ids).logits, sharded_logits, atol=1e-6, rtol=0)
            assert not torch.equal(fresh(input_ids=ids).logits, tiny_roberta()(input_ids=ids).logits)
    finally:
        dist.destroy_process_group()
