"""Interrupted runs lose nothing: killed mid-epoch (SIGTERM, SIGKILL, SLURM's warning signal) and resumed
with `ckpt_path=last`, a run ends with the same metrics and adapter values as an uninterrupted one.

The CLI runs as a subprocess, as a user or a cluster would start it; `tests.fault_helpers.SlowFrom` slows it
down from a known step so the signal lands inside an epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from loldu_lightning.checkpoints import CheckpointError, newest_resumable, resolve_ckpt_path
from loldu_lightning.train import train
from tests.fixtures import write_image_folder
from tests.helpers import TINY_GLUE, cli_env, compose_config

GLUE = [*TINY_GLUE, "trainer.max_epochs=2", "data.train_limit=96"]  # 6 steps an epoch, 12 in all


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "loldu_lightning", *args],
        cwd=cwd,
        env=cli_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def slow_from(step: int, marker: Path) -> str:
    return f"+callbacks.extra.slow={{_target_:tests.fault_helpers.SlowFrom,step:{step},marker:'{marker}',delay_s:0.3}}"


def signal_when(process: subprocess.Popen, marker: Path, signum: int, timeout_s: float = 240) -> tuple[int, str]:
    """Send `signum` once `marker` exists; return the exit code and stderr."""
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before the marker: {process.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the run never reached the marker step")
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stderr


def finish(process: subprocess.Popen, timeout_s: float = 300) -> str:
    stdout, stderr = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, stderr[-4000:]
    return stdout + stderr


def adapter_values(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "last" / "adapter_model.safetensors")


def run_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def assert_continued(run_dir: Path, from_step: int, total_steps: int) -> None:
    """The resumed process started at the checkpoint's global step and ran only the remaining steps.

    Training is deterministic, so a resume that silently restarted from step 0 would still end equal
    to the uninterrupted run: the step counts are what tell the two apart."""
    metrics = run_metrics(run_dir)
    assert from_step > 0
    assert (metrics["start_step"], metrics["steps_run"]) == (from_step, total_steps - from_step)


def assert_same_run(run_dir: Path, reference: Path) -> None:
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert got["status"] == want["status"] == "completed"
    for key in ("val/accuracy", "val/loss", "train/loss", "val/perplexity", "step", "epoch"):
        if key in want["final"]:
            assert got["final"][key] == pytest.approx(want["final"][key], rel=1e-5, abs=1e-6), key
    a, b = adapter_values(run_dir), adapter_values(reference)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def glue_reference(tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted GLUE run must reproduce."""
    run_dir = tmp_path_factory.mktemp("glue_reference")
    result = train(compose_config(GLUE, run_dir))
    assert result["status"] == "completed" and result["final"]["step"] == 12
    return run_dir


def test_sigterm_mid_epoch_then_ckpt_path_last_reproduces_the_uninterrupted_run(glue_reference, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "reached"
    code, stderr = signal_when(
        cli([*GLUE, slow_from(2, marker), f"hydra.run.dir={run_dir}"], tmp_path), marker, signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    metrics = run_metrics(run_dir)
    assert metrics["status"] == "interrupted" and metrics["final"] == {}  # no validation yet
    assert metrics["start_step"] == 0 and 0 < metrics["steps_run"] < 6  # stopped inside the first epoch
    stopped_at = metrics["steps_run"]
    assert torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=False)["global_step"] == stopped_at
    resume_line = next(line for line in stderr.splitlines() if line.startswith("resume with: "))
    assert f"hydra.run.dir={run_dir}" in resume_line and "ckpt_path=last" in resume_line
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()

    output = finish(cli([*GLUE, f"hydra.run.dir={run_dir}", "ckpt_path=last"], tmp_path))
    assert "not resumable" not in output
    assert run_metrics(run_dir)["resumed_from"].endswith("interrupted.ckpt")
    assert_continued(run_dir, from_step=stopped_at, total_steps=12)
    assert_same_run(run_dir, glue_reference)


def test_sigkill_loses_only_the_steps_since_the_last_step_checkpoint(glue_reference, tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "reached"
    args = [*GLUE, "checkpoint.every_n_train_steps=2", f"hydra.run.dir={run_dir}"]
    code, _ = signal_when(cli([*args, slow_from(5, marker)], tmp_path), marker, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4  # the step checkpoint before the kill (step 5 ran unsaved)

    output = finish(cli([*args, "ckpt_path=last"], tmp_path))
    assert "not resumable" not in output
    assert_continued(run_dir, from_step=4, total_steps=12)
    assert_same_run(run_dir, glue_reference)


def test_slurm_warning_signal_saves_requeues_and_the_requeued_job_resumes_by_itself(glue_reference, tmp_path):
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (stub_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (stub_dir / "scontrol").chmod(0o755)
    slurm = {
        "PATH": f"{stub_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "loldu",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    run_dir, marker = tmp_path / "run", tmp_path / "reached"
    args = [*GLUE, f"hydra.run.dir={run_dir}"]  # the job script's command, the same both times
    code, stderr = signal_when(cli([*args, slow_from(2, marker)], tmp_path, slurm), marker, signal.SIGUSR1)
    assert code == 128 + signal.SIGUSR1, stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    requeued = run_metrics(run_dir)
    assert requeued["status"] == "requeued" and requeued["start_step"] == 0

    # SLURM starts the same command again with SLURM_RESTART_COUNT set: no ckpt_path override needed
    finish(cli(args, tmp_path, {**slurm, "SLURM_RESTART_COUNT": "1"}))
    assert run_metrics(run_dir)["resumed_from"].endswith("interrupted.ckpt")
    assert_continued(run_dir, from_step=requeued["steps_run"], total_steps=12)
    assert_same_run(run_dir, glue_reference)


def alpaca_file(folder: Path) -> Path:
    """The real Alpaca sample when ../shared/data is there, else generated records of the same shape."""
    from tests.conftest import SHARED_DATA

    real = SHARED_DATA / "alpaca" / "alpaca_5000.json"
    if real.is_file():
        return real
    records = [
        {
            "instruction": f"Name the colour number {i}.",
            "input": "" if i % 2 else f"Hint {i}",
            "output": f"Colour {i} is blue.",
        }
        for i in range(64)
    ]
    path = folder / "alpaca.json"
    path.write_text(json.dumps(records))
    return path


def test_instruct_with_gradient_accumulation_resumes_exactly_after_sigterm(tmp_path):
    args = [
        "task=instruct/alpaca",
        "model=tiny-llama",
        "trainer=cpu",
        "callbacks.lr_monitor=false",
        f"data.path={alpaca_file(tmp_path)}",
        "data.prompt_format=chat",
        "data.max_length=192",
        "data.train_limit=32",
        "data.val_limit=8",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.accumulate_grad_batches=2",  # a stop inside an accumulation window waits for its step
        "adapter.rank=8",
        "adapter.alpha=8",
        "optimizer.lr=5e-2",
        "task.generation.num_prompts=0",
    ]
    reference = tmp_path / "reference"
    assert train(compose_config(args, reference))["status"] == "completed"
    run_dir, marker = tmp_path / "run", tmp_path / "reached"
    code, stderr = signal_when(
        cli([*args, slow_from(1, marker), f"hydra.run.dir={run_dir}"], tmp_path), marker, signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=False)
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] % 2 == 0
    finish(cli([*args, f"hydra.run.dir={run_dir}", "ckpt_path=last"], tmp_path))
    assert_continued(run_dir, from_step=saved["global_step"], total_steps=run_metrics(reference)["steps_run"])
    assert_same_run(run_dir, reference)


class SignalAt(L.Callback):
    """In-process: SIGTERM to this process once, at a global step (the vision test's interruption)."""

    def __init__(self, step: int):
        self.step = step
        self.sent = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def test_vision_with_random_augmentation_resumes_exactly(tmp_path, monkeypatch):
    """Vision's loader is the same resumable loader; its random crops and flips replay too."""
    import loldu_lightning.train as train_module
    from loldu_lightning.interrupts import RunInterrupted

    root = write_image_folder(tmp_path / "images", classes=4, per_class=10, size=32)
    args = [
        "task=vision/imagefolder",
        "model=tiny-vit",
        "trainer=cpu",
        f"data.root={root}",
        "data.batch_size=8",
        "trainer.max_epochs=2",
        "adapter.rank=4",
        "adapter.alpha=4",
        "callbacks.lr_monitor=false",
    ]
    reference = tmp_path / "reference"
    assert train(compose_config(args, reference))["status"] == "completed"
    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a, **k: [*build(*a, **k), SignalAt(step=2)])
    with pytest.raises(RunInterrupted):
        train(compose_config(args, tmp_path / "run"))
    monkeypatch.setattr(train_module, "build_callbacks", build)
    stopped_at = run_metrics(tmp_path / "run")["steps_run"]
    train(compose_config([*args, "ckpt_path=last"], tmp_path / "run"))
    assert_continued(tmp_path / "run", from_step=stopped_at, total_steps=run_metrics(reference)["steps_run"])
    assert_same_run(tmp_path / "run", reference)


def test_resume_refuses_a_changed_max_epochs_and_the_named_override_accepts_it(tmp_path):
    one_epoch = [*TINY_GLUE, "data.train_limit=32"]
    train(compose_config(one_epoch, tmp_path))
    before = (tmp_path / "metrics.json").read_text()
    with pytest.raises(CheckpointError) as refused:
        train(compose_config([*one_epoch, "trainer.max_epochs=2", "optimizer.lr=3e-3", "ckpt_path=last"], tmp_path))
    message = str(refused.value)
    assert "trainer.max_epochs: 1 -> 2" in message and "optimizer.lr: 0.001 -> 0.003" in message
    assert "+resume.allow_changes=[optimizer.lr,trainer.max_epochs]" in message
    assert (tmp_path / "metrics.json").read_text() == before  # the refusal leaves the run's record as it was
    # a changed number of loader workers does not change the result and is not refused
    extended = train(
        compose_config(
            [*one_epoch, "trainer.max_epochs=2", "ckpt_path=last", "+resume.allow_changes=[trainer.max_epochs]"],
            tmp_path,
        )
    )
    assert extended["status"] == "completed" and extended["final"]["epoch"] == 1 and extended["final"]["step"] == 4
    assert (extended["start_step"], extended["steps_run"]) == (2, 2)  # epoch 1 only, continued from step 2


def test_ckpt_path_last_is_the_newest_whole_checkpoint_and_a_truncated_one_is_named(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_ckpt_path("last", checkpoints)
    torch.save({"step": 1}, checkpoints / "last.ckpt")
    time.sleep(0.01)
    torch.save({"step": 2}, checkpoints / "interrupted.ckpt")
    assert newest_resumable(checkpoints) == checkpoints / "interrupted.ckpt"
    data = (checkpoints / "interrupted.ckpt").read_bytes()
    (checkpoints / "interrupted.ckpt").write_bytes(data[: len(data) // 2])  # a kill during a plain write
    with pytest.raises(CheckpointError) as damaged:
        resolve_ckpt_path("last", checkpoints)
    assert "interrupted.ckpt is truncated or corrupt" in str(damaged.value)
    assert f"ckpt_path={checkpoints / 'last.ckpt'}" in str(damaged.value)


def test_an_interrupted_sweep_completes_on_the_second_invocation_without_rerunning_finished_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    marker = sweep_dir / "1" / "reached"
    args = [
        "-m",
        *GLUE,
        "trainer.max_epochs=1",
        "adapter.init=uniform,normal,zeros",
        f"hydra.sweep.dir={sweep_dir}",
        "+callbacks.extra.slow={_target_:tests.fault_helpers.SlowFrom,step:2,marker:'${output_dir}/reached',delay_s:0.3}",
    ]
    code, stderr = signal_when(cli(args, tmp_path), marker, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert f"hydra.sweep.dir={sweep_dir}" in stderr
    first = (sweep_dir / "0" / "metrics.json").read_text()
    assert json.loads(first)["status"] == "completed"
    interrupted_record = (sweep_dir / "1" / "metrics.json").read_text()
    assert json.loads(interrupted_record)["status"] == "interrupted"
    assert not (sweep_dir / "2").exists()

    finish(cli(args, tmp_path))
    assert (sweep_dir / "0" / "metrics.json").read_text() == first  # skipped, not re-run
    interrupted = json.loads(interrupted_record)
    resumed = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["resumed_from"].endswith("interrupted.ckpt")
    assert (resumed["start_step"], resumed["steps_run"]) == (interrupted["steps_run"], 6 - interrupted["steps_run"])
    assert json.loads((sweep_dir / "2" / "metrics.json").read_text())["status"] == "completed"
    from loldu_lightning.report.jobs import load_jobs

    assert len(load_jobs(sweep_dir)) == 3
