"""Write <out>/summary.md for scripts/gpu_check.sh: what ran, how it ended, and where each record is.

    python scripts/gpu_check_summary.py OUT_DIR --mode gpu|dry-run --pytest-status N --pytest-seconds S
                                        --bench-status N --bench-seconds S

Reads OUT/environment/versions.txt (the versions in use, which open the summary), OUT/environment/bundle.txt
(what a --bundle run installed), OUT/pytest/junit.xml (every test's outcome, with the reason of each skip and
failure) and the Targets table of OUT/benchmarks/RESULTS.md. Prints the summary too. Standard library only, so it
works in whatever environment runs the check.
"""

from __future__ import annotations

import argparse
import datetime
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

TIMED_OUT = (124, 137)


@dataclass
class PytestOutcome:
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_junit(path: Path) -> PytestOutcome | None:
    if not path.is_file():
        return None
    outcome = PytestOutcome()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}".removeprefix("tests.")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if problem is not None:
            message = (problem.get("message") or "").strip()
            outcome.failed.append((name, message.splitlines()[0][:300] if message else "(no message)"))
        elif skip is not None:
            outcome.skipped.append((name, skip.get("message") or ""))
        else:
            outcome.passed.append(name)
    return outcome


def read_targets(path: Path) -> list[str]:
    """The rows of the benchmark report's Targets table, as Markdown lines."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index("## Targets")
    except ValueError:
        return []
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append(line)
    return rows


def read_versions(environment: Path) -> list[str]:
    """The versions in use as Markdown list items, and one line on the bundle when the run installed one."""
    versions = environment / "versions.txt"
    if not versions.is_file():
        return ["No environment/versions.txt: the versions were not recorded."]
    lines = [f"- {line}" for line in versions.read_text(encoding="utf-8").splitlines() if line.strip()]
    bundle = environment / "bundle.txt"
    if bundle.is_file():
        plan = bundle.read_text(encoding="utf-8").splitlines()
        installed = sum(": install" in line for line in plan)
        kept = sum(": keep the machine's" in line for line in plan)
        source = plan[0].removeprefix("bundle: ") if plan else "?"
        lines += [
            "",
            f"Bundle {source}: {installed} wheels installed, {kept} left to the machine's own copy "
            "(environment/bundle.txt). (bundle) and (machine) above say where each package came from.",
        ]
    return lines


def status_word(code: int) -> str:
    if code == 0:
        return "passed"
    if code in TIMED_OUT:
        return f"TIMED OUT (exit {code})"
    return f"FAILED (exit {code})"


def build_summary(args: argparse.Namespace) -> str:
    out = Path(args.out)
    junit = read_junit(out / "pytest" / "junit.xml")
    targets = read_targets(out / "benchmarks" / "RESULTS.md")
    title = "GPU check (dry run on the CPU)" if args.mode == "dry-run" else "GPU check"
    lines = [
        f"# {title}",
        "",
        *read_versions(out / "environment"),
        "",
        f"Written: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "",
    ]
    if args.mode == "dry-run":
        lines += [
            "Dry run: the same tests and benchmark code on the CPU at tiny sizes; no GPU was used and the numbers "
            "mean nothing. Checks that truly need CUDA are skipped with their reason below.",
            "",
        ]
    lines += [
        "| part | result | seconds | records |",
        "|---|---|---|---|",
        f"| pytest -m gpu | {status_word(args.pytest_status)} | {args.pytest_seconds} | pytest/junit.xml, pytest/output.log |",
        f"| benchmarks | {status_word(args.bench_status)} | {args.bench_seconds} | benchmarks/RESULTS.md, benchmarks/output.log |",
        "| environment | recorded | | environment/versions.txt, environment/nvidia-smi.txt, environment/pip-freeze.txt"
        + (", environment/bundle.txt" if (out / "environment" / "bundle.txt").is_file() else "")
        + " |",
        "",
        "## Tests",
        "",
    ]
    if junit is None:
        lines.append("No pytest/junit.xml: pytest did not get as far as writing it (see pytest/output.log).")
    else:
        lines.append(f"{len(junit.passed)} passed, {len(junit.failed)} failed, {len(junit.skipped)} skipped.")
        if junit.failed:
            lines += ["", "Failed:", ""] + [f"- `{name}`: {message}" for name, message in junit.failed]
        if junit.skipped:
            lines += ["", "Skipped:", ""] + [f"- `{name}`: {message}" for name, message in junit.skipped]
    lines += ["", "## Benchmark targets", ""]
    lines += targets or ["No targets table: the benchmark did not finish (see benchmarks/output.log)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
    parser.add_argument("--pytest-status", type=int, required=True)
    parser.add_argument("--pytest-seconds", type=int, required=True)
    parser.add_argument("--bench-status", type=int, required=True)
    parser.add_argument("--bench-seconds", type=int, required=True)
    args = parser.parse_args()
    summary = build_summary(args)
    (Path(args.out) / "summary.md").write_text(summary, encoding="utf-8")
    print(summary)


if __name__ == "__main__":
    main()
