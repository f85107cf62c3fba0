"""``adapter_manifest.json``: what an adapter folder holds, in one form for every adapter the project saves.

Each method keeps its own files (LoLDU's ``adapter_config.json`` + ``adapter_model.safetensors``,
PEFT's ``save_pretrained`` output, the parameter subsets of full/bitfit/linear_probe); the manifest
beside them says, in the same four keys for all of them, which adapter loads the folder, which
layout its files follow and which base model it was trained on:

    {"manifest_version": 1, "adapter": "lora", "layout": "peft", "base_model_name_or_path": "..."}

``AdapterManifest.read`` is the one reader. Folders without a manifest (written before it existed,
or by PEFT's own ``save_pretrained``) are described from their ``adapter_config.json``, whose key
says the layout: ``method`` (LoLDU's native files), ``peft_type`` (PEFT's) or ``adapter_type`` (the
parameter subsets). This module uses the standard library only, so every layer can import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MANIFEST_NAME = "adapter_manifest.json"
MANIFEST_VERSION = 1
CONFIG_NAME = "adapter_config.json"

# layout -> what the folder's other files are
LAYOUTS = {
    "loldu": "adapter_config.json + adapter_model.safetensors written by loldu.save_adapter",
    "peft": "adapter_config.json + adapter_model.safetensors written by PEFT's save_pretrained",
    "parameters": "adapter_model.safetensors holding the trained base parameters (full, bitfit, linear_probe)",
}
# The key of adapter_config.json that named the adapter before the manifest existed, per layout.
LEGACY_KEYS = {"method": "loldu", "peft_type": "peft", "adapter_type": "parameters"}
# Where each layout's adapter_config.json kept the base model's name.
_LEGACY_BASE_MODEL_KEYS = {
    "loldu": "base_model_name",
    "peft": "base_model_name_or_path",
    "parameters": "base_model_name_or_path",
}


@dataclass(frozen=True)
class AdapterManifest:
    """One adapter folder: ``adapter`` (the registry name that loads it, e.g. ``loldu``, ``lora``,
    ``bitfit``), ``layout`` (a key of ``LAYOUTS``) and the base model it was trained on."""

    adapter: str
    layout: str
    base_model_name_or_path: str | None = None
    manifest_version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, str) or not self.adapter:
            raise ValueError(f"adapter manifest: 'adapter' must be a non-empty name, got {self.adapter!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"adapter manifest: layout {self.layout!r} is not one of {sorted(LAYOUTS)}")
        if self.manifest_version != MANIFEST_VERSION:
            raise ValueError(
                f"adapter manifest version {self.manifest_version!r} is not supported (this version reads "
                f"{MANIFEST_VERSION}); upgrade loldu-lightning to load this folder"
            )

    def write(self, directory: str | Path) -> Path:
        """Write ``adapter_manifest.json`` into ``directory`` (created if needed); return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MANIFEST_NAME
        document = {"manifest_version": self.manifest_version, **asdict(self)}
        path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> AdapterManifest:
        """The manifest of an adapter folder; for a folder without one, read from its ``adapter_config.json``."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter folder not found: {directory}")
        path = directory / MANIFEST_NAME
        if path.is_file():
            return cls._from_document(_read_json(path), path)
        legacy = directory / CONFIG_NAME
        if legacy.is_file():
            return _from_adapter_config(_read_json(legacy), legacy)
        raise FileNotFoundError(
            f"{directory} holds neither {MANIFEST_NAME} nor {CONFIG_NAME}: it is not an adapter folder "
            "(training writes them to <run>/adapter/best and <run>/adapter/last)"
        )

    @classmethod
    def _from_document(cls, document: Any, path: Path) -> AdapterManifest:
        if not isinstance(document, dict):
            raise ValueError(f"{path}: expected a JSON object, found {type(document).__name__}")
        missing = [key for key in ("manifest_version", "adapter", "layout") if key not in document]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it is not an adapter manifest")
        try:
            manifest = cls(
                adapter=document["adapter"],
                layout=document["layout"],
                base_model_name_or_path=document.get("base_model_name_or_path"),
                manifest_version=document["manifest_version"],
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        unknown = sorted(set(document) - {field.name for field in fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown} for manifest version {MANIFEST_VERSION}")
        return manifest


def is_adapter_folder(directory: str | Path) -> bool:
    """Whether ``directory`` holds a manifest, or an ``adapter_config.json`` that stands for one."""
    directory = Path(directory)
    return (directory / MANIFEST_NAME).is_file() or (directory / CONFIG_NAME).is_file()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def _from_adapter_config(document: Any, path: Path) -> AdapterManifest:
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(document).__name__}")
    for key, layout in LEGACY_KEYS.items():
        name = document.get(key)
        if name:
            # PEFT writes its method in capitals (LORA, LOLDU); the registry names are lower case.
            return AdapterManifest(
                adapter=str(name).lower(),
                layout=layout,
                base_model_name_or_path=document.get(_LEGACY_BASE_MODEL_KEYS[layout]),
            )
    raise ValueError(
        f"{path} names no adapter (none of the keys {sorted(LEGACY_KEYS)}) and there is no {MANIFEST_NAME} "
        "beside it; is it an adapter folder?"
    )
