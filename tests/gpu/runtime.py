"""Where the GPU checks run: CUDA when there is one, the CPU at tiny sizes in a dry run, else nowhere.

`LOLDU_GPU_DRY_RUN=1` runs the same test code on the CPU (bf16 autocast included), so the checks are
exercised in CI and cannot rot while no GPU is at hand. Only what truly needs CUDA (fp16 with a
GradScaler under Lightning, FSDP, multi-GPU DDP) skips there, each with its reason.
"""

from __future__ import annotations

import os

import pytest
import torch

DRY_RUN_ENV = "LOLDU_GPU_DRY_RUN"


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
