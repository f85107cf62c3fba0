"""`python -m loldu_lightning` / `loldu`: parse the Hydra config and call train(cfg)."""

from __future__ import annotations

import logging
import math
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import config_dir, register_resolvers
from .hydra_ddp import child_arguments, export_current_job
from .overrides import check_override_keys


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from .train import train

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    export_current_job()  # DDP ranks 1..N-1 re-run exactly this job (hydra_ddp.py)
    try:
        result = train(cfg)
    except Exception:
        if not multirun:
            raise
        logging.getLogger(__name__).exception("job failed; the sweep goes on (see its metrics.json)")
        # One failed job must not end a sweep: its metrics.json records the error for the report.
        return math.nan
    return result["objective"]


def main() -> None:
    register_resolvers()
    sys.argv[1:] = child_arguments(sys.argv[1:])
    try:
        check_override_keys(sys.argv[1:])
    except ValueError as error:
        sys.exit(f"error: {error}")
    _run()


if __name__ == "__main__":
    main()
