"""What a run leaves in the experiment trackers (TensorBoard, MLflow, W&B, CSV) beyond the step metrics.

Lightning already sends every `self.log` metric with its step to each logger. `TrackingCallback`
adds the rest, to whatever loggers the trainer has:

- at fit start, the hyper-parameters: the flattened composed config plus the parameter counts
  (`params/adapter`, `params/trainable`, ...) of the adapted model;
- after each epoch, the text files a task writes under `generations/` (instruction tuning's greedy
  answers) as text: TensorBoard's text tab, a W&B table, an MLflow artifact;
- through `finish(payload)`, called by `train()` once metrics.json is written: its values
  (`objective`, `best/...`, `final/...`) as metrics, the adapter folder and metrics.json as
  artifacts (MLflow, W&B), TensorBoard's hparams summary (so its HParams tab compares the jobs of a
  sweep), and the end of each run with its status. A W&B run must end here: the next job of a sweep
  in the same process would otherwise log into it.

Sampling grids of diffusion runs go to the trackers from `callbacks/sampling.py` (`log_image`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)


def summary_metrics(payload: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json's numbers as flat metric names: `objective`, `best/<metric>`, `final/<metric>`, `test/...`."""
    metrics: dict[str, float] = {}
    if _is_number(payload.get("objective")):
        metrics["objective"] = float(payload["objective"])
    for section in ("best", "final"):
        for key, value in (payload.get(section) or {}).items():
            if _is_number(value):
                metrics[f"{section}/{key}"] = float(value)
    for key, value in (payload.get("test") or {}).items():
        if key.startswith("test/") and _is_number(value):
            metrics[key] = float(value)
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _scalar(value: Any) -> Any:
    """TensorBoard's hparams take numbers, strings and booleans only."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def log_text(loggers: Sequence[Logger], key: str, text: str, step: int, artifact_file: str) -> None:
    """Send a markdown text to every logger that shows text; the others are skipped."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, text, step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key=key, columns=["step", "text"], data=[[step, text]], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_text(logger.run_id, text, artifact_file)


class TrackingCallback(L.Callback):
    """Hyper-parameters, texts, final metrics, artifacts and the end of the run, for every logger."""

    def __init__(
        self,
        hyperparameters: Mapping[str, Any],
        artifact_folders: Sequence[str] = ("adapter",),
        text_folder: str = "generations",
    ):
        self.hyperparameters = dict(hyperparameters)
        self.artifact_folders = list(artifact_folders)
        self.text_folder = text_folder
        self.loggers: list[Logger] = []
        self.root: Path | None = None
        self.logged: dict[str, Any] = {}
        self.global_step = 0
        self._texts_seen: dict[Path, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.loggers = list(trainer.loggers)
        self.root = Path(trainer.default_root_dir)
        # a resumed run's folder already holds the earlier texts; those are in the earlier run's trackers
        for path in (self.root / self.text_folder).glob("*.md"):
            self._texts_seen.setdefault(path, path.stat().st_mtime)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from .adapter import AdapterCallback  # it counts the parameters of the model it adapted

        adapter_callback = next((c for c in trainer.callbacks if isinstance(c, AdapterCallback)), None)
        counts = getattr(adapter_callback, "parameter_counts", None) or {
            "trainable": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in pl_module.parameters()),
        }
        self.logged = {**self.hyperparameters, **{f"params/{k}": v for k, v in counts.items()}}
        for logger in trainer.loggers:
            logger.log_hyperparams(self.logged)

    def _log_new_texts(self) -> None:
        if self.root is None or not self.loggers:
            return
        for path in sorted((self.root / self.text_folder).glob("*.md")):
            stamp = path.stat().st_mtime
            if self._texts_seen.get(path) == stamp:
                continue
            self._texts_seen[path] = stamp
            log_text(
                self.loggers, self.text_folder, path.read_text(), self.global_step, f"{self.text_folder}/{path.name}"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.global_step = trainer.global_step

    # Task callbacks (GenerationSamples) write their files in on_validation_end, after this callback's turn.
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self._log_new_texts()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.global_step = trainer.global_step
        if trainer.is_global_zero:
            self._log_new_texts()

    def finish(self, payload: Mapping[str, Any]) -> None:
        """Log metrics.json's values and the artifacts, then end every run (rank 0, after metrics.json)."""
        if not self.loggers:  # the trainer never started: no tracker run was opened
            return
        status = str(payload.get("status"))
        succeeded = status == "completed"
        metrics = summary_metrics(payload)
        errors: list[BaseException] = []
        try:
            self._log_new_texts()
        except Exception as error:
            log.exception("Could not send the texts under %s/ to the trackers", self.text_folder)
            errors.append(error)
        for logger in self.loggers:
            try:
                self._finish_one(logger, metrics)
            except Exception as error:  # every run still gets ended; the first error is raised after
                log.exception("Could not complete the %s run", type(logger).__name__)
                errors.append(error)
            finally:
                self._end(logger, status)
        self.loggers = []
        if errors and succeeded:
            raise errors[0]

    def _finish_one(self, logger: Logger, metrics: dict[str, float]) -> None:
        # test metrics were logged by trainer.test already; the rest are new names
        logger.log_metrics({k: v for k, v in metrics.items() if not k.startswith("test/")}, step=self.global_step)
        folders = [self.root / name for name in self.artifact_folders if (self.root / name).is_dir()]
        metrics_file = self.root / "metrics.json"
        if isinstance(logger, TensorBoardLogger):
            self._tensorboard_hparams(logger, metrics)
        elif isinstance(logger, MLFlowLogger):
            for folder in folders:
                logger.experiment.log_artifacts(logger.run_id, str(folder), folder.name)
            if metrics_file.is_file():
                logger.experiment.log_artifact(logger.run_id, str(metrics_file))
        elif isinstance(logger, WandbLogger):
            self._wandb_artifacts(logger, folders, metrics_file, metrics)

    def _tensorboard_hparams(self, logger: TensorBoardLogger, metrics: dict[str, float]) -> None:
        """The HParams tab: this run's hyper-parameters beside its final metrics (the scalars of those names)."""
        from torch.utils.tensorboard.summary import hparams

        params = {key: _scalar(value) for key, value in self.logged.items()}
        experiment, session_start, session_end = hparams(params, metrics)
        writer = logger.experiment._get_file_writer()
        for summary in (experiment, session_start, session_end):
            writer.add_summary(summary)

    def _wandb_artifacts(
        self, logger: WandbLogger, folders: list[Path], metrics_file: Path, metrics: dict[str, float]
    ) -> None:
        import wandb

        run = logger.experiment
        run.summary.update(metrics)
        if metrics_file.is_file():
            run.save(str(metrics_file), base_path=str(self.root), policy="now")
        for folder in folders:
            artifact = wandb.Artifact(f"{folder.name}-{run.id}", type="model", metadata=metrics)
            artifact.add_dir(str(folder))
            run.log_artifact(artifact)

    @staticmethod
    def _end(logger: Logger, status: str) -> None:
        """metrics.json's status as the tracker's: completed, failed, or (MLflow) killed for an interrupted run."""
        if status == "completed":
            logger.finalize("success")
        elif isinstance(logger, MLFlowLogger) and status in ("interrupted", "requeued"):
            logger.finalize("KILLED")
        else:
            logger.finalize("failed")
        # WandbLogger keeps no public flag for "a run was started"; finishing only a started run avoids opening one
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=0 if status == "completed" else 1)
