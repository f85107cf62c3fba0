"""Evaluations of a finished run (or an adapter folder plus its base model), written to `eval.json`.

`python -m loldu_lightning.evaluate <name> ...` runs one evaluation; each lives in its own module that
exposes `add_arguments(parser)` and `run(args) -> dict`, registered by name in `EVALUATIONS` (imported
lazily, so evaluating HumanEval never imports diffusers and the other way round).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# name -> module path; each module defines add_arguments(parser) and run(args) -> dict
EVALUATIONS: dict[str, str] = {
    "dreambooth": "loldu_lightning.evaluate.dreambooth",  # DINO / CLIP-I / CLIP-T of a diffusion/subject run
    "perplexity": "loldu_lightning.evaluate.perplexity",  # held-out loss / perplexity of an instruct run or base LM
    "humaneval": "loldu_lightning.evaluate.humaneval",  # HumanEval pass@1, generated code run in a sandbox
    "lm-eval": "loldu_lightning.evaluate.lm_harness",  # MMLU / BBH / DROP (any lm-eval task) through lm-eval
}

EVAL_FILE = "eval.json"


def write_eval_results(output_dir: str | Path, name: str, results: dict[str, Any]) -> Path:
    """Merge `results` under `name` into `<output_dir>/eval.json` (beside the run's metrics.json)."""
    path = Path(output_dir) / EVAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    document = json.loads(path.read_text()) if path.is_file() else {}
    document[name] = results
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
