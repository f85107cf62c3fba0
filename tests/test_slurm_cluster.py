"""End to end on a real one-node SLURM cluster (scripts/slurm_local_cluster.sh, started once for this file).

- a `-m` sweep submitted through `hydra/launcher=submitit_slurm`: two SLURM jobs, both complete;
- a job that SLURM signals mid-epoch (`scancel --batch --signal=USR1`, what `sbatch --signal=B:USR1@<s>`
  sends before a time limit): it saves, requeues itself with the real `scontrol`, SLURM runs it again
  (`Restarts=1`) and it resumes by itself to the uninterrupted run's metrics and adapter values;
- a job killed without warning (`scancel --batch --signal=KILL`) and submitted again with `ckpt_path=last`:
  it loses only the steps since its last step checkpoint.

Every job runs this test's Python (the project's virtual environment) on the real RTE with tiny-roberta.
The tests skip, with the reason, where SLURM and munge are not installed or the user is not root.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loldu_lightning.train import train
from tests import helpers
from tests.helpers import TINY_GLUE, compose_config
from tests.slurm_cluster import LocalSlurm, job_script, local_slurm, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def slurm() -> LocalSlurm:
    with local_slurm() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def rte_run(glue_root) -> list[str]:
    """12 steps (2 epochs of 6) on 96 examples of the real RTE."""
    return [
        "task=glue/rte",
        f"data.data_dir={glue_root / 'RTE'}",
        *TINY_GLUE,
        "trainer.max_epochs=2",
        "data.train_limit=96",
        "logger=none",
    ]


@pytest.fixture(scope="module")
def reference(rte_run, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted SLURM job must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = train(compose_config(rte_run, run_dir))
    assert result["status"] == "completed" and result["final"]["step"] == 12
    return run_dir


def slow_from(step: int, marker: Path) -> str:
    """From global step `step` on, each batch takes 0.3 s longer and `marker` exists: a signal sent then
    lands inside the first epoch."""
    return f"+callbacks.extra.slow={{_target_:tests.fault_helpers.SlowFrom,step:{step},marker:'{marker}',delay_s:0.3}}"


def record_start(path: Path) -> str:
    return f"+callbacks.extra.start={{_target_:tests.fault_helpers.RecordStart,path:'{path}'}}"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same final metrics and adapter values as the uninterrupted run."""
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    assert got["status"] == want["status"] == "completed"
    for key in ("val/accuracy", "val/loss", "train/loss", "step", "epoch"):
        assert got["final"][key] == pytest.approx(want["final"][key], rel=1e-5, abs=1e-6), key
    a, b = (load_file(d / "adapter" / "last" / "adapter_model.safetensors") for d in (run_dir, reference))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def submit(slurm: LocalSlurm, folder: Path, args: list[str], name: str) -> str:
    """sbatch the CLI with `args`, its log appended to folder/<name>.log across requeues; the job id."""
    script = job_script(folder, args)
    return slurm.sbatch(
        script,
        f"--job-name={name}",
        "--cpus-per-task=1",
        "--requeue",
        "--open-mode=append",  # the requeued run appends to the first run's log instead of truncating it
        f"--output={folder / name}.log",
        f"--chdir={folder}",
        "--time=10",
    )


def wait_for(path: Path, slurm: LocalSlurm, job_id: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        state = slurm.job(job_id).get("JobState")
        if state not in ("PENDING", "RUNNING", "CONFIGURING"):
            raise AssertionError(f"job {job_id} is {state} before {path.name} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never wrote {path}")
        time.sleep(0.2)


@pytest.fixture
def job_env(monkeypatch, slurm):
    """sbatch hands the submitting environment to the job: SLURM_CONF, the tests folder (for the
    test callbacks) and one thread per run on 2 cores."""
    for key, value in helpers.cli_env(OMP_NUM_THREADS="1", **slurm.env).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOLDU_HYDRA_JOB", raising=False)


def test_submitit_slurm_sweep_of_two_jobs_completes_with_one_job_preempted_and_requeued(
    slurm, rte_run, reference, tmp_path
):
    """`-m hydra/launcher=submitit_slurm`: one SLURM array job, a task per sweep job. Task 0 gets SLURM's
    warning mid-epoch (SIGUSR2, what submitit's `--signal=USR2@<signal_delay_s>` sends to the job step):
    it saves, requeues itself, runs again and resumes; the sweep waits for it and reports both jobs."""
    sweep = tmp_path / "sweep"
    # each job writes its own marker (reached_0, reached_1) once it is inside its first epoch
    marker = f"{tmp_path}/reached_${{hydra:job.num}}"
    sweep_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loldu_lightning",
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=debug",
            "hydra.launcher.timeout_min=10",
            "hydra.launcher.cpus_per_task=1",
            "seed=42,7",  # job 0 is the reference's configuration
            *rte_run,
            f"+callbacks.extra.slow={{_target_:tests.fault_helpers.SlowFrom,step:2,marker:'{marker}',delay_s:0.3}}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env=helpers.cli_env(OMP_NUM_THREADS="1", **slurm.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "reached_0").exists():
            assert sweep_process.poll() is None, sweep_process.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "sweep job 0 never reached its first epoch"
            time.sleep(0.2)
        # submitit's folders are named by SLURM's ids: the array job's (its script) and one per task
        task_ids = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
        assert len(task_ids) == 2 and task_ids[0].endswith("_0") and task_ids[1].endswith("_1"), task_ids
        print("SLURM jobs of the sweep:", task_ids)
        slurm.command("scancel", "--signal=USR2", task_ids[0])
        output = sweep_process.communicate(timeout=500)[0]
    finally:
        if sweep_process.poll() is None:
            sweep_process.kill()
            sweep_process.wait()
    assert sweep_process.returncode == 0, output[-4000:]
    assert "Submitit 'slurm' sweep output dir" in output and "#1 : seed=7" in output

    # the sweep returns once each task wrote its result; SLURM may still be ending the task
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
    preempted, other = (slurm.wait(task_id, ended, timeout_s=60) for task_id in task_ids)
    print("requeue counts read back from scontrol show job:", preempted["Restarts"], other["Restarts"])
    assert (preempted["JobState"], preempted["Restarts"]) == ("COMPLETED", "1"), preempted
    assert (other["JobState"], other["Restarts"], other["Partition"]) == ("COMPLETED", "0", "debug"), other
    task_log = (sweep / ".submitit" / task_ids[0] / f"{task_ids[0]}_0_log.out").read_text()
    assert "SIGUSR2 received" in task_log and task_log.count("Starting with JobEnvironment") == 2

    # the requeued job resumed by itself and ended exactly where an uninterrupted run ends
    assert json.loads((sweep / "0" / "metrics.json").read_text())["resumed_from"].endswith("interrupted.ckpt")
    assert_same_run(sweep / "0", reference)

    from loldu_lightning.report import build_report

    report = build_report(sweep)
    assert len(report.runs) == 2 and set(report.runs["status"]) == {"completed"}


def test_slurm_warning_signal_requeues_the_job_which_resumes_to_the_uninterrupted_run(
    slurm, rte_run, reference, job_env, tmp_path
):
    run_dir, marker = tmp_path / "run", tmp_path / "reached"
    starts = tmp_path / "starts"
    args = [*rte_run, slow_from(2, marker), record_start(starts), f"hydra.run.dir={run_dir}"]
    job_id = submit(slurm, tmp_path, args, "preempted")
    print("preempted job:", job_id)
    wait_for(marker, slurm, job_id)
    # SLURM itself delivers the warning to the batch step (the CLI runs in its place), as --signal=B:USR1@<s> does
    slurm.command("scancel", "--batch", "--signal=USR1", job_id)

    record = slurm.wait(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=400)
    log = (tmp_path / "preempted.log").read_text()
    assert record["JobState"] == "COMPLETED", log[-4000:]
    print("requeue count read back from scontrol show job:", record["Restarts"])
    assert record["Restarts"] == "1"  # one requeue, by the run's own `scontrol requeue`
    # The run's own log file (flushed at every record): after `scontrol requeue` SLURM kills the first
    # run, which may lose its last buffered stdout lines (the closing "interrupted: ... requeued") first.
    run_log = (run_dir / "__main__.log").read_text()
    assert "SIGUSR1 received: stopping after the current training step" in run_log, run_log[-4000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("interrupted.ckpt")  # no ckpt_path: SLURM_RESTART_COUNT did it
    saved_at = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=False)["global_step"]
    # the first run started at 0 and stopped inside epoch 0; the requeued one continued from that step
    assert 2 <= saved_at < 6 and starts.read_text().split() == ["0", str(saved_at)]
    assert_same_run(run_dir, reference)


def test_job_killed_without_warning_and_resubmitted_loses_only_the_steps_since_its_step_checkpoint(
    slurm, rte_run, reference, job_env, tmp_path
):
    run_dir, marker = tmp_path / "run", tmp_path / "reached"
    starts = tmp_path / "starts"
    args = [*rte_run, "checkpoint.every_n_train_steps=2", record_start(starts), f"hydra.run.dir={run_dir}"]
    job_id = submit(slurm, tmp_path, [*args, slow_from(5, marker)], "killed")
    print("killed job:", job_id)
    wait_for(marker, slurm, job_id)
    # --batch: SIGKILL straight to the run; a plain `scancel` (any signal) cancels, which sends SIGTERM first
    slurm.command("scancel", "--batch", "--signal=KILL", job_id)
    record = slurm.wait(job_id, {"FAILED", "CANCELLED", "COMPLETED"})
    assert (record["JobState"], record["ExitCode"], record["Restarts"]) == ("FAILED", "0:9", "0"), record
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4  # the step checkpoint before the kill (step 5 ran unsaved)

    resubmitted = submit(slurm, tmp_path, [*args, "ckpt_path=last"], "resubmitted")
    print("resubmitted job:", resubmitted)
    record = slurm.wait(resubmitted, {"COMPLETED", "FAILED", "CANCELLED"}, timeout_s=400)
    assert record["JobState"] == "COMPLETED", (tmp_path / "resubmitted.log").read_text()[-4000:]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"].endswith("last.ckpt")
    assert starts.read_text().split() == ["0", "4"]  # steps 1-4 were not trained again
    assert_same_run(run_dir, reference)


def test_the_cluster_script_refuses_a_second_start_in_the_same_folder(slurm):
    import subprocess

    from tests.slurm_cluster import SCRIPT

    again = subprocess.run(["bash", str(SCRIPT), "start", str(slurm.folder)], capture_output=True, text=True)
    assert again.returncode == 1
    assert (
        again.stderr.strip()
        == f"error: a cluster already runs in {slurm.folder}: stop it first ({SCRIPT} stop {slurm.folder})"
    )
