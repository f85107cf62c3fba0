"""The typed option groups of a run, each option declared once (declare.option): its type, default,
meaning and range. Pure Python: the data, model and evaluation code import these types without the
config tree; builders/schema.py reads a composed config into them, conf/schema/ is generated from them,
and `--help`, `python -m loldu_lightning.cli.options` and docs/options.md list them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .declare import group, option, passthrough, registry, required

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
        choices=registry("..data.instruct", "PROMPT_FORMATS"),
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

    name_or_path: str = required(
        "the model: a local folder, a hub id, a packaged model (minilm, smollm2, all-mpnet-base-v2) or a tiny one's name",
        "/path/to/roberta-base",
    )
    tokenizer: str | None = option(
        None,
        "the tokenizer's folder, hub id or packaged name, or byte-level; null = the model's own",
        "minilm",
        listed=False,  # the diffusion pipelines carry their own: the other model files list it
    )
    gguf_file: str | None = option(
        None,
        "a GGUF file in the model folder, dequantised to float by transformers (needs the gguf package)",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        listed=False,
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
        listed=False,
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
        listed=False,
    )

    @classmethod
    def from_saved(cls, model: Mapping[str, Any]) -> ModelOptions:
        """A saved run's `model` node (plain values), read without the config tree: keys this type does
        not declare (a diffusion model's) are left out, missing ones take their defaults."""
        return cls(**{f.name: model[f.name] for f in fields(cls) if f.name in model})


@dataclass(frozen=True)
class DiffusionModelOptions(ModelOptions):
    """A Stable Diffusion pipeline's own options (sd-v1-5.yaml and tiny-sd.yaml list them)."""

    vae_name_or_path: str | None = option(
        None,
        "a separate AutoencoderKL folder (the paper's sd-vae-ft-mse); null = the pipeline's vae/",
        "/path/to/vae",
        listed=False,
    )
    resolution: int = option(
        512, "the model's image size in pixels (data.resolution follows it)", "512", minimum=1, listed=False
    )
    gradient_checkpointing: bool = option(
        False, "recompute activations in the backward pass (less memory, slower)", "true", listed=False
    )
    train_text_encoder: bool = option(
        False,
        "the text encoder joins the adapted model (add its q_proj,k_proj,v_proj,out_proj to the targets)",
        "true",
        listed=False,
    )


def _optimizer_class(name: str) -> type:
    from ..tasks.base import OPTIMIZERS

    return OPTIMIZERS[name]


@dataclass(frozen=True)
class OptimizerOptions:
    name: str = option("adamw", "torch optimizer", "adamw", choices=registry("..tasks.base", "OPTIMIZERS"))
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
        choices=lambda: [*registry("..tasks.base", "SCHEDULES")(), "none"],
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
        choices=registry("..models.diffusion", "SAMPLERS"),
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
