"""Helpers shared by the application tests: compose the packaged configs like the CLI does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir

from loldu_lightning.cli.config import config_dir, register_resolvers

# tiny model, a few batches: a full train() on 2 CPU cores in seconds
TINY_GLUE = [
    "model=tiny-roberta",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "data.train_limit=64",
    "data.val_limit=32",
    "data.batch_size=16",
    "data.max_length=64",
    "adapter.rank=8",
    "adapter.alpha=8",
    "callbacks.lr_monitor=false",
    "trainer.log_every_n_steps=1",
]


def compose_config(overrides: list[str], output_dir: Path | None = None):
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        extra = [f"output_dir={output_dir}"] if output_dir is not None else ["output_dir=unused"]
        return compose("config", overrides=[*overrides, *extra])


def list_config_options(group: str) -> list[str]:
    root = Path(config_dir()) / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


class StopAfterFirstEpoch(L.Callback):
    """Simulates an interrupted run: stops cleanly after epoch 0, as a killed job would leave it."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


REPO = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a test gives `python -m loldu_lightning`: the `tests` package importable (probes and
    test callbacks, `_target_:tests.ddp_probe...`), no hub, and no inherited DDP job marker (hydra_ddp.JOB_ENV)
    from the test process."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
    env.pop("LOLDU_HYDRA_JOB", None)
    return env


def run_cli(args: list[str], cwd: Path, timeout: int = 300, **extra_env: str) -> str:
    """Run the CLI to completion; its stdout + stderr, after asserting it exited 0."""
    result = subprocess.run(
        [sys.executable, "-m", "loldu_lightning", *args],
        cwd=cwd,
        env=cli_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def logged_values(run_dir: Path, key: str) -> list[float]:
    """Every value of `key` the run's CSV logger wrote (logs/.../metrics.csv), in order: a record kept
    apart from metrics.json, so a test can check metrics.json's best and objective against it."""
    import csv

    [path] = (run_dir / "logs").rglob("metrics.csv")
    with path.open() as rows:
        return [float(row[key]) for row in csv.DictReader(rows) if row.get(key)]


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "analyze_sweep.ipynb"


def run_sweep_notebook(sweep: Path, tmp_path: Path, monkeypatch, **env: str) -> list:
    """Execute notebooks/analyze_sweep.ipynb on `sweep` (LOLDU_* options as `env`); its code cells' outputs.

    A kernel spec pointing at this interpreter goes first on JUPYTER_PATH, so the notebook runs in the
    test's environment whether or not a python3 spec is installed anywhere.
    """
    import pytest

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    jupyter_dir = tmp_path / "jupyter"
    kernelspec.write_kernel_spec(path=str(jupyter_dir / "kernels" / "python3"))
    monkeypatch.setenv(
        "JUPYTER_PATH", os.pathsep.join(filter(None, [str(jupyter_dir), os.environ.get("JUPYTER_PATH")]))
    )
    src = Path(__file__).resolve().parents[1] / "src"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("LOLDU_SWEEP_DIR", str(sweep))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
