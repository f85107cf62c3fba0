"""The shape of the package: modules per folder, the longest functions, what imports Hydra/OmegaConf,
the modules loose at the package root, where each option is declared, how often one run reads its typed
options, import cycles and duplicated code.

    python scripts/structure_report.py [src/loldu_lightning] [--top 15] [--no-run] [--no-duplicates]

Read-only but for `--no-run`'s opposite: counting `run_options` calls runs one tiny CPU training run
through the command line in-process (a few seconds; its run folder is a temporary directory).
A review aid for the layering of docs/design.md (Hydra and OmegaConf only in the composition root and
the CLI; each option declared once).
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    parser.add_argument("--no-run", action="store_true", help="skip the tiny run that counts run_options calls")
    parser.add_argument("--no-duplicates", action="store_true", help="skip the `duplicates` listing")
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
    root_modules = sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")
    print(f"\n## Modules at the package root ({len(root_modules)})\n\n{', '.join(root_modules)}")
    report_option_declarations(package)
    if not args.no_run:
        report_run_options_calls()
    report_import_cycles(package)
    if not args.no_duplicates:
        report_duplicates(package)


# -- where each option is declared -------------------------------------------------------------------


def _yaml_text(value) -> str:
    from loldu_lightning.builders.schema import _yaml

    return _yaml(value)


def yaml_declarations(conf: Path):
    """(key, value, file) of every value a config file sets, under the key a composed config has it."""
    import yaml

    from loldu_lightning.builders.schema_yaml import flatten

    for path in sorted(conf.rglob("*.yaml")):
        rel = path.relative_to(conf)
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict) or rel.parts[0] in ("hydra", "schema"):
            continue  # conf/schema/ is generated from the schema: not a second declaration
        if "# @package _global_" in text or len(rel.parts) == 1:
            prefix = ""
        elif rel.parts[0] == "adapter":
            prefix = f"adapter({path.stem})"  # each adapter file configures its own options type
        else:
            prefix = rel.parts[0]
        for key, value in flatten(data, prefix):
            if isinstance(value, str) and "${" in value:
                continue  # an interpolation repeats no default
            yield key, _yaml_text(value), str(rel)


def schema_declarations():
    """(key, default) of every typed option: the groups of builders/schema.py and each adapter's options."""
    import dataclasses

    from loldu_lightning.adapters import ADAPTERS
    from loldu_lightning.builders.schema import _default, sections

    for section in sections():
        for row in section.rows:
            yield row.key, row.default
    for name, adapter_type in ADAPTERS.items():
        for spec_field in dataclasses.fields(adapter_type.options_type):
            if spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING:
                continue
            yield f"adapter({name}).{spec_field.name}", _yaml_text(_default(spec_field))


def unlisted_options() -> set[str]:
    """Keys conf/schema/ leaves out (`listed=False`, and Lightning's trainer arguments): a config that
    uses one writes it, default or not, so that `key=value` (not `+key=value`) overrides it."""
    import dataclasses

    from loldu_lightning.builders.schema import _options_of
    from loldu_lightning.options import COMMON_GROUPS, DATA_SCHEMAS, MODEL_SCHEMAS, TASK_SCHEMAS

    groups = [("trainer", COMMON_GROUPS["trainer"])] + [(n, s) for n, s in COMMON_GROUPS.items() if n != "trainer"]
    groups += [("task", s) for s in TASK_SCHEMAS.values()] + [("data", s) for s in DATA_SCHEMAS.values()]
    groups += [("model", s) for s in MODEL_SCHEMAS.values()]
    keys = {f"trainer.{f.name}" for f in dataclasses.fields(COMMON_GROUPS["trainer"])}
    for prefix, schema_type in groups:
        keys |= {f"{prefix}.{f.name}" for f in _options_of(schema_type) if not f.metadata["option"].listed}
    return keys


def datamodule_declarations(package: Path):
    """(data.<argument>, default, class) of every DataModule constructor argument with a default."""
    for path in sorted((package / "data").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ClassDef) and node.name.endswith("DataModule")):
                continue
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            if init is None:
                continue
            arguments = init.args.args[len(init.args.args) - len(init.args.defaults) :]
            pairs = list(zip(arguments, init.args.defaults, strict=True)) + [
                (a, d) for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True) if d is not None
            ]
            for argument, default in pairs:
                try:
                    value = ast.literal_eval(default)
                except ValueError:
                    continue
                yield f"data.{argument.arg}", _yaml_text(value), f"data/{path.name}:{node.name}"


def _kind(where: str) -> str:
    """What kind of file repeats a default: a pin (an experiment overrides whatever the task sets, a
    trainer preset is Lightning's settings in full), a config that lists an option the base leaves out, or a default
    restated in the base config, a group file or a task (`restated`, which tests keep at zero)."""
    if where.startswith("data/"):
        return "DataModule constructor"
    if where.endswith("(lists it)"):
        return "lists an option the base leaves out, so that key=value sets it"
    folder = where.split("/")[0] if "/" in where else "config.yaml"
    pins = {"experiment": "experiment (pins)", "trainer": "trainer preset"}
    return pins.get(folder, "restated in config.yaml, a group file or a task")


def report_option_declarations(package: Path) -> None:
    """Per typed option: the places that state its default again (same value) beside the schema."""
    schema = dict(schema_declarations())
    places: dict[str, list[str]] = defaultdict(list)
    for key in schema:
        places[key].append("schema")
    unlisted = unlisted_options()
    for key, value, where in yaml_declarations(ROOT / "conf"):
        if key.split(".")[-1] == "name" and Path(where).stem == value:
            continue  # a choice file's identity (optimizer/adamw.yaml: name: adamw), not a default
        if key in schema and value == schema[key]:
            places[key].append(f"{where} (lists it)" if key in unlisted else where)
    datamodule_keys: dict[str, set[str]] = defaultdict(set)
    for key, value, where in datamodule_declarations(package):
        if key in schema and value == schema[key] and where not in datamodule_keys[key]:
            datamodule_keys[key].add(where)
            places[key].append(where)
    counts = Counter(min(len(where), 4) for where in places.values())
    repeated = {key: where for key, where in places.items() if len(where) > 1}
    in_yaml = sum(any(".yaml" in w for w in where) for where in repeated.values())
    in_datamodules = sum(any(w.startswith("data/") for w in where) for where in repeated.values())
    kinds = Counter(_kind(w) for where in repeated.values() for w in where if w != "schema")
    print("\n## Option declarations per key (the schema's default stated again with the same value)\n")
    print("| places | keys |\n|---|---|")
    for n in sorted(counts):
        print(f"| {n}{'+' if n == 4 else ''} | {counts[n]} |")
    print(
        f"\n{len(schema)} typed options; {len(repeated)} declared more than once: {in_yaml} again in conf/ YAML, "
        f"{in_datamodules} again in a DataModule's constructor. conf/schema/ (generated from the schema) is not "
        "counted. Where the repeats are:\n"
    )
    print("| kind of file | places |\n|---|---|")
    for kind, n in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {n} |")
    for key, where in sorted(repeated.items(), key=lambda item: (-len(item[1]), item[0]))[:10]:
        print(f"- {key}: {len(where)} ({', '.join(where[:4])}{', ...' if len(where) > 4 else ''})")


# -- run_options calls in one command-line run --------------------------------------------------------

TINY_RUN = [
    "model=tiny-roberta",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "data.train_limit=16",
    "data.val_limit=16",
    "data.batch_size=8",
    "data.max_length=32",
    "adapter.rank=4",
    "callbacks.lr_monitor=false",
]

COUNT_CALLS = """
import sys
import loldu_lightning.builders.schema as schema
calls = []
original = schema.run_options
def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)
import loldu_lightning.__main__ as cli
import loldu_lightning.train, loldu_lightning.cli.preflight, loldu_lightning.cli.config
import loldu_lightning.builders, loldu_lightning.builders.run
for module in list(sys.modules.values()):
    if getattr(module, "__name__", "").startswith("loldu_lightning") and getattr(module, "run_options", None) is original:
        module.run_options = counting
sys.argv = ["loldu_lightning", *sys.argv[1:]]
try:
    cli.main()
finally:
    print(f"RUN_OPTIONS_CALLS={len(calls)}", file=sys.__stderr__)
"""


def count_run_options_calls(overrides: list[str] = TINY_RUN) -> tuple[int | None, str]:
    """Runs one training run through `python -m loldu_lightning`'s main() in a subprocess and counts how
    often the composed config is read into typed options (every module's reference to run_options
    counts); None and the error's last line when the run fails."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-c", COUNT_CALLS, *overrides, f"hydra.run.dir={folder}"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=folder, timeout=600)
    line = next((line for line in result.stderr.splitlines() if line.startswith("RUN_OPTIONS_CALLS=")), None)
    if line is None or result.returncode != 0:
        return None, f"the run failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1:]}"
    return int(line.split("=")[1]), ""


def report_run_options_calls() -> None:
    calls, error = count_run_options_calls()
    print("\n## run_options calls in one command-line run\n")
    print(error or f"{calls} (`python -m loldu_lightning {' '.join(TINY_RUN)}`)")


# -- import cycles ------------------------------------------------------------------------------------


def module_name(package: Path, path: Path) -> str:
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST):
    """Every node of a module except those under `if TYPE_CHECKING:` (imports for annotations only,
    which never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *runtime_nodes(child)])
            continue
        yield node
        yield from runtime_nodes(node)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (an import inside a function counts: it
    runs whenever that function does). `from .x import y` names the submodule x.y where y is one."""
    files = {module_name(package, path): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module for alias in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def import_cycles(package: Path) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    graph = import_graph(package)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def report_import_cycles(package: Path) -> None:
    cycles = import_cycles(package)
    print(f"\n## Import cycles in the package ({len(cycles)})\n")
    for component in cycles:
        print(f"- {len(component)} modules: {', '.join(component)}")


# -- duplicated code ----------------------------------------------------------------------------------


def report_duplicates(package: Path) -> None:
    print("\n## Duplicate pairs (`duplicates`)\n")
    tool = shutil.which("duplicates")
    if tool is None:
        print("the `duplicates` command is not on PATH")
        return
    for folder in (package.resolve(), ROOT / "tests"):
        result = subprocess.run([tool, "--repo", str(folder), "--seconds", "120"], capture_output=True, text=True)
        first = result.stdout.strip().splitlines()[:1]
        print(f"- {folder.relative_to(ROOT)}: {first[0] if first else result.stderr.strip()}")


if __name__ == "__main__":
    main()
