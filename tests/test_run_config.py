"""Evaluations read a run's saved config with PyYAML: the same values OmegaConf resolves, no Hydra needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loldu_lightning.evaluate.run_config import apply_overrides, read_run_config, resolve
from tests.helpers import compose_config

SRC = Path(__file__).resolve().parents[1] / "src"


def save_run(run_dir: Path, cfg) -> Path:
    """What `python -m loldu_lightning` leaves: the composed config, interpolations unresolved."""
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


@pytest.mark.parametrize(
    "overrides",
    [
        ["task=instruct/alpaca", "model=tiny-llama"],  # trainer=auto: ${auto_precision:${trainer.accelerator},...}
        ["task=glue/mrpc", "data.glue_root=/data/glue"],  # ${glue_dir:${data.glue_root},MRPC}
        ["experiment=minilm_gap", "task=glue/rte"],  # keys built from keys: ${minilm_gap_budget.${task.name}...}
        [],  # the quickstart: ${package_path:...}
    ],
    ids=["instruct", "glue", "minilm_gap", "quickstart"],
)
def test_the_saved_config_resolves_as_omegaconf_resolves_it(overrides: list[str], tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = compose_config(overrides, tmp_path)  # registers the tree's resolvers for OmegaConf
    run_dir = save_run(tmp_path, cfg)
    text = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "${" in text  # the file really holds interpolations to resolve
    assert read_run_config(run_dir) == OmegaConf.to_container(cfg, resolve=True)


def test_overrides_are_parsed_as_on_the_command_line(tmp_path: Path) -> None:
    config = {"seed": 1, "adapter": {"seed": "${seed}", "target_modules": "${model.target_modules}"}, "model": {}}
    changed = apply_overrides(
        config, ["seed=7", "optimizer.lr=5e-2", "model.target_modules=[q_proj,v_proj]", "+data.val_limit=null"]
    )
    assert config["seed"] == 1  # the input is left as it was
    assert resolve(changed, resolvers={}) == {
        "seed": 7,
        "adapter": {"seed": 7, "target_modules": ["q_proj", "v_proj"]},
        "model": {"target_modules": ["q_proj", "v_proj"]},
        "optimizer": {"lr": 0.05},
        "data": {"val_limit": None},
    }
    with pytest.raises(ValueError, match="is not key=value"):
        apply_overrides(config, ["seed"])


def test_interpolation_forms() -> None:
    config = {
        "name": "rte",
        "budget": {"rte": {"epochs": 3}},
        "epochs": "${budget.${name}.epochs}",
        "label": "run-${name}-${epochs}",
        "picked": "${oc.select:budget.mrpc,null}",
        "found": "${oc.select:budget.rte.epochs,1}",
        "joined": "${join:${name},x}",
        "launch": "${hydra:runtime.output_dir}",
        "dangling": "${no.such.key}",
    }
    resolved = resolve(config, resolvers={"join": lambda *parts: "+".join(parts)})
    assert resolved["epochs"] == 3 and resolved["label"] == "run-rte-3"
    assert resolved["picked"] is None and resolved["found"] == 3 and resolved["joined"] == "rte+x"
    # the launch's own values (and keys that are not there) stay as written: evaluations do not read them
    assert resolved["launch"] == "${hydra:runtime.output_dir}" and resolved["dangling"] == "${no.such.key}"
    with pytest.raises(ValueError, match="refers to itself"):
        resolve({"a": "${b}", "b": "${a}"}, resolvers={})


def test_a_missing_run_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config.yaml not found"):
        read_run_config(tmp_path)


def test_reading_a_run_imports_neither_hydra_nor_omegaconf(tmp_path: Path) -> None:
    run = {"seed": 3, "model": {"name_or_path": "m", "target_modules": ["q"]}, "adapter": {"name": "loldu"}}
    run["adapter"]["target_modules"] = "${model.target_modules}"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(run))
    script = (
        "import json, sys\n"
        "from loldu_lightning.evaluate.causal_lm import load_for_evaluation\n"
        "from loldu_lightning.evaluate.run_config import read_run_config\n"
        f"config = read_run_config({str(tmp_path)!r})\n"
        "print(json.dumps([config, sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf'))]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, check=True
    )
    config, imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert config["adapter"]["target_modules"] == ["q"]
    assert imported == []


def test_every_evaluation_module_imports_neither_hydra_omegaconf_nor_the_composition_root() -> None:
    """evaluate/ is usable without Hydra: only causal_lm's --model path composes the config tree,
    and it imports the CLI's composition when it runs, not when the module is imported."""
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import loldu_lightning.evaluate as evaluate\n"
        "names = sorted(m.name for m in pkgutil.iter_modules(evaluate.__path__, 'loldu_lightning.evaluate.'))\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "banned = ('hydra', 'omegaconf', 'loldu_lightning.builders', 'loldu_lightning.tasks')\n"
        "found = sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in banned))\n"
        "print(json.dumps([names, found]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={"PYTHONPATH": str(SRC)}, check=True
    )
    names, found = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"loldu_lightning.evaluate.perplexity", "loldu_lightning.evaluate.causal_lm"} <= set(names)
    assert len(names) >= 8  # every module of evaluate/, not an empty listing
    assert found == []


def test_no_evaluation_imports_the_composition_root_tasks_or_hydra_even_when_it_runs() -> None:
    """Imports inside functions count too (they run with the evaluation); the one exception is
    causal_lm's `--model` path, which composes the config tree from its files."""
    import ast

    banned = ("builders", "tasks", "hydra", "omegaconf")
    allowed = {("causal_lm.py", "_compose")}
    offenders = []
    for path in sorted((SRC / "loldu_lightning" / "evaluate").glob("*.py")):
        tree = ast.parse(path.read_text())
        for function in [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]:
            where = getattr(function, "name", "<module>")
            for node in ast.walk(function) if where != "<module>" else ast.iter_child_nodes(function):
                if isinstance(node, ast.ImportFrom):
                    # `from ..builders import x` -> loldu_lightning.builders; `from . import x` stays in evaluate
                    package = "loldu_lightning" if node.level == 2 else "loldu_lightning.evaluate"
                    names = [f"{package}.{node.module or ''}" if node.level else node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                heads = {name.removeprefix("loldu_lightning.").split(".")[0] for name in names}
                if heads & set(banned) and (path.name, where) not in allowed:
                    offenders.append(f"{path.name}:{node.lineno} ({where}): {', '.join(names)}")
    assert offenders == []
