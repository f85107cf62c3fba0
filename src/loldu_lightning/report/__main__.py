"""`python -m loldu_lightning.report <multirun dir | runs.csv> [--by k1,k2] [--metric name] [--epoch ...] [--out dir]
[--reference k=v,... [--candidates k=v,...]] [--rows k1,k2 [--cols key] [--cell median|mean]] [--paper TABLE]`."""

from __future__ import annotations

import argparse
import sys

from loldu_lightning.report.build import build_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loldu_lightning.report",
        description="Summarise a Hydra multirun of loldu_lightning: per-group tables over seeds, "
        "failed/missing runs, CSVs and figures.",
    )
    parser.add_argument(
        "sweep_dir",
        help="the multirun directory (holds multirun.yaml and one sub-directory per job), or a runs.csv this "
        "report wrote (re-rendered without the job directories; needs --out)",
    )
    parser.add_argument(
        "--by",
        default=None,
        help="comma-separated config keys to group by (default: the overrides that vary, except seed)",
    )
    parser.add_argument(
        "--metric", default=None, help="a key of each run's `best` metrics, e.g. val/f1 (default: each run's monitor)"
    )
    parser.add_argument(
        "--epoch",
        default="auto",
        choices=["auto", "best", "final", "test"],
        help="which epoch of each run to report: best, final, test (the test split evaluated once with the "
        "best checkpoint, task.test_split), or auto (test where a run has it; else final for runs whose "
        "validation split is the test split, as the paper's vision tables; best for the others)",
    )
    parser.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    parser.add_argument(
        "--reference",
        default=None,
        help="key=value[,key=value] over the --by keys selecting the defaults' group: adds a Decision section "
        "(adopt / reject / undecided per candidate: raises the mean over tasks, loses no task by more than one "
        "std of the reference's seeds)",
    )
    parser.add_argument(
        "--candidates",
        default=None,
        help="key=value[|value][,key=value] selecting the groups to judge (default: every other group)",
    )
    parser.add_argument(
        "--min-seeds",
        type=int,
        default=1,
        help="with --reference: seeds a study asks for on every task (both sides) before a candidate is adopted",
    )
    parser.add_argument(
        "--rows",
        default=None,
        help="comma-separated config keys as the rows of a table in the paper's layout, e.g. adapter.name "
        "(Tables I and IV: tasks as columns, Avg. and parameter counts) or adapter.init (Table V)",
    )
    parser.add_argument(
        "--cols",
        default="task",
        help="the layout's column key: task (default) or a config key, e.g. adapter.scaling (Table V's "
        "with / without cells; one table per task)",
    )
    parser.add_argument(
        "--cell",
        default="median",
        choices=["median", "mean"],
        help="each layout cell: the median over seeds (the paper's statistic) or the mean ± std",
    )
    parser.add_argument(
        "--paper",
        default=None,
        help="the paper's published Table I, III, IV, V, VI, XI or XII beside each layout cell, with the "
        "difference; none: no paper column; default: the table of the sweep's experiment=paper/* config",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = build_report(
            args.sweep_dir,
            by=args.by,
            metric=args.metric,
            out=args.out,
            epoch=args.epoch,
            reference=args.reference,
            candidates=args.candidates,
            min_seeds=args.min_seeds,
            rows=args.rows,
            cols=args.cols,
            cell=args.cell,
            paper=args.paper,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.markdown)
    for path in report.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
