"""Loading a causal LM for evaluation: a finished `task=instruct/...` run, an adapter folder, or a base model.

    --run-dir outputs/instruct/alpaca/<date>            the run's .hydra/config.yaml and adapter/best
    --adapter <folder> --model smollm2-135m             an adapter folder on a base model config
    --model smollm2-135m                                the base model alone (the no-fine-tuning row)

`--override key=value` changes any config value (e.g. `model.name_or_path=/path/to/Llama-2-7b-hf`,
`data.val_limit=100`). The adapter is loaded through the adapter registry (so its fingerprints
are checked against the base weights) and merged into the base weights for speed unless
`--no-merge` is given. A tiny random model (`model=tiny-llama`) is rebuilt from the run's seed,
exactly as training built it.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from ..loldu.manifest import AdapterManifest, is_adapter_folder
from .run_config import read_run_config

log = logging.getLogger(__name__)

ADAPTER_DIRS = ("best", "last")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    cfg: dict[str, Any]  # the run's configuration, plain dicts and lists
    output_dir: Path
    description: dict[str, Any]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run-dir",
        help="a finished task=instruct/... run directory (its .hydra/config.yaml and "
        "adapter/best); eval.json is written there",
    )
    parser.add_argument(
        "--adapter",
        help="an adapter folder (<run>/adapter/best or last, or any folder training wrote); with "
        "--run-dir it replaces adapter/best",
    )
    parser.add_argument(
        "--model",
        help="a model config (smollm2-135m, llama2-7b, tiny-llama) for --adapter or for "
        "evaluating the base model alone",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override such as model.name_or_path=/path or data.val_limit=100 (repeatable)",
    )
    parser.add_argument(
        "--output-dir",
        help="folder for eval.json (default: the run directory; for an adapter folder inside a run, that run)",
    )
    parser.add_argument(
        "--no-merge",
        action="store_true",
        help="evaluate with the adapter layers in place instead of merged into the weights",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")


def _compose(model: str | None, overrides: list[str]) -> dict[str, Any]:
    """The config tree's instruct defaults for a base model, as plain dicts.

    Only Hydra composes the config tree, so this one path goes through the CLI's composition and
    the composition root's conversion; a run directory is read without either (`run_config.py`).
    """
    from ..builders.plain import plain
    from ..cli.overrides import compose_single_run

    base = ["task=instruct/alpaca", *([f"model={model}"] if model else []), "output_dir=unused"]
    cfg = compose_single_run([*base, *overrides])
    if cfg is None:
        raise ValueError(f"--override {' '.join(overrides)}: give single values, not sweeps, to evaluate one model")
    return plain(cfg)


def _run_config(run_dir: Path, model: str | None, overrides: list[str]) -> dict[str, Any]:
    if model:
        raise ValueError(
            "--model applies to --adapter folders and base models; a run directory names its own model "
            "(change it with --override model.name_or_path=...)."
        )
    return read_run_config(run_dir, overrides)


def _find_adapter(run_dir: Path) -> Path:
    for name in ADAPTER_DIRS:
        candidate = run_dir / "adapter" / name
        if is_adapter_folder(candidate):
            return candidate
    raise FileNotFoundError(
        f"{run_dir}/adapter/best (or last) not found: the run saved no adapter yet (it saves after "
        "each validation); pass --adapter <folder> to evaluate another one."
    )


def load_for_evaluation(args: argparse.Namespace) -> LoadedModel:
    from ..adapters import ADAPTERS, build_adapter
    from ..cli.errors import UserError, raised_on_purpose
    from ..models import load_causal_lm, load_tokenizer, model_label
    from ..options import ModelOptions

    run_dir = Path(args.run_dir).expanduser() if args.run_dir else None
    adapter_dir = Path(args.adapter).expanduser() if args.adapter else None
    if run_dir is None and adapter_dir is None and not args.model:
        raise ValueError(
            "Say what to evaluate: --run-dir <run>, --adapter <folder> --model <config>, or --model "
            "<config> for the base model alone."
        )
    if run_dir is not None:
        cfg = _run_config(run_dir, args.model, list(args.override))
        adapter_dir = adapter_dir or (_find_adapter(run_dir) if cfg["adapter"]["name"] != "none" else None)
    else:
        if adapter_dir is not None and not args.model:
            raise ValueError(
                "--adapter needs --model <config> (smollm2-135m, llama2-7b, tiny-llama) naming its base "
                "model, or use --run-dir <run> so the run's config says it."
            )
        cfg = _compose(args.model, list(args.override))
    output_dir = Path(args.output_dir).expanduser() if args.output_dir else run_dir
    if output_dir is None and adapter_dir is not None and (adapter_dir.parents[1] / "metrics.json").is_file():
        output_dir = adapter_dir.parents[1]  # <run>/adapter/best -> <run>
    if output_dir is None:
        raise ValueError("--output-dir is needed: there is no run directory to write eval.json into.")

    L.seed_everything(int(cfg["seed"]), verbose=False)  # a tiny random base model is rebuilt exactly as in training
    base_model = ModelOptions.from_saved(cfg["model"])
    tokenizer = load_tokenizer(base_model)
    model = load_causal_lm(base_model)
    description: dict[str, Any] = {
        "model": model_label(base_model),
        "adapter": None,
        "adapter_dir": None,
        "merged": False,
    }
    if adapter_dir is not None:
        name = AdapterManifest.read(adapter_dir).adapter
        options = cfg["adapter"] if cfg["adapter"]["name"] == name else {"name": name}
        if run_dir is None:  # a folder on its own: read as it was trained, not with the composed defaults
            options = {**options, **ADAPTERS[name].saved_options(adapter_dir)}
        adapter = build_adapter(options)
        try:
            model = adapter.load(model, adapter_dir)
        except ValueError as error:  # an adapter that does not fit this base model: name the folder
            if not raised_on_purpose(error):
                raise
            raise UserError(f"--adapter {adapter_dir}: {error}") from error
        if not args.no_merge:
            model = adapter.merge(model)
            description["merged"] = True
        description.update(adapter=name, adapter_dir=str(adapter_dir))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    log.info("Evaluating %s", description)
    return LoadedModel(model, tokenizer, cfg, output_dir, description)
