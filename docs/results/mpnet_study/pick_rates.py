"""The rate each tuned arm runs its seeds 1 and 2 at: the best seed-0 final dev accuracy of its grid
(ties: the lower rate), read from the jobs' metrics.json under runs/<task>/<arm>_lr<lr>_s0/.

    python docs/results/mpnet_study/pick_rates.py <runs dir> <task>    -> lines "<arm> <lr>"
"""

import json
import sys
from pathlib import Path

UNTUNED = {"svd_x30": "0.001", "svd_x50": "0.001"}


def seed0_results(task_dir: Path) -> dict[str, dict[float, float]]:
    """{arm: {lr: final accuracy}} of the completed seed-0 jobs."""
    found: dict[str, dict[float, float]] = {}
    for metrics_path in sorted(task_dir.glob("*_s0/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("status") != "completed":
            continue
        arm, lr = metrics_path.parent.name.removesuffix("_s0").rsplit("_lr", 1)
        found.setdefault(arm, {})[float(lr)] = metrics["final"]["val/accuracy"]
    return found


def main(runs: str, task: str) -> None:
    for arm, by_lr in seed0_results(Path(runs) / task).items():
        if arm in UNTUNED:
            continue
        best = max(by_lr.items(), key=lambda item: (item[1], -item[0]))
        print(arm, f"{best[0]:g}")


if __name__ == "__main__":
    main(*sys.argv[1:])
