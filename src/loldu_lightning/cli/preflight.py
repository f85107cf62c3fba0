"""Checks against the world outside the config, made before any weights or data load.

- Paths: the files and folders the config names exist (the path options of options/).
- The hub: a model or dataset named by a hub id needs the Hugging Face hub or a copy in the local
  cache. When the hub cannot be reached (HF_HUB_OFFLINE=1, or no connection within a few seconds)
  and there is no cached copy, the run stops at once with the offline choices; with a cached copy,
  the libraries are put in offline mode so that they read the cache without retrying the network.
- The rank: LoLDU and PiSSA take at most min(out, in) components of each matrix. The matrix sizes
  are read from the model's config (a local config.json, or a tiny model's fields) by building
  the model on the meta device, which allocates no memory and reads no weights.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..models import BYTE_TOKENIZER, MINILM, SMOLLM2
from ..options import ModelOptions
from .errors import UserError

CONNECT_TIMEOUT_S = 3.0
# the families whose model comes from transformers, with the class each one trains
_AUTO_CLASSES = {
    "glue": "AutoModelForSequenceClassification",
    "vision": "AutoModelForImageClassification",
    "instruct": "AutoModelForCausalLM",
}
# adapters whose rank counts components of each matrix (at most min(out, in))
_RANK_BOUNDED = frozenset({"loldu", "pissa"})
# model configs whose matrices take the paper's GLUE/ViT rank of 768 (named in the rank message)
_RANK_768_MODELS = {
    "roberta-base": "the paper's model; offline: model.name_or_path=/path/to/roberta-base",
    "mpnet-base": "768 x 768, installable from PyPI for offline use",
}


def _packaged_names() -> set[str]:
    names = {MINILM, SMOLLM2}
    try:
        from ..models.packages import PACKAGED_MODELS
    except ImportError:  # an install without split-zip models
        return names
    return names | set(PACKAGED_MODELS)


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (absolute, ./, ~, deeper) is a path on disk."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


@functools.cache
def hub_unreachable_reason() -> str | None:
    """Why the hub cannot be used (None when it answers), decided once per process without retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        return "HF_HUB_OFFLINE=1 is set"
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if not _answers(host, port, CONNECT_TIMEOUT_S):
        return f"{host} did not answer within {CONNECT_TIMEOUT_S:g} s"
    return None


def _answers(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds, name lookup included.

    The lookup runs in a daemon thread because getaddrinfo takes no timeout (an unreachable DNS
    server can hold it for many seconds) and a daemon thread never delays the process's exit.
    """
    import threading

    addresses: list = []

    def resolve() -> None:
        try:
            addresses.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError:
            pass

    lookup = threading.Thread(target=resolve, daemon=True)
    lookup.start()
    lookup.join(timeout)
    for family, kind, protocol, _, address in addresses:
        try:
            with socket.socket(family, kind, protocol) as connection:
                connection.settimeout(timeout)
                connection.connect(address)
                return True
        except OSError:
            continue
    return False


def _go_offline() -> None:
    """Make transformers, huggingface_hub and datasets read their caches only (no retry loop)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # the libraries read the variables when first imported; already imported ones keep a module constant
    for module_name in ("huggingface_hub.constants", "datasets.config"):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, "HF_HUB_OFFLINE"):
            module.HF_HUB_OFFLINE = True


def _model_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _dataset_cached(repo_ids: tuple[str, ...]) -> bool:
    """A hub dataset downloaded before: its files in the hub cache or its tables in the datasets cache."""
    from huggingface_hub import constants

    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets")).expanduser()
    for repo_id in repo_ids:
        if (Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}").is_dir():
            return True
        if (datasets_cache / repo_id.replace("/", "___")).is_dir():
            return True
    return False


def _hub_model_ids(model: ModelOptions) -> list[tuple[str, str]]:
    """(config key, hub id) of every model file source named by a hub id; raises for missing local paths."""
    if model.tiny:
        sources = [("model.tokenizer", model.tokenizer)]
    else:
        sources = [("model.name_or_path", model.name_or_path), ("model.tokenizer", model.tokenizer)]
    hub = []
    for key, name in sources:
        if not name or name == BYTE_TOKENIZER or name in _packaged_names():
            continue
        name = str(name)
        if Path(name).expanduser().exists():
            continue
        if _looks_like_path(name):
            raise FileNotFoundError(
                f"{key}={name} does not exist. Point {key} at a model folder (config.json, weights and "
                "tokenizer files), or name a Hugging Face hub id (e.g. FacebookAI/roberta-base) where the hub is reachable."
            )
        hub.append((key, name))
    return hub


def _hub_datasets(cfg: Mapping) -> list[tuple[str, tuple[str, ...]]]:
    """(what, hub ids) of the datasets this run would read from the hub."""
    family, data = cfg["task"]["family"], cfg.get("data") or {}
    if family == "glue" and data.get("data_dir") in (None, ""):
        return [(f"the `glue/{cfg['task']['name']}` dataset", ("glue", "nyu-mll/glue"))]
    if family == "instruct" and data.get("path") in (None, "") and data.get("hf_dataset"):
        return [(f"the `{data['hf_dataset']}` dataset", (str(data["hf_dataset"]),))]
    return []


def _offline_choices(cfg: Mapping, model_name: str | None, needs_data: bool) -> str:
    family, name = cfg["task"]["family"], cfg["task"]["name"]
    choices = []
    if model_name is not None:
        packaged = f"model={MINILM} (installed with the package) or " if family == "glue" else ""
        folder = model_name.rsplit("/", 1)[-1] or "model"
        choices.append(f"{packaged}model.name_or_path=/path/to/{folder} (a downloaded copy)")
    if needs_data:
        if family == "glue":
            from ..data.glue import glue_task

            directory = glue_task(name).directory
            choices.append(
                f"data.data_dir=/path/to/glue/{directory} (the GLUE TSV files) or data.glue_root=/path/to/glue"
            )
        elif family == "instruct":
            choices.append("data.path=/path/to/alpaca_data.json (an Alpaca-style JSON or JSONL file)")
    return "; ".join(choices)


def check_hub(cfg: Mapping, model: ModelOptions) -> None:
    """Fail at once, with the offline choices, when a hub model or dataset is needed and cannot be had."""
    models = _hub_model_ids(model) if cfg["task"]["family"] != "diffusion" else []
    datasets = _hub_datasets(cfg)
    if not models and not datasets:
        return
    reason = hub_unreachable_reason()
    if reason is None:
        return
    missing_models = [(key, name) for key, name in models if not _model_cached(name)]
    missing_data = [(what, ids) for what, ids in datasets if not _dataset_cached(ids)]
    if not missing_models and not missing_data:
        _go_offline()  # everything is cached: read it without asking the network
        return
    needed = [f"{key}={name}" for key, name in missing_models] + [what for what, _ in missing_data]
    raise UserError(
        f"the Hugging Face hub is not reachable ({reason}) and {' and '.join(needed)} "
        f"{'is' if len(needed) == 1 else 'are'} not in the local cache. Offline choices: "
        f"{_offline_choices(cfg, missing_models[0][1] if missing_models else None, bool(missing_data))}."
    )


def _model_config(model: ModelOptions):
    """The model's transformers config, read without weights; None when that is not cheap (GGUF, hub, zip)."""
    from transformers import AutoConfig

    tiny = dict(model.tiny or {})
    if tiny:
        return AutoConfig.for_model(tiny.pop("model_type"), **tiny)
    name = str(model.name_or_path or "")
    if model.gguf_file or name in _packaged_names() - {MINILM}:
        return None  # the config sits in a GGUF file or a zip that is unpacked on first use
    if name == MINILM:
        from ..models import minilm_path

        folder = Path(minilm_path())
    else:
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            return _cached_hub_config(name)
    return AutoConfig.from_pretrained(folder)


def _cached_hub_config(name: str):
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    path = try_to_load_from_cache(name, "config.json") if not _looks_like_path(name) else None
    if isinstance(path, str):
        return AutoConfig.from_pretrained(Path(path).parent)
    if hub_unreachable_reason() is None and not _looks_like_path(name):
        return AutoConfig.from_pretrained(name)  # one small file from the hub
    return None


def _target_shapes(config, family: str, targets: Any, excludes: Any) -> dict[str, tuple[int, int]]:
    """{module name: (out, in)} of the modules the adapter targets, from a weightless meta-device model."""
    import torch
    import transformers

    from ..loldu.base_layers import out_in_weight
    from ..loldu.targeting import resolve_target_modules

    auto_class = getattr(transformers, _AUTO_CLASSES[family])
    with torch.device("meta"):
        model = auto_class.from_config(config)
    names = resolve_target_modules(model, targets, excludes)
    modules = dict(model.named_modules())
    return {name: tuple(out_in_weight(modules[name]).shape) for name in names}


def check_rank(cfg: Mapping, adapter_cfg: Mapping, model: ModelOptions) -> None:
    """Refuse an integer rank larger than a targeted matrix allows, naming its sizes and the fixes."""
    rank, family = adapter_cfg.get("rank"), cfg["task"]["family"]
    if (
        adapter_cfg.get("name") not in _RANK_BOUNDED
        or family not in _AUTO_CLASSES
        or isinstance(rank, bool)
        or not isinstance(rank, int)
    ):
        return
    config = _model_config(model)
    if config is None:
        return
    shapes = _target_shapes(config, family, adapter_cfg.get("target_modules"), adapter_cfg.get("exclude_modules"))
    too_small = {name: shape for name, shape in shapes.items() if min(shape) < rank}
    if not too_small:
        return
    sizes = sorted({f"{m} x {n}" for m, n in too_small.values()})
    largest = min(min(shape) for shape in too_small.values())
    model_name = model.name_or_path or "this model"
    examples = ", ".join(sorted({name.rsplit(".", 1)[-1] for name in too_small}))
    alternatives = [f"model={name} ({why})" for name, why in _RANK_768_MODELS.items() if _model_config_exists(name)]
    paper = (
        f", or a model whose matrices take rank {rank}: {' or '.join(alternatives)}"
        if rank <= 768 and alternatives
        else ""
    )
    raise UserError(
        f"adapter.rank={rank} does not fit {model_name}: its {len(too_small)} targeted matrices ({examples}) are "
        f"{', '.join(sizes)}, so they take at most rank {largest}. Use adapter.rank=full (min(out, in) of each "
        f"matrix) or adapter.rank={largest}{paper}."
    )


def _model_config_exists(name: str) -> bool:
    from .config import config_dir

    return (Path(config_dir()) / "model" / f"{name}.yaml").is_file()


def check_model_files(model: ModelOptions, family: str) -> None:
    """The model's package is installed (model=smollm2-135m) and a local model folder holds its
    weights: found now, not after the run folder, the data and the tokenizer are set up."""
    name = str(model.name_or_path or "")
    # split-zip packages are unpacked on first use (models.packaged_model_path checks their parts)
    if model.tiny or family not in _AUTO_CLASSES or not name or name in _packaged_names() - {SMOLLM2}:
        return
    from ..models import check_model_files as check_local_model

    check_local_model(model)


def check_instruct_data(cfg: Mapping) -> None:
    """The instruction records file parses and every record has the Alpaca fields (read once, quickly)."""
    data = cfg.get("data") or {}
    if cfg["task"]["family"] == "instruct" and data.get("path") not in (None, ""):
        from ..data.instruct import read_records

        read_records(data["path"])


# the Trainer arguments that choose the hardware; Lightning checks them together before anything runs
_HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def check_trainer(trainer_kwargs: Mapping[str, Any]) -> None:
    """Lightning's own check of the hardware options (`trainer.devices=0`, a GPU strategy on a CPU
    machine), as one line naming the key instead of a MisconfigurationException traceback later."""
    import re

    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    hardware = {key: trainer_kwargs[key] for key in _HARDWARE_KEYS if key in trainer_kwargs}
    if not isinstance(hardware.get("strategy", "auto"), str):
        return  # a strategy object: Lightning checks it when the Trainer is built
    try:
        _AcceleratorConnector(**hardware)
    except MisconfigurationException as error:
        message = " ".join(str(error).split())
        named = re.findall(r"Trainer\((\w+)=([^)]*)\)", message)
        keys = ", ".join(f"trainer.{key}={value}" for key, value in named) or ", ".join(
            f"trainer.{key}={value}" for key, value in hardware.items()
        )
        raise UserError(
            f"{keys}: {message.rstrip('.')}. Change the trainer option it names (trainer.* here is "
            "lightning.Trainer's argument of the same name)."
        ) from None


def preflight(cfg, options=None) -> None:
    """Everything that can be known about a run's inputs before loading them: the paths it names,
    the hub, the model's files, the instruction data, Lightning's hardware options, then the rank.
    `cfg` is a config that validate_config accepted and `options` what it returned (read here when
    not given)."""
    from ..builders.adapter import adapter_options
    from ..builders.schema import check_paths, run_options
    from ..builders.trainer import trainer_options

    options = options if options is not None else run_options(cfg)
    check_paths(options)
    check_hub(cfg, options.model)
    check_model_files(options.model, options.task.family)
    check_instruct_data(cfg)
    check_trainer(trainer_options(options.trainer))
    check_rank(cfg, adapter_options(cfg, options.model), options.model)
