"""Print the transfer results (metrics.json of each adaptation run) as a Markdown table.

Usage: python examples/vit_transfer/summarize.py outputs/vit_transfer
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(out: Path) -> str:
    pretrain = json.loads((out / "pretrain_metrics.json").read_text())
    last = pretrain["history"][-1]
    lines = [
        f"Pretrained backbone: {pretrain['parameters']:,} parameters, {len(pretrain['history'])} epochs on "
        f"{', '.join(pretrain['source_classes'])}; test accuracy on those classes {last['test_accuracy']:.3f} "
        f"({last['elapsed_s']:.0f} s).",
        "",
        f"Transfer to {', '.join(pretrain['target_classes'])}:",
        "",
        "| adapter | best val/accuracy | best epoch | adapter params | head params | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    runs = sorted((out / "runs").glob("*/metrics.json"))
    if not runs:
        raise FileNotFoundError(f"no {out}/runs/*/metrics.json: run the adaptation commands of README.md first")
    for metrics_file in runs:
        metrics = json.loads(metrics_file.read_text())
        params, best = metrics.get("params", {}), metrics.get("best", {})
        objective = metrics.get("objective")
        lines.append(
            f"| {metrics_file.parent.name} | {objective if objective is None else f'{objective:.3f}'} | "
            f"{best.get('epoch')} | {params.get('adapter', 0):,} | {params.get('head', 0):,} | "
            f"{metrics.get('time_s')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/vit_transfer")))
