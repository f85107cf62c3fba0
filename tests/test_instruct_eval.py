"""Evaluations of instruction-tuned causal LMs: the HumanEval sandbox, HumanEval scoring, lm-eval, perplexity."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from loldu_lightning.evaluate.__main__ import main as evaluate_main
from loldu_lightning.evaluate.humaneval import build_program, read_problems, truncate_completion
from loldu_lightning.evaluate.sandbox import run_program, sandbox_problem
from loldu_lightning.train import train
from tests.helpers import compose_config

GOOD = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
SANDBOX_PROBLEM = sandbox_problem()  # run_program refuses without bubblewrap (docs/sandbox.md)
requires_bwrap = pytest.mark.skipif(SANDBOX_PROBLEM is not None, reason=f"no sandbox: {SANDBOX_PROBLEM}")


@requires_bwrap
def test_sandbox_passes_a_correct_program_and_fails_a_wrong_one() -> None:
    assert run_program(GOOD).passed
    assert run_program(GOOD.replace("a + b", "a - b")).status == "failed"


@requires_bwrap
def test_sandbox_contains_an_infinite_loop() -> None:
    outcome = run_program("while True:\n    pass\n", timeout=2)
    assert (outcome.passed, outcome.status) == (False, "timeout")


@requires_bwrap
def test_sandbox_contains_a_crash() -> None:
    outcome = run_program("import faulthandler\nfaulthandler._sigsegv()\n")  # a real segmentation fault
    assert not outcome.passed and outcome.status == "failed"


@requires_bwrap
def test_sandbox_blocks_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "escaped"
    outcome = run_program(f"import os\nos.system('touch {marker}')\n")
    assert not outcome.passed and not marker.exists()


@requires_bwrap
def test_sandbox_contains_a_huge_allocation() -> None:
    outcome = run_program("block = bytearray(64 * 2**30)\n", memory_mb=512)
    assert not outcome.passed and "MemoryError" in outcome.detail


@requires_bwrap
def test_sandbox_blocks_the_network_and_early_exits() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    for code in (
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}))\n",
        f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
    ):
        assert not run_program(code).passed
    thread.join()
    server.close()
    assert accepted == [False]
    # ending the process early "successfully" is not a pass: the tests after it never ran
    assert not run_program("import sys\nsys.exit(0)\nassert False\n").passed


def _accept(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except OSError:
        return False


@requires_bwrap
def test_humaneval_scoring_on_real_problems() -> None:
    problems = read_problems()
    assert len(problems) == 164
    for problem in problems[:3]:
        solution = problem["canonical_solution"] + "\n\ndef unrelated():\n    pass\n"
        assert run_program(build_program(problem, solution)).passed, problem["task_id"]
        assert not run_program(build_program(problem, "    return None\n")).passed
    whole = f"```python\n{problems[0]['prompt']}{problems[0]['canonical_solution']}```\nDone."
    assert run_program(build_program(problems[0], whole, instruct=True)).passed
    assert truncate_completion("    return 1\n\n\nprint(f())\n") == "    return 1"


@pytest.fixture(scope="module")
def tiny_run(shared_data: Path, tmp_path_factory) -> Path:
    """A finished LoLDU run of tiny-llama on real Alpaca examples."""
    output = tmp_path_factory.mktemp("tiny_instruct_run")
    overrides = [
        "task=instruct/alpaca",
        "model=tiny-llama",
        "trainer=cpu",
        "callbacks.lr_monitor=false",
        f"data.path={shared_data / 'alpaca' / 'alpaca_5000.json'}",
        "data.prompt_format=chat",
        "data.max_length=160",
        "data.train_limit=16",
        "data.val_limit=8",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "adapter.rank=8",
        "optimizer.lr=5e-2",
        "task.generation.num_prompts=0",
    ]
    cfg = compose_config(overrides, output)
    result = train(cfg)
    # what `python -m loldu_lightning` leaves in a run directory
    (output / ".hydra").mkdir()
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, output / ".hydra" / "config.yaml")
    assert result["status"] == "completed"
    return output


def test_perplexity_of_the_merged_adapter_equals_the_training_validation(tiny_run: Path) -> None:
    results = evaluate_main(["perplexity", "--run-dir", str(tiny_run)])
    assert results == 0
    document = json.loads((tiny_run / "eval.json").read_text())["perplexity"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert document["adapter"] == "loldu" and document["merged"] is True
    assert document["val_loss"] == pytest.approx(metrics["final"]["val/loss"], rel=1e-5)
    # the report tool tabulates eval.json beside metrics.json
    from loldu_lightning.report.jobs import load_jobs
    from loldu_lightning.report.table import runs_frame

    runs = runs_frame(load_jobs(tiny_run), None)
    assert runs.loc[0, "eval.perplexity.val_loss"] == pytest.approx(document["val_loss"])
    assert runs.loc[0, "eval.perplexity.val_perplexity"] == pytest.approx(document["val_perplexity"])


def test_humaneval_and_lm_eval_on_the_adapted_tiny_llama(tiny_run: Path, tmp_path: Path) -> None:
    adapter = [
        "--adapter",
        str(tiny_run / "adapter" / "best"),
        "--model",
        "tiny-llama",
        "--override",
        f"seed={42}",
        "--output-dir",
        str(tmp_path),
    ]
    unsafe = [] if SANDBOX_PROBLEM is None else ["--unsafe-no-sandbox"]  # 4 tokens of a random tiny model
    assert evaluate_main(["humaneval", *adapter, "--limit", "2", "--max-new-tokens", "4", *unsafe]) == 0
    humaneval = json.loads((tmp_path / "eval.json").read_text())["humaneval"]
    assert (humaneval["problems"], humaneval["of_total"], humaneval["pass@1"]) == (2, 164, 0.0)
    assert len((tmp_path / "humaneval_samples.jsonl").read_text().splitlines()) == 2

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    rows = [
        {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
        {"question": "The sky is", "choices": ["green", "blue"], "answer": 1},
        {"question": "Ice is", "choices": ["cold", "hot"], "answer": 0},
    ]
    (tasks / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    (tasks / "local_mc.yaml").write_text(
        "task: local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'data.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    assert evaluate_main(["lm-eval", *adapter, "--tasks", "local_mc", "--include-path", str(tasks)]) == 0
    document = json.loads((tmp_path / "eval.json").read_text())
    assert set(document) == {"humaneval", "lm-eval"}
    scores = document["lm-eval"]["tasks"]["local_mc"]
    assert 0.0 <= scores["acc"] <= 1.0 and document["lm-eval"]["n_samples"]["local_mc"] == 3


def test_humaneval_credits_exactly_the_completions_that_pass(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:
    """The scorer end to end with known completions: problem 0's canonical body passes, a wrong body fails.

    A tiny random model scores 0 whatever the scorer does, so the run above cannot tell a scorer that
    never credits a pass from a working one; this can."""
    import loldu_lightning.generation

    problems = read_problems()[:2]
    answers = [problems[0]["canonical_solution"], "    return None\n"]
    seen_prompts: list[str] = []

    def known_completions(model, tokenizer, prompts, **kwargs):
        seen_prompts.extend(prompts)
        return list(answers)

    monkeypatch.setattr(loldu_lightning.generation, "generate_texts", known_completions)
    unsafe = [] if SANDBOX_PROBLEM is None else ["--unsafe-no-sandbox"]  # the canonical solution and `return None`
    adapter = ["--adapter", str(tiny_run / "adapter" / "best"), "--model", "tiny-llama", "--output-dir", str(tmp_path)]
    assert evaluate_main(["humaneval", *adapter, "--limit", "2", *unsafe]) == 0
    assert [prompt.endswith(problem["prompt"]) for prompt, problem in zip(seen_prompts, problems, strict=True)] == [
        True,
        True,
    ]
    humaneval = json.loads((tmp_path / "eval.json").read_text())["humaneval"]
    assert (humaneval["pass@1"], humaneval["passed"], humaneval["problems"]) == (0.5, 1, 2)
    samples = [json.loads(line) for line in (tmp_path / "humaneval_samples.jsonl").read_text().splitlines()]
    assert [sample["passed"] for sample in samples] == [True, False]


def test_evaluating_needs_a_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Say what to evaluate"):
        evaluate_main(["perplexity", "--output-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match=r"\.hydra/config.yaml not found"):
        evaluate_main(["perplexity", "--run-dir", str(tmp_path)])
