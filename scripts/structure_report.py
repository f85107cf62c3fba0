"""The shape of the package: modules per folder, the longest functions, what imports Hydra/OmegaConf.

    python scripts/structure_report.py [src/loldu_lightning] [--top 15]

Read-only; a review aid for the layering of docs/design.md (Hydra and OmegaConf only in the composition
root and the CLI).
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path


def functions(tree: ast.AST):
    """(qualified name, line count) of every function and method, nested ones included."""

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child.end_lineno - child.lineno + 1
                yield from visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, f"{prefix}{child.name}.")

    yield from visit(tree, "")


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", nargs="?", default="src/loldu_lightning")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    package = Path(args.package)
    per_folder, lines, longest, framework = Counter(), Counter(), [], []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        folder = str(rel.parent) if rel.parent != Path(".") else "(top)"
        source = path.read_text()
        tree = ast.parse(source)
        per_folder[folder] += 1
        lines[folder] += len(source.splitlines())
        longest.extend((n, f"{rel}:{name}") for name, n in functions(tree))
        used = imported_roots(tree) & {"hydra", "omegaconf"}
        if used:
            framework.append(f"{rel} ({', '.join(sorted(used))})")
    print("## Modules per folder\n\n| folder | modules | lines |\n|---|---|---|")
    for folder in sorted(per_folder):
        print(f"| {folder} | {per_folder[folder]} | {lines[folder]:,} |")
    print(f"| all | {sum(per_folder.values())} | {sum(lines.values()):,} |")
    print(f"\n## The {args.top} longest functions\n\n| lines | function |\n|---|---|")
    for n, name in sorted(longest, reverse=True)[: args.top]:
        print(f"| {n} | {name} |")
    print(f"\n## Modules importing Hydra or OmegaConf ({len(framework)})\n")
    for entry in framework:
        print(f"- {entry}")


if __name__ == "__main__":
    main()
