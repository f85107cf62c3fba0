"""MMLU, BBH, DROP (the paper's InstructEval suite minus HumanEval) or any task of EleutherAI's lm-eval.

    python -m loldu_lightning.evaluate lm-eval --run-dir outputs/instruct/alpaca/<date> --tasks mmlu,bbh,drop
    python -m loldu_lightning.evaluate lm-eval --model smollm2-135m --output-dir eval/base \
        --tasks my_task --include-path /path/to/task_yamls --limit 100

The harness does the prompting, few-shot sampling and scoring; this module hands it the (merged)
adapted model and tokenizer as an `HFLM` and stores the numeric results under "lm-eval" in eval.json.
lm-eval reads each task's data with `datasets` (the hub, its cache, or local files named by a task
YAML under `--include-path`), so offline a task needs its data made available locally first.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

from . import write_eval_results
from .causal_lm import add_model_arguments, load_for_evaluation

log = logging.getLogger(__name__)
NAME = "lm-eval"
PAPER_TASKS = "mmlu,bbh,drop"
INSTALL = "pip install lm-eval (or pip install -e '.[instruct]')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--tasks", default=PAPER_TASKS, help=f"comma-separated lm-eval task names (default {PAPER_TASKS})"
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        help="a folder of extra lm-eval task YAMLs (e.g. tasks over local data files); repeatable",
    )
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: each task's own)")
    parser.add_argument("--limit", type=float, default=None, help="examples per task (a count, or a fraction < 1)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--max-length", type=int, default=None, help="context length for the harness (default: the model's)"
    )


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """lm-eval's per-task dict without its aliases and N/A stderr strings (`acc,none` -> `acc`)."""
    found = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name, _, filter_name = key.partition(",")
        label = name if filter_name in ("", "none") else f"{name}/{filter_name}"
        found[label] = None if isinstance(value, float) and not math.isfinite(value) else float(value)
    return found


def evaluate_model(
    model,
    tokenizer,
    tasks: list[str],
    include_paths: list[str],
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int = 4,
    max_length: int | None = None,
) -> dict[str, Any]:
    """Run lm-eval's `simple_evaluate` on an in-memory model; returns {task: {metric: value}} and the settings."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(f"The lm-eval evaluation needs the lm-eval package: {INSTALL}.") from error
    manager = TaskManager(include_path=include_paths or None)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"lm-eval knows no task {unknown}; check the spelling (e.g. mmlu, bbh, drop), or pass "
            "--include-path <folder with the task's YAML>."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    harness_model = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=max_length,
        device=str(next(model.parameters()).device),
    )
    try:
        output = lm_eval.simple_evaluate(
            model=harness_model,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
        )
    except (ConnectionError, OSError, FileNotFoundError) as error:
        raise FileNotFoundError(
            f"lm-eval could not load the data of {tasks} ({type(error).__name__}: {str(error).splitlines()[0]}). "
            "Offline, each task needs its data locally: copy the dataset into the Hugging Face cache where you have "
            "internet (HF_HOME), or write a task YAML with `dataset_path: json` and `dataset_kwargs: {data_files: "
            "...}` and pass its folder with --include-path."
        ) from error
    return {
        "tasks": {task: _numeric(metrics) for task, metrics in output["results"].items()},
        "n_samples": {task: counts.get("effective") for task, counts in (output.get("n-samples") or {}).items()},
        "num_fewshot": num_fewshot,
        "limit": limit,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if not tasks:
        raise ValueError("--tasks is empty; name lm-eval tasks such as mmlu,bbh,drop.")
    loaded = load_for_evaluation(args)
    results = {
        **loaded.description,
        **evaluate_model(
            loaded.model,
            loaded.tokenizer,
            tasks,
            list(args.include_path),
            args.num_fewshot,
            args.limit,
            args.batch_size,
            args.max_length,
        ),
    }
    write_eval_results(loaded.output_dir, NAME, results)
    return results
