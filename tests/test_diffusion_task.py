"""The diffusion task family on tiny-sd: configs, learning, export, sampling, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from loldu_lightning.adapters import build_adapter
from loldu_lightning.builders.diffusion import build_diffusion
from loldu_lightning.cli.config import validate_config
from loldu_lightning.tasks.diffusion import SubjectModel
from loldu_lightning.train import train
from tests.diffusion_helpers import dog, sd_cache, tiny_sd_overrides  # noqa: F401 (fixtures)
from tests.helpers import compose_config


def _adapter(cfg):
    return build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))


def test_paper_config_encodes_table_x_and_its_trainable_count():
    from diffusers import UNet2DConditionModel

    from loldu_lightning.loldu import resolve_target_modules

    cfg = compose_config(["experiment=paper/sd_subject"])
    validate_config(cfg)
    assert (cfg.task.family, cfg.model.name_or_path) == ("diffusion", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("adamw", 5e-4, 0.01)
    assert (cfg.scheduler.name, cfg.scheduler.warmup_steps, cfg.trainer.max_steps) == ("constant", 15, 1000)
    assert (cfg.trainer.precision, cfg.data.resolution, cfg.data.batch_size, cfg.seed) == ("16-mixed", 512, 1, 42)
    assert (cfg.adapter.name, cfg.adapter.rank, cfg.adapter.alpha, cfg.adapter.scaling) == ("loldu", 32, 32, "learned")
    assert list(cfg.adapter.target_modules) == ["to_q", "to_k", "to_v", "to_out.0"]
    # SD v1.5's UNet (its published config), built on the meta device: 128 targeted linears, 33 numbers each
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    names = resolve_target_modules(SubjectModel(unet), list(cfg.adapter.target_modules))
    assert len(names) == 128 and len(names) * (cfg.adapter.rank + 1) == 4224
    for method, (name, lr) in {"lora": ("lora", 1e-4), "full": ("full", 5e-6)}.items():
        baseline = compose_config(["experiment=paper/sd_subject", f"experiment/paper/sd_subject_method={method}"])
        validate_config(baseline)
        assert (baseline.adapter.name, baseline.optimizer.lr) == (name, lr)


def test_loss_falls_on_a_fixed_batch_and_only_adapter_parameters_change(sd_cache, dog):
    cfg = compose_config(tiny_sd_overrides(sd_cache, dog, "sampling.enabled=false"))
    module, datamodule = build_diffusion(cfg)
    module.model = _adapter(cfg).apply(module.model, ())
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    torch.manual_seed(0)
    latents = module.encode_images(batch["pixel_values"], deterministic=True).repeat(3, 1, 1, 1)
    noise, timesteps = torch.randn_like(latents), torch.tensor([50, 400, 800])
    hidden = module.encode_prompts(batch["input_ids"]).repeat(3, 1, 1)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-1)
    losses = []
    for _ in range(25):
        loss = module.per_example_loss(latents, noise, timesteps, hidden).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0] and min(losses[-5:]) < min(losses[:5]), losses
    changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.endswith((".z", ".sigma")) for k in changed), sorted(changed)[:5]
    assert len(changed) == 2 * 32  # every one of the 32 adapted projections moved


def test_train_samples_exports_a_merged_unet_and_resumes(sd_cache, dog, tmp_path):
    from diffusers import UNet2DConditionModel

    overrides = tiny_sd_overrides(
        sd_cache,
        dog,
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "sampling.every_n_steps=2",
        "optimizer.lr=1e-2",
    )
    cfg = compose_config(overrides, output_dir=tmp_path)
    metrics = train(cfg)
    assert metrics["status"] == "completed" and metrics["final"]["step"] == 4
    assert metrics["params"]["trainable"] == 32 * 5  # 32 projections x (rank 4 + sigma)
    # sample grids at steps 0, 2, 4: rows = prompts, columns = seeds, one PNG per image at 32 px
    for step in (0, 2, 4):
        grid = Image.open(tmp_path / "samples" / f"step_{step:06d}.png")
        assert grid.size == (2 * 32, 2 * 32)
        singles = sorted((tmp_path / "samples" / f"step_{step:06d}").glob("*.png"))
        assert len(singles) == 4 and all(Image.open(p).size == (32, 32) for p in singles)
    export = json.loads((tmp_path / "export.json").read_text())
    assert export["class_name"] == "dog" and export["instance_prompt"] == "a photo of sks dog"

    # the merged UNet, loaded with plain diffusers, predicts the same noise as the reloaded unmerged adapter
    module, _ = build_diffusion(cfg)
    adapter = _adapter(cfg)
    adapted = adapter.load(module.model, tmp_path / "adapter" / "last")
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged_unet").eval()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    hidden = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        expected = adapted.eval()(latents, torch.tensor([10, 900]), hidden)
        got = merged(latents, torch.tensor([10, 900]), encoder_hidden_states=hidden).sample
        base = module.unet.__class__.from_pretrained(Path(export["base_model"]) / "unet")(
            latents, torch.tensor([10, 900]), encoder_hidden_states=hidden
        ).sample
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3  # training did change the function

    # resume: the step count continues from the checkpoint (4 -> 6), not from 0
    resumed = train(
        compose_config(
            [*overrides, "trainer.max_steps=6", "ckpt_path=last", "+resume.allow_changes=[trainer.max_steps]"],
            output_dir=tmp_path,
        )
    )
    assert resumed["status"] == "completed" and resumed["final"]["step"] == 6
    assert (resumed["start_step"], resumed["steps_run"]) == (4, 2)
    assert (tmp_path / "samples" / "step_000006.png").is_file()


def test_lora_baseline_trains_through_peft_and_its_merge_is_exact(sd_cache, dog, tmp_path):
    from diffusers import UNet2DConditionModel

    cfg = compose_config(
        tiny_sd_overrides(
            sd_cache,
            dog,
            "adapter=lora",
            "adapter.rank=4",
            "adapter.alpha=4",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "sampling.enabled=false",
            "optimizer.lr=1e-2",
        ),
        output_dir=tmp_path,
    )
    metrics = train(cfg)
    # 32 projections, each rank x (in + out)
    unet = build_diffusion(cfg)[0].unet
    expected = sum(
        4 * (m.in_features + m.out_features)
        for n, m in unet.named_modules()
        if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    )
    assert metrics["status"] == "completed" and metrics["params"]["adapter"] == expected
    module, _ = build_diffusion(cfg)
    adapted = _adapter(cfg).load(module.model, tmp_path / "adapter" / "last")
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged_unet").eval()
    latents, hidden = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(latents, 500, encoder_hidden_states=hidden).sample,
            adapted.eval()(latents, torch.tensor([500]), hidden),
            atol=2e-5,
            rtol=1e-5,
        )


def test_prior_preservation_generates_class_images_once_and_batches_both_halves(sd_cache, dog, tmp_path):
    class_dir = tmp_path / "class"
    overrides = tiny_sd_overrides(
        sd_cache,
        dog,
        "data.with_prior_preservation=true",
        f"data.class_dir={class_dir}",
        "data.num_class_images=3",
        "data.batch_size=2",
    )
    module, datamodule = build_diffusion(compose_config(overrides))
    generated = sorted(class_dir.glob("*.png"))
    assert len(generated) == 3 and all(Image.open(p).size == (32, 32) for p in generated)
    stamps = [p.stat().st_mtime_ns for p in generated]
    build_diffusion(compose_config(overrides))  # cached: nothing regenerated
    assert [p.stat().st_mtime_ns for p in generated] == stamps
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["is_prior"].tolist() == [False, False, True, True]
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    instance_ids, class_ids = batch["input_ids"][0], batch["input_ids"][2]
    assert module.tokenizer.decode(instance_ids, skip_special_tokens=True).strip() == "a photo of sks dog"
    assert module.tokenizer.decode(class_ids, skip_special_tokens=True).strip() == "a photo of dog"


# bad input: each stops before training, naming the fix -------------------------------------------------
def test_empty_instance_folder_stops_before_the_model_loads(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no images here")
    cfg = compose_config(
        [
            "task=diffusion/subject",
            "model=sd-v1-5",
            "model.name_or_path=/nonexistent/sd",
            f"data.instance_dir={tmp_path / 'photos'}",
            "data.class_name=dog",
        ],
        output_dir=tmp_path / "run",
    )
    with pytest.raises(ValueError, match=r"holds no images.*notes\.txt.*data\.instance_dir"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unreadable_image_is_named(tmp_path, dog):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "00.jpg").write_bytes((dog / "00.jpg").read_bytes())
    (photos / "01.jpg").write_bytes(b"not a jpeg at all")
    cfg = compose_config(
        ["task=diffusion/subject", "model=tiny-sd", f"data.instance_dir={photos}", "data.class_name=dog"]
    )
    with pytest.raises(ValueError, match=r"cannot read image .*01\.jpg.*re-save it"):
        build_diffusion(cfg)


def test_model_folder_without_unet_names_the_fix(tmp_path, dog):
    folder = tmp_path / "sd"
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).mkdir(parents=True)
    cfg = compose_config(
        ["task=diffusion/subject", "model=sd-v1-5", f"model.name_or_path={folder}", f"data.instance_dir={dog}"]
    )
    with pytest.raises(FileNotFoundError, match=r"lacks unet/.*model\.name_or_path"):
        build_diffusion(cfg)
    missing = compose_config(["task=diffusion/subject", "model=sd-v1-5", f"data.instance_dir={dog}"])
    with pytest.raises(FileNotFoundError, match=r"not a local folder.*huggingface-cli download"):
        build_diffusion(missing)


@pytest.mark.parametrize("adapter", ["loldu", "lora"])
def test_target_that_matches_nothing_stops_before_training(sd_cache, dog, tmp_path, adapter):
    cfg = compose_config(
        tiny_sd_overrides(
            sd_cache, dog, f"adapter={adapter}", "adapter.rank=4", "adapter.target_modules=[query,value]"
        ),
        output_dir=tmp_path,
    )
    with pytest.raises(ValueError, match=r"matched no module.*adapter\.target_modules=\[to_q,to_k,to_v,to_out\.0\]"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_text_encoder_training_and_gradient_checkpointing(sd_cache, dog):
    targets = "adapter.target_modules=[to_q,to_k,to_v,to_out.0,q_proj,k_proj,v_proj,out_proj]"
    cfg = compose_config(
        tiny_sd_overrides(
            sd_cache,
            dog,
            "model.train_text_encoder=true",
            targets,
            "model.gradient_checkpointing=true",
            "sampling.enabled=false",
        )
    )
    module, datamodule = build_diffusion(cfg)
    module.model = _adapter(cfg).apply(module.model, ())
    assert module.unet.is_gradient_checkpointing and module.frozen_text_encoder is None
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    module.train()
    latents = module.encode_images(batch["pixel_values"])
    loss = module.per_example_loss(
        latents, torch.randn_like(latents), torch.tensor([300]), module.encode_prompts(batch["input_ids"])
    ).mean()
    loss.backward()
    grads = {name: p.grad for name, p in module.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("text_encoder.") for n in grads) and any(n.startswith("unet.") for n in grads)
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the UNet-only targets leave the text encoder untrained: stopped before the optimizer is built
    plain = compose_config(tiny_sd_overrides(sd_cache, dog, "model.train_text_encoder=true", "sampling.enabled=false"))
    module, _ = build_diffusion(plain)
    module.model = _adapter(plain).apply(module.model, ())
    with pytest.raises(ValueError, match=r"no text-encoder parameter trainable.*q_proj,k_proj,v_proj,out_proj"):
        module.configure_optimizers()


def test_sample_grids_go_to_loggers_that_take_images():
    from types import SimpleNamespace

    from loldu_lightning.callbacks.sampling import image_grid, log_image

    calls = []
    wandb_like = SimpleNamespace(
        log_image=lambda **kw: calls.append(("log_image", kw["key"], kw["step"])), experiment=None
    )
    tensorboard_like = SimpleNamespace(
        experiment=SimpleNamespace(
            add_image=lambda key, array, step, dataformats: calls.append(
                ("add_image", key, step, array.shape, dataformats)
            )
        )
    )
    csv_like = SimpleNamespace(experiment=SimpleNamespace())  # takes no images: skipped
    grid = image_grid([Image.new("RGB", (8, 8), (k * 40, 0, 0)) for k in range(6)], rows=3, columns=2)
    assert grid.size == (16, 24) and grid.getpixel((8, 16)) == (200, 0, 0)  # row 2, column 1 = image 5
    log_image(SimpleNamespace(loggers=[wandb_like, tensorboard_like, csv_like]), "samples", grid, 7)
    assert calls == [("log_image", "samples", 7), ("add_image", "samples", 7, (24, 16, 3), "HWC")]
