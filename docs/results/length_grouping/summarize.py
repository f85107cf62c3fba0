"""results.csv (written by measure.py) -> the README's table and the issue's decision rule.

    python docs/results/length_grouping/summarize.py > docs/results/length_grouping/summary.md

Rule: the default is the fastest setting whose mean dev accuracy is within one seed std of plain
shuffling's (plain's std over its seeds) for every adapter at every budget. A budget, adapter or setting
with fewer than all seeds leaves the rule undecided: nothing is chosen on incomplete evidence.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict

from measure import ADAPTERS, BUDGETS, RESULTS, SEEDS, SETTINGS

BUDGET_NAMES = {"b1k": "1,000 x 1 epoch", "quickstart": "5,000 x 2 epochs", "b20k": "20,000 x 1 epoch"}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def main() -> None:
    rows = list(csv.DictReader(RESULTS.open())) if RESULTS.is_file() else []
    cells: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        cells[row["budget"], row["adapter"], row["setting"]].append(row)

    print(
        "| budget | adapter | setting | seeds | dev accuracy (mean ± std) | per seed | wall s per run (mean) | load (1-min avg at start) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for budget in BUDGETS:
        for adapter in ADAPTERS:
            for setting in SETTINGS:
                found = sorted(cells.get((budget, adapter, setting), []), key=lambda r: SEEDS.index(int(r["seed"])))
                if not found:
                    print(f"| {BUDGET_NAMES[budget]} | {adapter} | {setting} | 0 | not measured | | | |")
                    continue
                accuracy = [100 * float(r["accuracy_best"]) for r in found]
                mean, std = mean_std(accuracy)
                per_seed = ", ".join(f"{r['seed']}: {100 * float(r['accuracy_best']):.2f}" for r in found)
                wall = statistics.mean(float(r["wall_s"]) for r in found)
                loads = ", ".join(r["load_start"].split()[0] for r in found)
                spread = f"{mean:.2f} ± {std:.2f}" if len(found) > 1 else f"{mean:.2f} (one seed: no std)"
                print(
                    f"| {BUDGET_NAMES[budget]} | {adapter} | {setting} | {len(found)} | {spread} | "
                    f"{per_seed} | {wall:.0f} | {loads} |"
                )

    print("\n## The rule, budget by budget\n")
    complete = True
    passing = set(SETTINGS)
    for budget in BUDGETS:
        missing = [
            f"{adapter}/{setting}"
            for adapter in ADAPTERS
            for setting in SETTINGS
            if len(cells.get((budget, adapter, setting), [])) < len(SEEDS)
        ]
        if missing:
            complete = False
            print(f"- {BUDGET_NAMES[budget]}: incomplete (fewer than {len(SEEDS)} seeds: {', '.join(missing)})")
            continue
        verdicts = []
        for adapter in ADAPTERS:
            plain = [float(r["accuracy_best"]) for r in cells[budget, adapter, "plain"]]
            plain_mean, plain_std = mean_std(plain)
            for setting in SETTINGS:
                if setting == "plain":
                    continue
                mean = statistics.mean(float(r["accuracy_best"]) for r in cells[budget, adapter, setting])
                within = mean >= plain_mean - plain_std
                if not within:
                    passing.discard(setting)
                verdicts.append(
                    f"{adapter}/{setting} {100 * (mean - plain_mean):+.2f} vs plain's std {100 * plain_std:.2f}"
                    f" ({'within' if within else 'outside'})"
                )
        print(f"- {BUDGET_NAMES[budget]}: " + "; ".join(verdicts))
    if not complete:
        print("\nDecision: undecided; the rule needs every budget. Settings within one std at every measured budget: ")
    else:
        print("\nDecision: settings within one std of plain at every budget: ")
    print(", ".join(sorted(passing)) + " (the fastest of these is the default only when every budget is complete)")


if __name__ == "__main__":
    main()
