"""Typed schemas of the config groups the app reads, and `run_options(cfg)`, which reads them.

Each option is declared once, as a dataclass field: its type, its default and an `Option` (what it
means, its allowed range or choices, an example value). `run_options` turns a composed config into
these dataclasses, refusing in one line that names the key a value of the wrong type, out of range
or not among the choices, and a key that no schema declares (naming the closest declared one).
`--help`, `python -m loldu_lightning.cli.options` and docs/options.md list the options from here.

What is typed: the top-level `seed`, `ckpt_path` and `output_dir`; the groups `task`, `data` and
`model` (options every family reads, plus each family's own); `optimizer`, `scheduler`, `checkpoint`,
`callbacks`, `resume`; the numeric keys of `trainer`; diffusion's `loss`, `sampling` and `eval`.
The adapter's options are typed by each adapter's own options dataclass (adapters/options.py).

What passes through: `logger`, the Trainer keys other than the numeric ones (Lightning checks them,
and a key `lightning.Trainer` does not take is refused here), keyword arguments of the chosen torch
optimizer (`+optimizer.betas=[0.9,0.98]`), and top-level keys that an experiment adds for its own
interpolations (`minilm_gap_budget`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf

from .plain import plain

NoneType = type(None)


@dataclass(frozen=True)
class Option:
    """What one option means and which values it takes beyond its type.

    `minimum`/`maximum` bound numbers (`above`/`below` make a bound strict); `choices` returns the
    allowed names (a function, so that registries are imported only when a config is checked);
    `path` marks a folder or file that must exist when set (checked by preflight, not at composition).
    `listed=False` leaves the option out of the config tree's base files (conf/schema/, generated from
    here): a config that uses it lists it, and elsewhere it is added as `+key=value`.
    """

    help: str
    example: str
    minimum: float | None = None
    above: bool = False
    maximum: float | None = None
    below: bool = False
    choices: Callable[[], Iterable[str]] | None = None
    path: Literal["folder", "file"] | None = None
    holds: str = ""  # for a path: what it must hold, named in the error
    listed: bool = True


def option(default: Any, help: str, example: str, **allowed: Any) -> Any:
    """A dataclass field declaring one option: its default, what it means, an example and its range."""
    metadata = {"option": Option(help, example, **allowed)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def required(help: str, example: str, **allowed: Any) -> Any:
    """A dataclass field declaring an option every config sets itself (a task's family and name)."""
    return field(metadata={"option": Option(help, example, **allowed)})


def group(schema: type, help: str) -> Any:
    """A field holding a nested group of options (e.g. `task.generation`)."""
    return field(default_factory=schema, metadata={"option": Option(help, "")})


def passthrough(help: str) -> Any:
    """A field collecting the keys a group passes on unchecked (a torch optimizer's or Lightning's)."""
    return field(default_factory=dict, metadata={"passthrough": help})


def _registry(module: str, name: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        import importlib

        return list(getattr(importlib.import_module(module, __package__), name))

    return names


# -- the schemas ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopLevelOptions:
    seed: int = option(
        42, "seed of everything random in a run (weights of new heads, data order, subsets)", "42", minimum=0
    )
    ckpt_path: str | None = option(
        None, "resume: `last` (this run folder's newest checkpoint) or a checkpoint file", "last"
    )
    output_dir: str = option(
        "${hydra:runtime.output_dir}", "the run folder (metrics.json, checkpoints/, adapter/)", "outputs/my_run"
    )


FAMILIES = ("glue", "vision", "instruct", "diffusion")


@dataclass(frozen=True)
class TaskOptions:
    family: str = required("task family: which data and model code a run uses", "glue", choices=lambda: FAMILIES)
    name: str = required("the task within its family (a GLUE task, a vision dataset, ...)", "sst2")
    monitor: str = option(
        "val/accuracy", "metric that selects the best epoch (and a sweeper's objective)", "val/accuracy"
    )
    mode: str = option("max", "whether a higher or lower `monitor` is better", "max", choices=lambda: ("max", "min"))


@dataclass(frozen=True)
class VisionTaskOptions(TaskOptions):
    train_split: str | list[str] | None = option("train", "split(s) to train on", "train")
    val_split: str | list[str] | None = option("test", "split(s) to validate on; null = the dataset's default", "test")
    test_split: str | list[str] | None = option(
        None, "split evaluated once after training, with the best checkpoint", "test"
    )
    holdout_fraction: float = option(
        0.2,
        "EuroSAT (no official split): share of each class held out for validation",
        "0.2",
        minimum=0,
        above=True,
        maximum=1,
        below=True,
        listed=False,  # EuroSAT's own split: eurosat.yaml lists it
    )
    split_seed: int = option(
        42, "seed of every held-out split (EuroSAT's, data.holdout_fraction's), not the run's seed", "42", minimum=0
    )


@dataclass(frozen=True)
class GenerationOptions:
    num_prompts: int = option(4, "validation prompts answered greedily after each validation (0 = off)", "4", minimum=0)
    max_new_tokens: int = option(64, "length limit of each answer, in tokens", "64", minimum=1)


@dataclass(frozen=True)
class InstructTaskOptions(TaskOptions):
    generation: GenerationOptions | None = group(
        GenerationOptions, "greedy answers written to <run>/generations/ (task.generation=null: none)"
    )


@dataclass(frozen=True)
class DataOptions:
    """The data options every family reads (config.yaml's `data:` block)."""

    glue_root: str | None = option(
        None, "GLUE: folder holding the GLUE release's task folders (SST-2/, RTE/, ...)", "/path/to/glue"
    )
    data_dir: str | None = option(
        None,
        "GLUE: one task's folder with its TSV files; null = Hugging Face `glue` (needs the hub)",
        "../shared/data/glue/SST-2",
        path="folder",
        holds="the task's GLUE files (train.tsv, dev.tsv)",
    )
    max_length: int = option(128, "tokens per example (longer ones are cut)", "128", minimum=1)
    batch_size: int = option(32, "training batch size per device", "32", minimum=1)
    eval_batch_size: int = option(64, "validation and test batch size per device", "64", minimum=1)
    num_workers: int = option(0, "DataLoader worker processes", "4", minimum=0)
    group_by_length: bool = option(True, "text: shuffled batches of similar lengths (less padding)", "false")
    length_group_megabatch: int | None = option(
        None,
        "with group_by_length: batches per length-sorted megabatch (null = a quarter of the epoch, at most 50)",
        "4",
        minimum=1,
    )
    train_limit: int | None = option(
        None, "a seeded random subset of the training split (null = all)", "1000", minimum=1
    )
    val_limit: int | None = option(
        None, "a seeded random subset of the validation split (null = all)", "500", minimum=1
    )


@dataclass(frozen=True)
class GlueDataOptions(DataOptions):
    train_from_dev: int | None = option(
        None,
        "train on this many seeded dev examples and validate on the rest of dev (null = off)",
        "4000",
        minimum=1,
        listed=False,  # the GLUE tasks whose test labels are hidden list it (qnli.yaml, ...)
    )
    split_seed: int = option(0, "seed of the train_from_dev split", "0", minimum=0, listed=False)


@dataclass(frozen=True)
class VisionDataOptions(DataOptions):
    root: str | None = option(None, "folder holding the dataset's files", "/path/to/cifar10")
    download: bool = option(False, "let torchvision fetch the files into data.root", "true")
    image_size: int | None = option(
        None, "input size; null = the model's (its preprocessor_config.json or config), else 224", "224", minimum=1
    )
    augment: bool = option(True, "RandomResizedCrop + horizontal flip on training images", "false")
    holdout_fraction: float | None = option(
        None,
        "validate on this seeded, stratified share of the training split, not task.val_split (needs task.test_split)",
        "0.1",
        minimum=0,
        above=True,
        maximum=1,
        below=True,
    )
    eval_resize_crop: bool = option(
        False, "evaluate on the shorter edge resized + centre crop, not a square resize", "true"
    )


@dataclass(frozen=True)
class InstructDataOptions(DataOptions):
    path: str | None = option(
        None,
        "an Alpaca-style JSON list or JSONL file; null = data.hf_dataset",
        "../shared/data/alpaca/alpaca_5000.json",
        path="file",
        holds="an Alpaca-style JSON or JSONL file",
    )
    hf_dataset: str | None = option(
        "yahma/alpaca-cleaned", "hub dataset used when data.path is null (needs the hub)", "tatsu-lab/alpaca"
    )
    prompt_format: str = option(
        "alpaca",
        "alpaca (alpaca-lora's template) or chat (the tokenizer's chat template)",
        "chat",
        choices=_registry("..data.instruct", "PROMPT_FORMATS"),
    )
    train_on_inputs: bool = option(False, "the loss also covers the prompt tokens", "true")
    val_size: int | float | None = option(
        None,
        "held-out records: a count, a fraction in (0, 1), or null = 2% capped at 2,000",
        "100",
        minimum=0,
        above=True,
    )


@dataclass(frozen=True)
class DiffusionDataOptions(DataOptions):
    root: str | None = option(
        None, "folder of subject folders (DreamBooth's dataset/), used with data.subject", "/data/dreambooth"
    )
    subject: str | None = option(None, "subject folder under data.root", "dog")
    instance_dir: str | None = option(None, "or the subject's photo folder directly", "/data/dreambooth/dog")
    class_name: str | None = option(None, "null = looked up in <subject folder>/../prompts_and_classes.txt", "dog")
    unique_token: str = option("sks", "the rare token that names the subject", "sks")
    instance_prompt: str = option(
        "a photo of {token} {class}", "prompt of the subject photos", "'a photo of {token} {class}'"
    )
    class_prompt: str = option("a photo of {class}", "prompt of the class images", "'a photo of {class}'")
    with_prior_preservation: bool = option(
        False, "train on generated class images too (DreamBooth's prior loss)", "true"
    )
    class_dir: str | None = option(
        None, "class images; null = a cache folder per (model, resolution, class prompt)", "/data/class_dog"
    )
    num_class_images: int = option(
        100, "class images for prior preservation (missing ones are generated once)", "100", minimum=1
    )
    sample_batch_size: int = option(4, "batch size when generating class images", "4", minimum=1)
    resolution: int = option(512, "image size in pixels (the model's by default)", "512", minimum=1)
    center_crop: bool = option(True, "centre crop (else random crop) to the resolution", "false")
    random_flip: bool = option(False, "random horizontal flips of the subject photos", "true")


@dataclass(frozen=True)
class ModelOptions:
    """The model options every family reads (each conf/model/<name>.yaml sets its own values)."""

    name_or_path: str = option(
        "minilm",
        "the model: a local folder, a hub id, a packaged model (minilm, smollm2, all-mpnet-base-v2) or a tiny one's name",
        "/path/to/roberta-base",
    )
    tokenizer: str | None = option(
        None, "the tokenizer's folder, hub id or packaged name, or byte-level; null = the model's own", "minilm"
    )
    gguf_file: str | None = option(
        None,
        "a GGUF file in the model folder, dequantised to float by transformers (needs the gguf package)",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    tiny: dict[str, Any] | None = option(
        None,
        "build a small random model from these config fields (model_type and sizes) instead of loading one",
        "{model_type:roberta,hidden_size:32}",
    )
    cache_dir: str | None = option(
        None,
        "where a packaged split-zip model or tiny-sd is unpacked or written; null = ~/.cache/loldu_lightning",
        "/scratch/loldu_cache",
    )
    target_modules: list[str] | str = option(
        ["query", "value"], "the adapted modules (the adapters' default adapter.target_modules)", "[query,value]"
    )
    head_modules: list[str] = option(
        [], "modules trained fully beside the adapter (a new classification head)", "[classifier]"
    )
    target_module_aliases: dict[str, Any] | None = option(
        None,
        "module names experiments use -> this model's names (one or a list), applied to adapter.target_modules",
        "{query:q,value:v}",
    )


@dataclass(frozen=True)
class DiffusionModelOptions(ModelOptions):
    vae_name_or_path: str | None = option(
        None, "a separate AutoencoderKL folder (the paper's sd-vae-ft-mse); null = the pipeline's vae/", "/path/to/vae"
    )
    resolution: int = option(512, "the model's image size in pixels (data.resolution follows it)", "512", minimum=1)
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass (less memory, slower)", "true"
    )
    train_text_encoder: bool = option(
        False, "the text encoder joins the adapted model (add its q_proj,k_proj,v_proj,out_proj to the targets)", "true"
    )


def _optimizer_class(name: str) -> type:
    from ..tasks.base import OPTIMIZERS

    return OPTIMIZERS[name]


@dataclass(frozen=True)
class OptimizerOptions:
    name: str = option("adamw", "torch optimizer", "adamw", choices=_registry("..tasks.base", "OPTIMIZERS"))
    lr: float = option(1e-3, "learning rate", "1e-3", minimum=0, above=True)
    weight_decay: float = option(0.0, "decoupled weight decay (AdamW) or L2 penalty", "0.01", minimum=0)
    head_lr: float | None = option(
        None, "a separate learning rate for the task head (null = lr)", "1e-3", minimum=0, above=True
    )
    torch_options: dict[str, Any] = passthrough(
        "other keyword arguments of the chosen torch optimizer (+optimizer.betas=[0.9,0.98])"
    )

    @staticmethod
    def passthrough_keys(options: OptimizerOptions) -> set[str]:
        return set(inspect.signature(_optimizer_class(options.name)).parameters) - {"params"}

    @staticmethod
    def passthrough_where(options: OptimizerOptions) -> str:
        return f" with optimizer.name={options.name} (torch.optim.{_optimizer_class(options.name).__name__})"


@dataclass(frozen=True)
class SchedulerOptions:
    name: str = option(
        "linear",
        "learning-rate schedule after the warmup (none = a constant rate, no warmup)",
        "cosine",
        choices=lambda: [*_registry("..tasks.base", "SCHEDULES")(), "none"],
    )
    warmup_ratio: float = option(
        0.06, "linear warmup over this share of the optimizer steps", "0.06", minimum=0, maximum=1
    )
    warmup_steps: int | None = option(None, "warmup optimizer steps; overrides warmup_ratio when set", "100", minimum=0)


@dataclass(frozen=True)
class CheckpointOptions:
    save_top_k: int = option(1, "best-<epoch>.ckpt files kept, by task.monitor (-1: all)", "1 (-1: all)", minimum=-1)
    every_n_train_steps: int | None = option(
        None, "also write last.ckpt every N optimizer steps (null or 0 = off)", "100", minimum=0
    )
    every_n_minutes: float | None = option(
        30, "also write last.ckpt every N minutes (null or 0 = off)", "30", minimum=0
    )


@dataclass(frozen=True)
class CallbacksOptions:
    throughput: int = option(10, "samples/s and tokens/s over the last N batches (0 = off)", "10", minimum=0)
    lr_monitor: bool = option(True, "log the learning rate per step", "false")
    extra: dict[str, Any] = option({}, "more callbacks as `_target_` nodes, by name", "{}")


@dataclass(frozen=True)
class ResumeOptions:
    auto: bool | None = option(
        None,
        "resume this run folder automatically (null = for sweep jobs and requeued SLURM jobs)",
        "true",
    )
    allow_changes: list[str] | None = option(
        None, "config keys a resume may change on purpose", "[trainer.max_epochs]", listed=False
    )  # added on purpose for one resume: +resume.allow_changes=[...]


@dataclass(frozen=True)
class TrainerOptions:
    """The numeric Trainer options, with Lightning's defaults; every other key passes to Lightning."""

    max_epochs: int | None = option(None, "epochs to train (-1: no limit)", "3 (-1: no limit)", minimum=-1)
    min_epochs: int | None = option(None, "epochs trained at least", "1", minimum=0)
    max_steps: int = option(-1, "optimizer steps to train (-1: no limit)", "1000 (-1: no limit)", minimum=-1)
    min_steps: int | None = option(None, "optimizer steps trained at least", "100", minimum=0)
    accumulate_grad_batches: int = option(1, "batches per optimizer step", "4", minimum=1)
    gradient_clip_val: float | None = option(None, "gradient norm clipping (null = off)", "1.0", minimum=0)
    log_every_n_steps: int | None = option(
        None, "log training metrics every N steps (null: Lightning's 50)", "10", minimum=1
    )
    num_sanity_val_steps: int | None = option(
        None, "validation batches checked before training (-1: all; null: Lightning's 2)", "0", minimum=-1
    )
    check_val_every_n_epoch: int | None = option(
        1, "validate every N epochs (null: by val_check_interval only)", "1", minimum=1
    )
    limit_train_batches: int | float | None = option(
        None, "training batches per epoch: a count, or a share up to 1.0", "0.25", minimum=0
    )
    limit_val_batches: int | float | None = option(
        None, "validation batches: a count, or a share up to 1.0", "0.5", minimum=0
    )
    limit_test_batches: int | float | None = option(
        None, "test batches: a count, or a share up to 1.0", "0.5", minimum=0
    )
    num_nodes: int = option(1, "machines of a multi-node run", "2", minimum=1)
    lightning: dict[str, Any] = passthrough(
        "defaults are Lightning's, for a key the trainer/ configs leave unset; every other "
        "lightning.Trainer argument passes on (accelerator, devices, precision, strategy, ...)"
    )

    @staticmethod
    def passthrough_keys(options: TrainerOptions) -> set[str]:
        import lightning as L

        return set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}

    @staticmethod
    def passthrough_where(options: TrainerOptions) -> str:
        return " (the arguments of lightning.Trainer)"


@dataclass(frozen=True)
class LossOptions:
    prior_weight: float = option(1.0, "weight of the prior-preservation loss", "1.0", minimum=0)
    val_timesteps: list[int] = option(
        [100, 300, 500, 700, 900], "fixed timesteps of the validation loss", "[100,500,900]"
    )


@dataclass(frozen=True)
class SamplingOptions:
    enabled: bool = option(True, "sample grids under samples/ during training", "false")
    every_n_steps: int = option(100, "sample every N steps (0 = only at the start and at the end)", "100", minimum=0)
    at_start: bool = option(True, "also sample before training", "false")
    prompts: list[str] = option(
        ["a photo of {token} {class}", "a {token} {class} in the snow", "a {token} {class} on the beach"],
        "prompts of the grids ({token} and {class} are filled in)",
        "['a {token} {class} in the snow']",
    )
    seeds: list[int] = option([0, 1], "one image per prompt and seed", "[0,1]")
    num_inference_steps: int = option(25, "denoising steps per image", "25", minimum=1)
    guidance_scale: float = option(7.5, "classifier-free guidance scale", "7.5", minimum=0)
    scheduler: str = option(
        "dpm",
        "sampler, built from the model's scheduler config",
        "dpm",
        choices=_registry("..models.diffusion", "SAMPLERS"),
    )


@dataclass(frozen=True)
class EvalOptions:
    """Read by `python -m loldu_lightning.evaluate dreambooth --run-dir <run>`."""

    dino_path: str | None = option(None, "local folder of facebook/dino-vits16", "/models/dino-vits16")
    clip_path: str | None = option(None, "local folder of a CLIP model", "/models/clip-vit-large-patch14")
    num_images: int = option(4, "images per prompt", "4", minimum=1)
    prompts_file: str | None = option(
        None, "null = prompts_and_classes.txt beside the subject folders", "/data/prompts.txt"
    )


TASK_SCHEMAS: dict[str, type] = {
    "glue": TaskOptions,
    "vision": VisionTaskOptions,
    "instruct": InstructTaskOptions,
    "diffusion": TaskOptions,
}
DATA_SCHEMAS: dict[str, type] = {
    "glue": GlueDataOptions,
    "vision": VisionDataOptions,
    "instruct": InstructDataOptions,
    "diffusion": DiffusionDataOptions,
}
MODEL_SCHEMAS: dict[str, type] = {
    "glue": ModelOptions,
    "vision": ModelOptions,
    "instruct": ModelOptions,
    "diffusion": DiffusionModelOptions,
}
# groups every family reads, in the order they are checked
COMMON_GROUPS: dict[str, type] = {
    "optimizer": OptimizerOptions,
    "scheduler": SchedulerOptions,
    "checkpoint": CheckpointOptions,
    "callbacks": CallbacksOptions,
    "resume": ResumeOptions,
    "trainer": TrainerOptions,
}
# top-level groups of one family only; elsewhere the same names are free for experiments' own keys
FAMILY_GROUPS: dict[str, dict[str, type]] = {
    "diffusion": {"loss": LossOptions, "sampling": SamplingOptions, "eval": EvalOptions},
}


@dataclass(frozen=True)
class RunOptions:
    """A composed config as typed objects: what `run_options(cfg)` returns."""

    seed: int
    ckpt_path: str | None
    output_dir: str
    task: TaskOptions
    data: DataOptions
    model: ModelOptions
    optimizer: OptimizerOptions
    scheduler: SchedulerOptions
    checkpoint: CheckpointOptions
    callbacks: CallbacksOptions
    resume: ResumeOptions
    trainer: TrainerOptions
    adapter_name: str  # adapter.name: the ADAPTERS entry that `adapter` configures
    adapter: Any  # the adapter's options dataclass (ADAPTERS[name].options_type)
    family_groups: dict[str, Any]  # diffusion: loss, sampling, eval


# -- types and ranges -----------------------------------------------------------------------------


def _members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _accepts(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    if len(_members(annotation)) > 1:
        return any(_accepts(value, member) for member in _members(annotation))
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_accepts(entry, item) for entry in value)
    if origin is dict or dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)
    if annotation is NoneType:
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    raise TypeError(f"the option schema uses a type it cannot check: {annotation!r}")


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


def _kind_word(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is list:
        (item,) = typing.get_args(annotation)
        return f"a list of {_PLURALS[item]}"
    if origin is dict or dataclasses.is_dataclass(annotation):
        return "a mapping"
    return _WORDS.get(annotation, "any value")


def describe(annotation: Any, spec: Option) -> str:
    """The allowed values in words, e.g. `an integer >= 1 (or null)`, `a number > 0 and <= 1`."""
    members = [member for member in _members(annotation) if member is not NoneType]
    if float in members and int in members:
        members.remove(int)  # a number covers the integers
    kind = " or ".join(_kind_word(member) for member in members)
    limits = []
    if spec.minimum is not None:
        limits.append(f"{'>' if spec.above else '>='} {spec.minimum:g}")
    if spec.maximum is not None:
        limits.append(f"{'<' if spec.below else '<='} {spec.maximum:g}")
    text = f"{kind} {' and '.join(limits)}".strip()
    if spec.choices is not None:
        text = f"one of {', '.join(sorted(spec.choices()))}"
    return text + (" (or null)" if NoneType in _members(annotation) else "")


def _in_range(value: Any, spec: Option) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    if spec.minimum is not None and (value <= spec.minimum if spec.above else value < spec.minimum):
        return False
    return spec.maximum is None or (value < spec.maximum if spec.below else value <= spec.maximum)


def check_value(key: str, value: Any, annotation: Any, spec: Option) -> Any:
    """`value` as the option's type (an integer given for a number becomes a float); a ValueError
    naming the key, the value, what is allowed and an example when it does not fit."""
    allowed = _accepts(value, annotation) and _in_range(value, spec)
    if allowed and spec.choices is not None and value is not None:
        allowed = value in set(spec.choices())
    if not allowed:
        raise ValueError(
            f"{key}={value!r} is not allowed: it must be {describe(annotation, spec)}. Set e.g. {key}={spec.example}"
        )
    if isinstance(value, int) and not isinstance(value, bool) and int not in _members(annotation):
        return float(value)
    return value


# -- reading a composed config --------------------------------------------------------------------

_UNRESOLVED = object()


def _read(node: DictConfig, key: str, raw: Mapping[str, Any]) -> Any:
    """The resolved value of `node[key]`. A `${hydra:...}` value is known only inside the Hydra job
    (the command line is checked before Hydra starts it): until then it stays as written."""
    written = raw.get(key)
    if isinstance(written, str) and written.startswith("${hydra:"):
        from omegaconf.errors import InterpolationResolutionError

        try:
            value = plain(node[key])
        except InterpolationResolutionError:
            return _UNRESOLVED
        return _UNRESOLVED if value is None else value
    return plain(node[key])


def _group_schema(annotation: Any) -> type | None:
    """The schema of a nested group (`task.generation`), which may be declared optional (null = off)."""
    members = [member for member in _members(annotation) if member is not NoneType]
    if len(members) == 1 and dataclasses.is_dataclass(members[0]):
        return members[0]
    return None


def _options_of(schema: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(schema) if "option" in f.metadata]


def _passthrough_field(schema: type) -> str | None:
    return next((f.name for f in dataclasses.fields(schema) if "passthrough" in f.metadata), None)


def _has_default(spec_field: dataclasses.Field) -> bool:
    return spec_field.default is not dataclasses.MISSING or spec_field.default_factory is not dataclasses.MISSING


def _default(spec_field: dataclasses.Field) -> Any:
    if spec_field.default_factory is not dataclasses.MISSING:
        return spec_field.default_factory()
    return spec_field.default


def unknown_key_error(prefix: str, key: str, known: Iterable[str], where: str = "") -> ValueError:
    """A misspelt key: name the closest declared one, and every one."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    guess = f"; did you mean {prefix}.{close[0]}?" if close else "."
    return ValueError(
        f"{prefix}.{key} is not an option of {prefix}{where}{guess} Options of {prefix}: {', '.join(known)} "
        f"(all listed by `python -m loldu_lightning.cli.options`)"
    )


def read_group(schema: type, node: Any, prefix: str, where: str = "", open_keys: bool = False) -> Any:
    """`node` (a config mapping, or None for every default) as `schema`, each value checked.

    A key the schema does not declare is refused unless `open_keys` (the top level, where experiments
    keep their own tables) or the schema passes it on (`passthrough_keys`).
    """
    if node is None:
        node = OmegaConf.create({})
    if not isinstance(node, (DictConfig, Mapping)):
        raise ValueError(
            f"{prefix}={node!r} is not allowed: it must be a mapping of options. Set e.g. {prefix}.<key>=..."
        )
    if not isinstance(node, DictConfig):
        node = OmegaConf.create(dict(node))
    raw = OmegaConf.to_container(node, resolve=False)
    hints = typing.get_type_hints(schema)
    values: dict[str, Any] = {}
    for spec_field in _options_of(schema):
        key = f"{prefix}.{spec_field.name}" if prefix else spec_field.name
        annotation = hints[spec_field.name]
        nested = _group_schema(annotation)
        if nested is not None:
            if raw.get(spec_field.name, ...) is None and NoneType in _members(annotation):
                values[spec_field.name] = None  # written as null: the group is off
            else:
                values[spec_field.name] = read_group(nested, node.get(spec_field.name), key, where)
            continue
        value = _read(node, spec_field.name, raw) if spec_field.name in node else _default(spec_field)
        if value is _UNRESOLVED:
            values[spec_field.name] = raw[spec_field.name]
            continue
        values[spec_field.name] = check_value(key, value, annotation, spec_field.metadata["option"])
    extra_name = _passthrough_field(schema)
    if extra_name is not None:
        values[extra_name] = {}
    options = schema(**values)
    declared = {f.name for f in _options_of(schema)}
    passed_on = schema.passthrough_keys(options) if hasattr(schema, "passthrough_keys") else set()
    for key in node:
        if key in declared:
            continue
        if key in passed_on:
            values[extra_name][key] = plain(node[key])
        elif not open_keys:
            if hasattr(schema, "passthrough_where"):
                where += schema.passthrough_where(options)
            raise unknown_key_error(prefix, str(key), declared | passed_on, where)
    return dataclasses.replace(options, **{extra_name: values[extra_name]}) if extra_name else options


def group_keys(cfg: DictConfig, prefix: str) -> tuple[set[str], set[str]] | None:
    """The keys the typed schema at `prefix` (e.g. `data`, `task.generation`, `adapter`) takes: its
    declared options and the keys it passes on (a torch optimizer's, Lightning's); None where keys
    are free (the top level, `logger`, `callbacks.extra`, experiments' own tables)."""
    head, *rest = prefix.split(".") if prefix else [""]
    family = OmegaConf.select(cfg, "task.family", default=None)
    if head == "adapter" and not rest:
        from ..adapters import ADAPTERS

        name = OmegaConf.select(cfg, "adapter.name", default=None)
        if name not in ADAPTERS:
            return None
        return {"name", *(f.name for f in dataclasses.fields(ADAPTERS[name].options_type))}, set()
    schema = {
        "task": TASK_SCHEMAS.get(family, TaskOptions),
        "data": DATA_SCHEMAS.get(family, DataOptions),
        "model": MODEL_SCHEMAS.get(family, ModelOptions),
        **COMMON_GROUPS,
        **FAMILY_GROUPS.get(family, {}),
    }.get(head)
    for part in rest:
        if schema is None:
            return None
        annotation = typing.get_type_hints(schema).get(part)
        schema = _group_schema(annotation) if annotation is not None else None
    if schema is None:
        return None
    declared = {f.name for f in _options_of(schema)}
    passed_on: set[str] = set()
    if hasattr(schema, "passthrough_keys"):
        try:
            options = read_group(schema, OmegaConf.select(cfg, prefix, default=None), prefix)
        except ValueError:
            options = schema()
        passed_on = schema.passthrough_keys(options) - declared
    return declared, passed_on


def parse_adapter_options(options: Mapping[str, Any]) -> Any:
    """The adapter's options dataclass, checked by the adapter's own type; no adapter is built."""
    from ..adapters import ADAPTERS
    from ..adapters.options import parse_options

    name = options.get("name")
    if name not in ADAPTERS:
        raise ValueError(f"adapter.name={name!r} is not allowed: it must be one of {', '.join(sorted(ADAPTERS))}.")
    return parse_options(
        ADAPTERS[name].options_type, {key: value for key, value in options.items() if key != "name"}, name
    )


def run_options(cfg: DictConfig | Mapping[str, Any]) -> RunOptions:
    """The composed config (or its plain conversion) as typed objects; the first value or key that does
    not fit is refused with a ValueError naming it. Reads only the config (paths, the hub and the model
    are preflight's)."""
    from ..cli.config_tree import register_value_resolvers
    from .adapter import adapter_options

    register_value_resolvers()
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    top = read_group(TopLevelOptions, cfg, "", open_keys=True)
    family_field = next(f for f in _options_of(TaskOptions) if f.name == "family")
    family = check_value("task.family", plain(cfg.task.get("family")), str, family_field.metadata["option"])
    where = f" for task.family={family}"
    task = read_group(TASK_SCHEMAS[family], cfg.task, "task", where)
    groups = {name: read_group(schema, cfg.get(name), name) for name, schema in COMMON_GROUPS.items()}
    data = read_group(DATA_SCHEMAS[family], cfg.get("data"), "data", where)
    family_groups = {
        name: read_group(schema, cfg.get(name), name, where) for name, schema in FAMILY_GROUPS.get(family, {}).items()
    }
    model = model_options(cfg.get("model"), family)
    adapter = adapter_options(cfg, model)
    parsed_adapter = parse_adapter_options(adapter)  # refuses a missing or unknown adapter.name first
    return RunOptions(
        seed=top.seed,
        ckpt_path=top.ckpt_path,
        output_dir=top.output_dir,
        task=task,
        data=data,
        model=model,
        **groups,
        adapter_name=adapter["name"],
        adapter=parsed_adapter,
        family_groups=family_groups,
    )


def model_options(node: DictConfig | Mapping[str, Any] | None, family: str = "glue") -> ModelOptions:
    """The `model` node (a composed config's, or a conf/model/<name>.yaml read on its own) as the
    family's model options; a key no model schema declares is refused, naming the closest one."""
    where = f" for task.family={family}" if family in MODEL_SCHEMAS else ""
    return read_group(MODEL_SCHEMAS.get(family, ModelOptions), node, "model", where)


def check_paths(options: RunOptions) -> None:
    """Refuse a path option that is set but missing (null means the option is not used)."""
    for prefix, group_options in (("data", options.data), *options.family_groups.items()):
        for spec_field in _options_of(type(group_options)):
            spec: Option = spec_field.metadata["option"]
            value = getattr(group_options, spec_field.name)
            if spec.path is None or value in (None, ""):
                continue
            key = f"{prefix}.{spec_field.name}"
            path = Path(str(value)).expanduser()
            if not (path.is_dir() if spec.path == "folder" else path.is_file()):
                found = (
                    f"{path} is a {'file' if path.is_file() else 'folder'}"
                    if path.exists()
                    else f"{path} does not exist"
                )
                raise FileNotFoundError(
                    f"{key}={value} is not a {spec.path}: {found}. Point {key} at {spec.holds}, e.g. {key}={spec.example}"
                )


# -- listing the options (--help, python -m loldu_lightning.cli.options, docs/options.md) -------------


@dataclass(frozen=True)
class OptionRow:
    key: str
    allowed: str
    default: str
    help: str
    example: str = ""  # a value to set it to (tests set every listed option)


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[OptionRow]
    note: str = ""


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_yaml(item)}" for key, item in value.items()) + "}"
    return str(value)


def _rows(schema: type, prefix: str, inherited: type | None = None) -> list[OptionRow]:
    hints = typing.get_type_hints(schema)
    skip = {f.name for f in dataclasses.fields(inherited)} if inherited else set()
    rows = []
    for spec_field in _options_of(schema):
        if spec_field.name in skip:
            continue
        key = f"{prefix}.{spec_field.name}" if prefix else spec_field.name
        annotation, spec = hints[spec_field.name], spec_field.metadata["option"]
        if _group_schema(annotation) is not None:
            rows += _rows(_group_schema(annotation), key)
            continue
        default = _yaml(_default(spec_field)) if _has_default(spec_field) else "(required)"
        rows.append(OptionRow(key, describe(annotation, spec), default, spec.help, spec.example))
    return rows


def sections() -> list[Section]:
    """Every typed option, grouped as a user meets them: top level, task and data per family, the rest."""
    result = [
        Section("top level", _rows(TopLevelOptions, ""), "other top-level keys are free for experiments' own tables")
    ]
    result.append(Section("task (every family)", _rows(TaskOptions, "task")))
    for family, schema in TASK_SCHEMAS.items():
        if schema is not TaskOptions:
            result.append(Section(f"task ({family})", _rows(schema, "task", TaskOptions)))
    result.append(Section("data (every family)", _rows(DataOptions, "data")))
    for family, schema in DATA_SCHEMAS.items():
        result.append(Section(f"data ({family})", _rows(schema, "data", DataOptions)))
    model_note = (
        "each conf/model/<name>.yaml sets its own values; a default applies where a model file leaves the key out"
    )
    result.append(Section("model (every family)", _rows(ModelOptions, "model"), model_note))
    for family, schema in MODEL_SCHEMAS.items():
        if schema is not ModelOptions:
            result.append(Section(f"model ({family})", _rows(schema, "model", ModelOptions)))
    for name, schema in COMMON_GROUPS.items():
        passthrough_name = _passthrough_field(schema)
        note = ""
        if passthrough_name is not None:
            note = next(f for f in dataclasses.fields(schema) if f.name == passthrough_name).metadata["passthrough"]
        result.append(Section(name, _rows(schema, name), note))
    for family, family_groups in FAMILY_GROUPS.items():
        for name, schema in family_groups.items():
            result.append(Section(f"{name} ({family})", _rows(schema, name)))
    return result


def adapter_sections() -> list[Section]:
    """Each adapter's options, typed by its own options dataclass (adapters/options.py), with the
    run's default: the value in the adapter's config file (conf/adapter/<name>.yaml) where it sets
    one, the dataclass default otherwise (a library default that differs is named beside it)."""
    import yaml

    from ..adapters import ADAPTERS
    from ..cli.config_tree import config_dir

    result = []
    for name, adapter_type in ADAPTERS.items():
        config_file = Path(config_dir()) / "adapter" / f"{name}.yaml"
        run_defaults = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
        rows = []
        for spec_field in dataclasses.fields(adapter_type.options_type):
            required = spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING
            library = "(required)" if required else _yaml(_default(spec_field))
            run = _yaml(run_defaults[spec_field.name]) if spec_field.name in run_defaults else library
            note = (
                ""
                if run == library or required
                else f"library default ({adapter_type.options_type.__name__}): `{library}`"
            )
            # an options type that declares its options' meaning and allowed names (LoLDUConfig) is listed with them
            choices = spec_field.metadata.get("choices")
            allowed = f"one of: {' | '.join(sorted(choices))}" if choices else str(spec_field.type)
            meaning = "; ".join(part for part in (spec_field.metadata.get("help", ""), note) if part)
            rows.append(OptionRow(f"adapter.{spec_field.name}", allowed, run, meaning))
        result.append(Section(f"adapter ({name})", rows))
    return result
