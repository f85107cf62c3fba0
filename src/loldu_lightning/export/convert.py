"""Adapter folders converted between the framework's native LoLDU format and PEFT's.

Both folders hold ``adapter_config.json`` + ``adapter_model.safetensors``; only names differ:

================================  ==============================================================
native (``loldu.save_adapter``)   PEFT (``PeftModel.save_pretrained`` of ``LoLDUPeftConfig``)
================================  ==============================================================
``<module>.z`` / ``.sigma`` /     ``base_model.model.<module>.loldu_adapter.z`` / ``.sigma`` /
``.c``                            ``.c``
``<module>.<factor>``             ``base_model.model.<module>.loldu_adapter.factor_storage.<factor>``
``modules_to_save.<head>.<key>``  ``base_model.model.<head>.<key>``
config fields, resolved module     ``peft_type: LOLDU``, the same options under PEFT's names,
list, fingerprints                 ``target_modules`` = the resolved list, the same fingerprints
================================  ==============================================================

The tensors are copied unchanged, so an adapter gives bit-identical outputs either way.
No base model is needed: loading checks the fingerprints against whatever model it is put on.
Both directions write the project's ``adapter_manifest.json`` (layout ``peft`` or ``loldu``) and
read the input folder's manifest (or, for a folder without one, its ``adapter_config.json``) first.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from loldu_lightning.loldu import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoLDUConfig, read_adapter_config
from loldu_lightning.loldu.adapter_io import FORMAT_VERSION, METHOD, MODULES_TO_SAVE_PREFIX
from loldu_lightning.loldu.manifest import AdapterManifest
from loldu_lightning.peft import LoLDUPeftConfig, loldu_peft_type

PEFT_PREFIX = "base_model.model."
ADAPTER_CONTAINER = "loldu_adapter."
# LoLDULinear keeps its frozen factors in its `factor_storage` submodule, hence the extra level.
FACTOR_CONTAINER = "factor_storage."
VECTOR_KEYS = ("z", "sigma", "c")


def native_to_peft(native_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the PEFT adapter folder equivalent to the native one in ``native_dir``."""
    document = read_adapter_config(native_dir)
    tensors = _load_tensors(native_dir)
    config = LoLDUConfig.from_dict({key: document[key] for key in LoLDUConfig.field_names() if key in document})
    modules = list(document["target_modules_resolved"])
    heads = list(document.get("modules_to_save") or [])

    converted: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        if key.startswith(MODULES_TO_SAVE_PREFIX):
            converted[PEFT_PREFIX + key.removeprefix(MODULES_TO_SAVE_PREFIX)] = tensor
            continue
        module, _, name = key.rpartition(".")
        if module not in modules:
            raise ValueError(f"{Path(native_dir) / ADAPTER_WEIGHTS_NAME}: tensor {key!r} belongs to no adapted module")
        inner = name if name in VECTOR_KEYS else FACTOR_CONTAINER + name
        converted[f"{PEFT_PREFIX}{module}.{ADAPTER_CONTAINER}{inner}"] = tensor

    peft_config = LoLDUPeftConfig.from_loldu_config(
        config,
        target_modules=modules,  # exactly the modules it was trained on (PEFT matches whole names too)
        exclude_modules=None,
        modules_to_save=heads or None,
        fingerprints=document["fingerprints"],
        base_model_name_or_path=document.get("base_model_name"),
        revision=document.get("base_model_revision"),
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(out_dir))
    save_file(converted, str(out_dir / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    AdapterManifest(METHOD, "peft", document.get("base_model_name")).write(out_dir)
    return out_dir


def peft_to_native(peft_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the native adapter folder equivalent to the PEFT one in ``peft_dir``."""
    document = _read_peft_config(peft_dir)
    tensors = _load_tensors(peft_dir)
    fingerprints: dict[str, Any] = document["fingerprints"]
    modules = list(fingerprints)
    heads = list(document.get("modules_to_save") or [])
    # Read through LoLDUPeftConfig so PEFT's conventions (init_weights True/False, the older
    # init_loldu_weights) resolve exactly as they do when PEFT loads the folder.
    peft_fields = {field.name for field in dataclasses.fields(LoLDUPeftConfig)} - {"target_modules", "exclude_modules"}
    peft_config = LoLDUPeftConfig(**{key: value for key, value in document.items() if key in peft_fields})
    config = dataclasses.replace(peft_config.to_loldu_config(), target_modules=tuple(modules), exclude_modules=None)

    converted: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        converted[_native_key(key, modules, heads, peft_dir)] = tensor
    missing = [f"{module}.{name}" for module in modules for name in VECTOR_KEYS if f"{module}.{name}" not in converted]
    if missing:
        raise ValueError(f"{Path(peft_dir) / ADAPTER_WEIGHTS_NAME} lacks {missing[:4]}; it does not match its config")

    native = {"method": METHOD, "format_version": FORMAT_VERSION, **config.to_dict()}
    native.update(
        target_modules_resolved=modules,
        base_model_name=document.get("base_model_name_or_path"),
        base_model_revision=document.get("revision"),
        fingerprints=fingerprints,
        modules_to_save=heads,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(converted, str(out_dir / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt", "method": METHOD})
    (out_dir / ADAPTER_CONFIG_NAME).write_text(json.dumps(native, indent=2) + "\n", encoding="utf-8")
    AdapterManifest(METHOD, "loldu", native["base_model_name"]).write(out_dir)
    return out_dir


def _native_key(key: str, modules: list[str], heads: list[str], folder: str | Path) -> str:
    if not key.startswith(PEFT_PREFIX):
        raise ValueError(f"{Path(folder) / ADAPTER_WEIGHTS_NAME}: key {key!r} does not start with {PEFT_PREFIX!r}")
    name = key.removeprefix(PEFT_PREFIX)
    module, found, inner = name.partition("." + ADAPTER_CONTAINER)
    if found:
        if module not in modules:
            raise ValueError(f"{Path(folder) / ADAPTER_WEIGHTS_NAME}: key {key!r} names a module without fingerprint")
        return f"{module}.{inner.removeprefix(FACTOR_CONTAINER)}"
    head = next((head for head in heads if name.startswith(head + ".")), None)
    if head is None:
        raise ValueError(
            f"{Path(folder) / ADAPTER_WEIGHTS_NAME}: key {key!r} is neither a LoLDU tensor nor part of modules_to_save "
            f"{heads}; the native format has no place for it"
        )
    return MODULES_TO_SAVE_PREFIX + name


def _read_peft_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"PEFT adapter config not found: {path}")
    manifest = AdapterManifest.read(folder)
    if (manifest.adapter, manifest.layout) != (METHOD, "peft"):
        raise ValueError(
            f"{folder} holds a {manifest.adapter!r} adapter in the {manifest.layout!r} layout; this is not a LoLDU "
            "adapter in PEFT's layout"
        )
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("peft_type") != loldu_peft_type().value:
        raise ValueError(
            f"{path}: peft_type is {document.get('peft_type')!r}, not 'LOLDU'; its manifest says otherwise"
        )
    if not document.get("fingerprints"):
        raise ValueError(
            f"{path}: no fingerprints; the native format identifies the base model by them. Save the adapter with "
            "loldu_lightning.peft (PeftModel.save_pretrained records them)"
        )
    return document


def _load_tensors(folder: str | Path) -> dict[str, Tensor]:
    path = Path(folder) / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"adapter weights not found: {path}")
    return load_file(str(path))
