"""DreamBooth metrics (DINO, CLIP-I, CLIP-T) on known answers, and the evaluation command on a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from loldu_lightning.evaluate import EVALUATIONS
from loldu_lightning.evaluate.__main__ import main as evaluate_main
from loldu_lightning.evaluate.dreambooth import (
    clip_image_embeddings,
    clip_t,
    dino_embeddings,
    load_clip,
    load_dino,
    mean_pairwise_cosine,
)
from loldu_lightning.report.evaluations import eval_columns
from loldu_lightning.train import train
from tests.diffusion_helpers import dog, save_image, sd_cache, tiny_clip_folder, tiny_dino_folder, tiny_sd_overrides  # noqa: F401
from tests.helpers import compose_config

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
CAPTIONS = ["a red square", "a green square", "a blue square", "a yellow square"]


@pytest.fixture(scope="module")
def metric_models(sd_cache, tmp_path_factory):
    from transformers import CLIPTokenizer

    from loldu_lightning.models.diffusion import tiny_sd_folder

    root = tmp_path_factory.mktemp("metric_models")
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_folder(cache_dir=sd_cache) / "tokenizer")
    return tiny_clip_folder(root / "clip", tokenizer), tiny_dino_folder(root / "dino")


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    return [Image.open(save_image(root / f"{i}.png", color)).convert("RGB") for i, color in enumerate(COLORS)]


def test_identical_images_score_one_and_different_ones_less(metric_models, squares):
    clip, clip_processor = load_clip(str(metric_models[0]))
    dino, dino_processor = load_dino(str(metric_models[1]))
    for embed, model, processor in (
        (dino_embeddings, dino, dino_processor),
        (clip_image_embeddings, clip, clip_processor),
    ):
        one = embed(squares[:1], model, processor)
        assert mean_pairwise_cosine(one, one) == pytest.approx(1.0, abs=1e-6)
        many = embed(squares, model, processor)
        assert mean_pairwise_cosine(many, many) < 1.0 - 1e-4  # all pairs: the off-diagonal ones are below 1
        manual = torch.nn.functional.cosine_similarity(many[:, None], many[None], dim=-1).mean()
        assert mean_pairwise_cosine(many, many) == pytest.approx(float(manual), abs=1e-6)


def test_clip_t_is_the_mean_cosine_and_prefers_matching_captions(metric_models, squares):
    """A tiny CLIP trained contrastively on four (square, caption) pairs: matched captions beat shuffled ones."""
    clip, processor = load_clip(str(metric_models[0]))
    inputs = processor(text=CAPTIONS, images=squares, return_tensors="pt", padding=True)
    optimizer = torch.optim.Adam(clip.model.parameters(), lr=3e-3)
    clip.model.train()
    for _ in range(40):
        loss = clip.model(**inputs, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    clip.model.eval()
    matched = clip_t(squares, CAPTIONS, clip, processor)
    shuffled = clip_t(squares, CAPTIONS[1:] + CAPTIONS[:1], clip, processor)
    assert matched > shuffled
    with torch.no_grad():  # the same number computed without torchmetrics
        image = torch.nn.functional.normalize(clip.get_image_features(pixel_values=inputs["pixel_values"]), dim=-1)
        text = torch.nn.functional.normalize(
            clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]), dim=-1
        )
    assert matched == pytest.approx(max(float((image * text).sum(-1).mean()), 0.0), abs=1e-4)


def test_missing_metric_model_names_the_flag(tmp_path):
    with pytest.raises(ValueError, match=r"--dino-path=/path/to/dino-vits16"):
        load_dino(None)
    with pytest.raises(FileNotFoundError, match=r"--clip-path=.*no config\.json"):
        load_clip(str(tmp_path))


def test_evaluate_command_scores_a_finished_run(sd_cache, dog, metric_models, tmp_path):
    assert EVALUATIONS["dreambooth"] == "loldu_lightning.evaluate.dreambooth"
    run = tmp_path / "run"
    cfg = compose_config(
        tiny_sd_overrides(
            sd_cache,
            dog,
            "trainer.max_steps=1",
            "trainer.val_check_interval=1",
            "sampling.enabled=false",
            f"eval.clip_path={metric_models[0]}",
        ),
        output_dir=run,
    )
    assert train(cfg)["status"] == "completed"
    code = evaluate_main(
        [
            "dreambooth",
            "--run-dir",
            str(run),
            "--dino-path",
            str(metric_models[1]),
            "--num-images",
            "2",
            "--limit-prompts",
            "2",
            "--steps",
            "2",
            "--save-images",
        ]
    )
    assert code == 0
    results = json.loads((run / "eval.json").read_text())["dreambooth"]
    assert results["num_prompts"] == 2 and results["images_per_prompt"] == 2 and results["num_real_images"] == 5
    assert [p["prompt"] for p in results["per_prompt"]] == ["a sks dog in the jungle", "a sks dog in the snow"]
    for key in ("dino", "clip_i"):
        assert -1.0 <= results[key] <= 1.0
        per_prompt_mean = sum(p[key] for p in results["per_prompt"]) / 2  # equal image counts: mean of means
        assert results[key] == pytest.approx(per_prompt_mean, abs=1e-5)
    assert 0.0 <= results["clip_t"] <= 1.0
    assert results["settings"]["unet"].endswith("merged_unet") and results["settings"]["clip_path"] == str(
        metric_models[0]
    )
    assert len(list((run / "eval_images").glob("*.png"))) == 4
    columns = eval_columns(run)  # what the report tool puts in its runs table
    assert columns["eval.dreambooth.clip_t"] == pytest.approx(results["clip_t"]) and "eval.dreambooth.dino" in columns
