"""The paper's experiment configs: they compose, validate, expand to the intended sweeps, and run.

The sweeps are expanded exactly as Hydra's basic sweeper expands them (`hydra.sweeper.params`
merged with command-line overrides, then the cartesian product), so a job count here is the
number of jobs `python -m loldu_lightning -m experiment=<name>` starts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification

from loldu_lightning.adapters import build_adapter, count_parameters
from loldu_lightning.builders.schema import model_options
from loldu_lightning.cli.config import config_dir, register_resolvers, validate_config
from loldu_lightning.loldu import INITS, RESIDUALS, SCALINGS
from loldu_lightning.models import load_model
from tests.helpers import list_config_options

EXPERIMENTS = list_config_options("experiment")
# Tables meant for `-m`: experiment name -> number of jobs its sweep starts.
TABLE_JOBS = {
    "minilm_table1": 3 * 4 * 3,  # tasks x methods x seeds
    "paper/table1_glue": 6 * 8 * 5,
    "paper/table4_vit": 6,  # datasets, seed 42
    "paper/table5_init_scaling": 8 * 2 * 2 * 3,  # inits x (learned, none) x (authors, init) x seeds
    "paper/table11_lr": 8 * 3,
    "paper/table12_rank": 11 * 2 * 3,  # ranks x (alpha = r, alpha = 768) x seeds
}
TABLE1_METHODS = ["loldu", "lora", "vera", "fourierft", "pissa", "full", "linear_probe", "bitfit"]
GLUE_TASKS = ["sst2", "mrpc", "cola", "qnli", "rte", "stsb", "mnli", "qqp"]
VISION_DATASETS = ["cifar10", "cifar100", "eurosat", "stanford_cars", "flowers102", "fgvc_aircraft"]


def compose_full(overrides: list[str]):
    """The composed config including `hydra` (its sweeper params and launcher), as the CLI sees it."""
    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose("config", overrides=[*overrides, "output_dir=unused"], return_hydra_config=True)


def sweep_jobs(experiment: str, cli: Sequence[str] = ()) -> list[list[str]]:
    """The per-job override lists of `-m experiment=<experiment> <cli>`, in launch order.

    Mirrors BasicSweeper.sweep: the sweeper params, then the command line (which wins on a shared key).
    """
    params = compose_full([f"experiment={experiment}"]).hydra.sweeper.params or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + [f"experiment={experiment}", *cli]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    return [list(job) for batch in batches for job in batch]


def resolved(cfg, key: str):
    return OmegaConf.select(cfg, key, throw_on_resolution_failure=True)


# Option groups whose files read their table's values (Table VII's rates): composed inside the table.
WITHIN_TABLE = {"paper/table1_glue_method/": "paper/table1_glue", "paper/table3_llama2_method/": "paper/table3_llama2"}
# Layers over another family's experiment (their files say so): composed over a task they fit, since their
# options (vision's data.holdout_fraction, task.test_split) are refused on the default GLUE task.
LAYERS = {"paper/vit_fourierft": ["task=vision/cifar10"]}
# The base-size study's svd arms compare the run default's rate (30) with the width-matched one (50): both
# rates are written in their files, so a later width-aware default cannot change what they ran.
PINNED_SVD = {
    "mpnet_study": {("svd", 30)},
    "studies/mpnet_study_arm/svd_x30": {("svd", 30)},
    "studies/mpnet_study_arm/svd_x50": {("svd", 50)},
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    group = next((g for g in WITHIN_TABLE if experiment.startswith(g)), None)
    overrides = (
        [f"experiment={WITHIN_TABLE[group]}", f"experiment/{group.rstrip('/')}={experiment[len(group) :]}"]
        if group
        else [f"experiment={experiment}", *LAYERS.get(experiment, [])]
    )
    cfg = compose_full(overrides)
    validate_config(cfg)
    if cfg.adapter.name == "loldu" and experiment not in LAYERS:  # a layer keeps the adapter it is put over
        # the paper's decomposition, and the studies' as they ran, whatever the project default becomes
        pinned = PINNED_SVD.get(experiment, {("lu", None), ("lu", 1)})
        assert (cfg.adapter.decomposition, OmegaConf.select(cfg, "adapter.lr_scale")) in pinned
    # every interpolation outside `hydra` must resolve (per-task tables keyed on ${task.name} included)
    OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"]), resolve=True)


@pytest.mark.parametrize("experiment, jobs", TABLE_JOBS.items())
def test_table_sweeps_expand_to_the_intended_jobs(experiment, jobs):
    expanded = sweep_jobs(experiment)
    assert len(expanded) == jobs
    assert len({tuple(sorted(job)) for job in expanded}) == jobs  # no duplicate job


@pytest.mark.parametrize("experiment", TABLE_JOBS)
def test_every_swept_value_composes_and_validates(experiment):
    """One composition per swept value (not the full product), so a typo in any value fails here."""
    swept = {}
    for job in sweep_jobs(experiment):
        for text in job:
            key, _, value = text.partition("=")
            swept.setdefault(key, set()).add(text)
    first = sweep_jobs(experiment)[0]
    for key, texts in swept.items():
        for text in sorted(texts):
            overrides = [t for t in first if not t.startswith(f"{key}=")] + [text]
            cfg = compose_full(overrides)
            validate_config(cfg)
            for name in ("optimizer.lr", "trainer.max_epochs", "data.max_length", "data.train_limit"):
                resolved(cfg, name)


def test_table5_sweeps_every_init_with_the_authors_residual_and_distinct_scalings():
    jobs = [dict(t.split("=", 1) for t in job) for job in sweep_jobs("paper/table5_init_scaling")]
    assert {j["adapter.init"] for j in jobs} == set(INITS)
    # with alpha = r, fixed and none are the same model (sigma = 1): only learned vs none is swept
    assert {j["adapter.scaling"] for j in jobs} == {"learned", "none"} and set(SCALINGS) >= {"learned", "none"}
    assert {j["adapter.residual"] for j in jobs} == {"authors", "init"} and "authors" in RESIDUALS
    cfg = compose_full(["experiment=paper/table5_init_scaling"])
    assert cfg.adapter.rank == cfg.adapter.alpha == 768


def test_rank_and_lr_sweeps_cover_the_papers_axes():
    jobs = [dict(t.split("=", 1) for t in job) for job in sweep_jobs("paper/table12_rank")]
    assert sorted({int(j["adapter.rank"]) for j in jobs}) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768]
    assert {j["adapter.alpha"] for j in jobs} == {"null", "768"}  # alpha = r, or held at 768
    cfg = compose_full(["experiment=paper/table12_rank", "adapter.rank=4", "adapter.alpha=null"])
    assert cfg.adapter.alpha is None
    # Table XI: the paper's own grid, with the setting its 3e-3 row shares with Table V (ldu, no scaling)
    rates = {dict(t.split("=", 1) for t in job)["optimizer.lr"] for job in sweep_jobs("paper/table11_lr")}
    assert sorted(map(float, rates)) == sorted([1e-1, 5e-2, 8e-3, 5e-3, 3e-3, 6e-4, 3e-4, 1e-5])
    cfg = compose_full(["experiment=paper/table11_lr"])
    assert (cfg.adapter.init, cfg.adapter.scaling) == ("ldu", "none")


# Table VII of the paper: (lr, epochs, max length) per task.
PAPER_TABLE7 = {
    "sst2": (4e-4, 10, 128),
    "mrpc": (3e-4, 20, 512),
    "cola": (2e-4, 20, 128),
    "qnli": (2e-4, 10, 512),
    "rte": (4e-4, 20, 512),
    "stsb": (2e-4, 30, 512),
    "mnli": (3e-4, 10, 128),
    "qqp": (3e-4, 20, 512),
}
EXPERIMENT_DIR = Path(config_dir()) / "experiment" / "paper"


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_configs_are_the_papers_table7(task):
    """paper/glue_<task> and Table I's LoLDU row both read paper/table7_glue: the paper's numbers."""
    lr, epochs, max_length = PAPER_TABLE7[task]
    for overrides in ([f"experiment=paper/glue_{task}"], ["experiment=paper/table1_glue", f"task=glue/{task}"]):
        cfg = compose_full(overrides)
        assert cfg.task.name == task and cfg.adapter.name == "loldu"
        assert (resolved(cfg, "optimizer.lr"), cfg.trainer.max_epochs, cfg.data.max_length) == (lr, epochs, max_length)
        assert (cfg.data.batch_size, cfg.scheduler.warmup_ratio, cfg.adapter.rank, cfg.adapter.alpha) == (
            32,
            0.06,
            768,
            768,
        )
        assert list(cfg.adapter.target_modules) == ["query", "value"] and cfg.model.name_or_path.endswith(
            "roberta-base"
        )
        assert cfg.data.group_by_length is False  # the published runs shuffled plainly


def test_each_paper_table_is_written_once():
    """The per-task and per-dataset files only include their table's base and pick the task."""
    bases = {"glue_": "table7_glue", "vit_": "table9_vit"}
    for path in sorted(EXPERIMENT_DIR.glob("*.yaml")):
        prefix = next((p for p in bases if path.name.startswith(p)), None)
        if prefix is None or path.stem.endswith("fourierft"):  # FourierFT's protocol: test_vision_protocol.py
            continue
        body = yaml.safe_load(path.read_text())
        assert set(body) == {"defaults"}, f"{path.name} sets values of its own: {sorted(set(body) - {'defaults'})}"
        assert body["defaults"][0] == f"/experiment/paper/{bases[prefix]}", path.name
    for table in ("table4_vit", "table5_init_scaling", "table11_lr", "table12_rank"):
        body = yaml.safe_load((EXPERIMENT_DIR / f"{table}.yaml").read_text())
        assert body["defaults"][0] == "/experiment/paper/table9_vit" and "optimizer" not in body, table
    assert (
        yaml.safe_load((EXPERIMENT_DIR / "table1_glue.yaml").read_text())["defaults"][0]
        == "/experiment/paper/table7_glue"
    )


def test_table1_methods_are_the_papers_baselines_with_their_own_rates():
    methods = {}
    for method in TABLE1_METHODS:
        cfg = compose_full(
            ["experiment=paper/table1_glue", f"experiment/paper/table1_glue_method={method}", "task=glue/rte"]
        )
        validate_config(cfg)
        methods[cfg.adapter.name] = cfg
    assert sorted(methods) == sorted(TABLE1_METHODS)
    assert (methods["lora"].adapter.rank, methods["lora"].adapter.alpha) == (8, 8)
    # full fine-tuning trains every weight, so it must run far below the adapters' rates
    assert methods["full"].optimizer.lr < methods["lora"].optimizer.lr < methods["vera"].optimizer.lr
    # methods trained at rates a head cannot take give the head its own rate
    for name in ("vera", "fourierft"):
        assert methods[name].optimizer.head_lr is not None and methods[name].optimizer.head_lr < 0.02


@pytest.mark.parametrize("dataset", VISION_DATASETS)
def test_table4_matches_the_per_dataset_vit_configs(dataset):
    single_name = f"paper/vit_{dataset}"
    if single_name not in EXPERIMENTS:
        pytest.skip(f"{single_name} is not in this checkout")
    table = compose_full(["experiment=paper/table4_vit", f"task=vision/{dataset}"])
    single = compose_full([f"experiment={single_name}"])
    for key in (
        "seed",
        "optimizer.lr",
        "trainer.max_epochs",
        "data.batch_size",
        "scheduler.warmup_steps",
        "adapter.rank",
        "adapter.alpha",
        "model.name_or_path",
        "task.name",
    ):
        assert resolved(table, key) == resolved(single, key), key


def test_minilm_table1_loldu_trains_under_5_percent_of_loras_parameters():
    counts = {}
    for method in ("loldu", "lora"):
        cfg = compose_full(["experiment=minilm_table1", f"experiment/studies/minilm_table1_arm={method}"])
        adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
        model = load_model(model_options(cfg.model), AutoModelForSequenceClassification, num_labels=2)
        model = adapter.apply(model, list(cfg.model.head_modules))
        counts[method] = count_parameters(model, list(cfg.model.head_modules))["adapter"]
    assert counts["loldu"] == 6 * 2 * (384 + 1)
    assert counts["loldu"] < 0.05 * counts["lora"]


def test_minilm_table1_reads_the_shared_glue_relative_to_the_repo_root(shared_data):
    repo_root = Path(__file__).resolve().parents[1]
    for task, folder in (("sst2", "SST-2"), ("mrpc", "MRPC"), ("rte", "RTE")):
        cfg = compose_full(["experiment=minilm_table1", f"task=glue/{task}"])
        assert (repo_root / cfg.data.data_dir / "train.tsv").is_file()
        assert (repo_root / cfg.data.data_dir).resolve() == (shared_data / "glue" / folder).resolve()


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("joblib", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ],
)
def test_launcher_overrides_compose(launcher, target):
    plugin = target.split(".")[1]
    if importlib.util.find_spec(f"hydra_plugins.{plugin}") is None:
        pytest.skip(f"{plugin} is not installed (pip install 'loldu-lightning[slurm]' for submitit)")
    cfg = compose_full(["experiment=paper/table1_glue", f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_ == target
    assert len(sweep_jobs("paper/table1_glue", [f"hydra/launcher={launcher}"])) == TABLE_JOBS["paper/table1_glue"]


def test_cli_multirun_with_joblib_runs_each_method(glue_root, tmp_path):
    """A real `-m` through the CLI: the minilm_table1 sweep cut to RTE, seed 0 and two methods."""
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        "experiment=minilm_table1",
        "experiment/studies/minilm_table1_arm=loldu,lora",
        "task=glue/rte",
        "seed=0",
        "model=tiny-roberta",
        "debug=fast",
        f"data.glue_root={glue_root}",
        "data.max_length=64",
        "callbacks.lr_monitor=false",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=1",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "loldu_lightning", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert len(results) == 2
    assert {r["status"] for r in results} == {"completed"}
    assert {r["adapter"] for r in results} == {"loldu", "lora"}
    assert {r["task"] for r in results} == {"glue/rte"}
    loldu = next(r for r in results if r["adapter"] == "loldu")
    assert loldu["params"]["adapter"] == 2 * 2 * (32 + 1)  # tiny-roberta: full rank of its 32 x 32 q, v


def test_command_line_values_narrow_a_table():
    """The documented subsets: a command-line value replaces that key's sweep in the table."""
    assert len(sweep_jobs("minilm_table1", ["task=glue/rte"])) == 4 * 3
    jobs = sweep_jobs("paper/table1_glue", ["experiment/paper/table1_glue_method=loldu,lora", "seed=0"])
    assert len(jobs) == 6 * 2


GAP_ARMS = list_config_options("experiment/studies/minilm_gap_arm")


@pytest.mark.parametrize("arm", GAP_ARMS)
def test_minilm_gap_arms_compose_per_task(arm):
    for task, budget in (("sst2", (2000, 1, 64)), ("mrpc", (None, 3, 128)), ("rte", (500, 2, 128))):
        cfg = compose_full(["experiment=minilm_gap", f"experiment/studies/minilm_gap_arm={arm}", f"task=glue/{task}"])
        validate_config(cfg)
        assert (cfg.data.train_limit, cfg.trainer.max_epochs, cfg.data.max_length) == budget
        assert cfg.model.name_or_path == "minilm" and cfg.data.batch_size == 16


def test_minilm_gap_loldu_arms_stay_under_5_percent_of_lora_r16():
    counts = {}
    for arm in ("lora_r16", "lora_r1", "loldu_qkv_lr3e-3", "loldu_tuned", "loldu_lr1e-3", "loldu_tuned_all_linear"):
        cfg = compose_full(["experiment=minilm_gap", f"experiment/studies/minilm_gap_arm={arm}"])
        adapter = build_adapter(OmegaConf.to_container(cfg.adapter, resolve=True))
        model = adapter.apply(
            load_model(model_options(cfg.model), AutoModelForSequenceClassification, num_labels=2),
            list(cfg.model.head_modules),
        )
        counts[arm] = count_parameters(model, list(cfg.model.head_modules))["adapter"]
    assert counts["lora_r16"] == 6 * 2 * 16 * (384 + 384)
    assert counts["loldu_qkv_lr3e-3"] == 6 * 3 * (384 + 1) < 0.05 * counts["lora_r16"]
    assert counts["loldu_tuned"] == counts["loldu_lr1e-3"] == 6 * 2 * (384 + 1) < 0.05 * counts["lora_r16"]
    assert counts["lora_r1"] == 6 * 2 * (384 + 384)
    # query, key, value, attention output, FFN in (384 x 1536) and out: every one has rank 384
    assert counts["loldu_tuned_all_linear"] == 6 * 6 * (384 + 1)
