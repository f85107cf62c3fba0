"""The PEFT examples run end to end at tiny budgets on CPU (their real models and data, where present)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from peft import PeftConfig

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transformers_trainer_on_real_minilm_and_sst2(shared_data, tmp_path):
    example = _example("peft_trainer_sst2")
    result = example.main(
        [
            f"--glue-dir={shared_data / 'glue'}",
            f"--output-dir={tmp_path}",
            "--max-steps=3",
            "--train-limit=48",
            "--eval-limit=32",
            "--batch-size=8",
        ]
    )
    assert 0.0 <= result["accuracy"] <= 1.0 and result["reloaded_same_logits"] == 1.0
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}


def test_trl_sft_trainer_on_tiny_llama_and_the_alpaca_sample(shared_data, tmp_path):
    example = _example("peft_sft_trl")
    result = example.main(
        [
            "--model=tiny-llama",
            f"--data={shared_data / 'alpaca' / 'alpaca_5000.json'}",
            f"--output-dir={tmp_path}",
            "--max-steps=3",
            "--limit=16",
            "--batch-size=4",
            "--max-length=96",
        ]
    )
    assert torch.isfinite(torch.tensor(result["train_loss"]))
    assert PeftConfig.from_pretrained(str(tmp_path / "adapter")).peft_type == "LOLDU"


def test_diffusers_unet_takes_loldu_through_add_adapter(shared_data, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("LOLDU_CACHE", str(tmp_path / "cache"))
    example = _example("peft_diffusers_unet")
    result = example.main(
        [f"--photos={shared_data / 'dreambooth' / 'dog'}", f"--output-dir={tmp_path}", "--steps=3", "--rank=4"]
    )
    assert torch.isfinite(torch.tensor(result["loss"]))
    assert result["adapter_gap"] > 1e-4  # the trained adapter moved the UNet: the gaps below are not vacuous
    assert result["disabled_gap"] == 0.0 and result["reloaded_gap"] == 0.0


def test_a_missing_data_folder_names_the_option(tmp_path):
    example = _example("peft_trainer_sst2")
    with pytest.raises(FileNotFoundError, match="--glue-dir"):
        example.read_sst2(tmp_path / "SST-2" / "train.tsv", None)
