"""Result tables, targets with PASS/MISS, machine description and the Markdown rendering."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Target:
    """One acceptance criterion: ``measured <op> limit`` where op is ``<=`` or ``>=``."""

    name: str
    measured: float
    op: str
    limit: float

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ValueError(f"target {self.name!r}: op must be '<=' or '>=', got {self.op!r}")

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit if self.op == "<=" else self.measured >= self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def cell(self) -> str:
        """``1.04x (target <= 1.10x) PASS`` for a table column."""
        return f"{self.measured:.2f}x (target {self.op} {self.limit:.2f}x) {self.verdict}"


@dataclass
class Table:
    """A titled Markdown table with free-text notes under it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"## {self.title}", "", "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class BenchmarkReport:
    """Everything RESULTS.md shows."""

    command: str
    date: str
    machine: dict[str, str]
    method: list[str]
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def to_markdown(self) -> str:
        parts = ["# LoLDU benchmark results", "", f"Command: `{self.command}`  ", f"Date: {self.date}", ""]
        parts += ["## Machine", ""] + [f"- {key}: {value}" for key, value in self.machine.items()] + [""]
        parts += ["## Method", ""] + [f"- {line}" for line in self.method] + [""]
        if self.targets:
            parts += ["## Targets", "", "| target | measured | limit | verdict |", "|---|---|---|---|"]
            parts += [f"| {t.name} | {t.measured:.3f}x | {t.op} {t.limit:.2f}x | {t.verdict} |" for t in self.targets]
            parts.append("")
        parts += [table.to_markdown() for table in self.tables]
        return "\n".join(parts)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> dict[str, str]:
    """CPU, core and thread counts, library versions and the accelerator, if any."""
    import peft
    import transformers

    info = {
        "CPU": f"{cpu_model()} ({os.cpu_count()} logical cores visible)",
        "torch threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["GPU"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load average at start (1/5/15 min)"] = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return info


def megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:,.1f}"


def milliseconds(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x"
