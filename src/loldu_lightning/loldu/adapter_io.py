"""LoLDU adapter files: ``adapter_model.safetensors`` + ``adapter_config.json`` (+ ``adapter_manifest.json``).

The safetensors file holds, per adapted module ``<name>``, the tensors ``<name>.z``,
``<name>.sigma`` and ``<name>.c`` (plus the frozen factors with ``save_factors``: ``<name>.lower/.upper/.perm``, or
``.packed/.perm`` and ``.diag`` for the packed storages), and
the full state of each module in ``modules_to_save`` under ``modules_to_save.<module>.<key>``.
The JSON is data only (never a class name): the config fields (``decomposition`` among them; files
written before it existed are ``lu``), the resolved module list, the base model name and, per
module, a fingerprint of the base weight and of the pivot order, so loading into the wrong base
model (or on hardware that pivots differently) is refused with a clear message. The manifest
(``manifest.py``) is the file every adapter folder of the project carries; for these folders it
says ``adapter: loldu, layout: loldu``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .base_layers import out_in_weight
from .config import LoLDUConfig
from .fingerprint import tensor_sha256, weight_fingerprint
from .layer import LoLDULinear
from .manifest import AdapterManifest
from .model_ops import base_weights, loldu_modules, restore_base_weights, unload, wrap_modules

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
METHOD = "loldu"
FORMAT_VERSION = 1
MODULES_TO_SAVE_PREFIX = "modules_to_save."
_VECTOR_KEYS = ("z", "sigma", "c")


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors keyed ``<module>.z/.sigma/.c`` (and the factors when the config says so)."""
    state: dict[str, Tensor] = {}
    for name, layer in _adapted(model, "build an adapter state dict"):
        tensors = {key: getattr(layer, key) for key in _VECTOR_KEYS}
        if layer.loldu_config.save_factors:
            tensors.update(layer.factor_tensors())
        for key, tensor in tensors.items():
            state[f"{name}.{key}"] = tensor.detach().cpu().contiguous()
    return state


def save_adapter(
    model: nn.Module, directory: str | Path, base_model_name: str | None = None, modules_to_save: Iterable[str] = ()
) -> Path:
    """Write ``adapter_model.safetensors``, ``adapter_config.json`` and ``adapter_manifest.json`` (only those)
    into ``directory``.

    ``modules_to_save``: names of extra modules (e.g. ``"classifier"``) stored in full. The base
    weights must be unmerged, since their fingerprints identify the base model.
    """
    layers = _adapted(model, "save an adapter")
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise ValueError(
            f"LoLDU: cannot save while adapters are merged (e.g. {merged[0]!r}); call unmerge(model) first"
        )
    config = _shared_config(layers)
    modules_to_save = list(modules_to_save)

    tensors = adapter_state_dict(model)
    for module_name in modules_to_save:
        module = _get_module(model, module_name, "modules_to_save")
        for key, value in module.state_dict().items():
            # A copy: safetensors refuses tensors that share memory (tied weights).
            tensors[f"{MODULES_TO_SAVE_PREFIX}{module_name}.{key}"] = value.detach().to("cpu", copy=True).contiguous()

    document: dict[str, Any] = {"method": METHOD, "format_version": FORMAT_VERSION, **config.to_dict()}
    document.update(
        target_modules_resolved=[name for name, _ in layers],
        base_model_name=base_model_name if base_model_name is not None else _model_name(model),
        base_model_revision=None,
        fingerprints={
            name: {
                "weight": layer.base_fingerprint(),
                "perm": tensor_sha256(layer.perm),
                "shape": [layer.out_features, layer.in_features],
            }
            for name, layer in layers
        },
        modules_to_save=modules_to_save,
        zero_pivots={name: layer.zero_pivots for name, layer in layers},
    )

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt", "method": METHOD})
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    AdapterManifest(METHOD, "loldu", document["base_model_name"]).write(directory)
    return directory


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of an adapter directory, checked to be a LoLDU adapter."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"LoLDU adapter directory not found: {directory}")
    if not path.is_file():
        raise FileNotFoundError(f"LoLDU adapter config not found: {path} (expected next to {ADAPTER_WEIGHTS_NAME})")
    manifest = AdapterManifest.read(directory)
    if (manifest.adapter, manifest.layout) != (METHOD, "loldu"):
        raise ValueError(f"{directory} holds {_described(manifest)}; this is not a LoLDU adapter in the native layout")
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {document.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    return document


def load_adapter(model: nn.Module, directory: str | Path, decomposition: str | None = None) -> nn.Module:
    """Inject LoLDU into ``model`` as saved in ``directory`` and load the adapter's values.

    ``decomposition``: the one the caller expects (None: whatever the file says). The trained z
    belongs to the decomposition it was trained on, so a different one is refused, never converted.
    Every base weight is checked against its fingerprint before anything changes; the pivot order
    is checked after the decomposition (skipped when the factors themselves were saved). On any
    mismatch the model is left without adapters and a ValueError names the module.
    """
    document = read_adapter_config(directory)
    weights_path = Path(directory) / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"LoLDU adapter weights not found: {weights_path}")
    config = LoLDUConfig.from_dict({key: document[key] for key in LoLDUConfig.field_names() if key in document})
    if decomposition is not None and decomposition != config.decomposition:
        raise ValueError(
            f"{Path(directory) / ADAPTER_CONFIG_NAME}: the adapter was trained with decomposition "
            f"{config.decomposition!r}, but decomposition {decomposition!r} was asked for; its z values are the "
            f"diagonal of that decomposition and mean nothing in another. Load it with decomposition="
            f"{config.decomposition!r} (adapter.decomposition={config.decomposition})."
        )
    names: list[str] = list(document["target_modules_resolved"])
    fingerprints: dict[str, dict[str, Any]] = document["fingerprints"]
    tensors = load_file(str(weights_path))

    for name in names:
        module = _get_module(model, name, "the adapter's target_modules_resolved")
        if name not in fingerprints:
            raise ValueError(
                f"{Path(directory) / ADAPTER_CONFIG_NAME}: no fingerprint for module {name!r}; the file is incomplete"
            )
        _check_weight(name, out_in_weight(module), fingerprints[name])
    requires_grad = {parameter: parameter.requires_grad for parameter in model.parameters()}
    # storage "lu" releases W0 from the wrapped layers: keep the originals to put back on failure.
    originals = base_weights(model, names)
    wrap_modules(model, config, names)
    try:
        for name, layer in loldu_modules(model):
            _load_layer(name, layer, tensors, fingerprints[name], config.save_factors)
        _load_modules_to_save(model, document.get("modules_to_save", []), tensors)
    except Exception:
        unload(model, merge=False)
        restore_base_weights(model, originals)
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)
        raise
    return model


def _described(manifest: AdapterManifest) -> str:
    if manifest.adapter == METHOD and manifest.layout == "peft":
        # A folder from `python -m loldu_lightning.export peft` or PeftModel.save_pretrained.
        return (
            "a LoLDU adapter in PEFT's layout (load it with PeftModel.from_pretrained after importing "
            "loldu_lightning.peft, or convert it with `python -m loldu_lightning.export native`)"
        )
    return f"a {manifest.adapter!r} adapter ({manifest.layout} layout)"


def _adapted(model: nn.Module, action: str) -> list[tuple[str, LoLDULinear]]:
    layers = list(loldu_modules(model))
    if not layers:
        raise ValueError(f"LoLDU: cannot {action}: the model has no LoLDU layers")
    return layers


def _shared_config(layers: list[tuple[str, LoLDULinear]]) -> LoLDUConfig:
    config = layers[0][1].loldu_config
    different = [name for name, layer in layers if layer.loldu_config != config]
    if different:
        raise ValueError(
            f"LoLDU: layers were injected with different configs (e.g. {different[0]!r}); one adapter file holds one config"
        )
    return config


def _model_name(model: nn.Module) -> str | None:
    """transformers models remember where they were loaded from; empty means built from a config."""
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    return name or None


def _get_module(model: nn.Module, name: str, source: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"LoLDU: module {name!r} named in {source} does not exist in this {type(model).__name__}"
        ) from None


def _mismatch(name: str, what: str, expected: object, found: object) -> ValueError:
    return ValueError(
        f"LoLDU adapter does not fit this base model: module {name!r} {what} differs (expected {expected}, found {found}). "
        "The adapter was trained on a different base model, or, for the pivot order, the LU decomposition pivoted "
        "differently on this hardware/library. Load the exact base model it was trained on, or save the adapter "
        "with save_factors=True so the factors travel with it."
    )


def _check_weight(name: str, weight: Tensor, fingerprint: dict[str, Any]) -> None:
    shape = list(weight.shape)
    if shape != list(fingerprint["shape"]):
        raise _mismatch(name, "weight shape (out x in)", fingerprint["shape"], shape)
    found = weight_fingerprint(weight)
    if found != fingerprint["weight"]:
        raise _mismatch(name, "weight sha256", fingerprint["weight"], found)


def _load_layer(
    name: str, layer: LoLDULinear, tensors: dict[str, Tensor], fingerprint: dict[str, Any], with_factors: bool
) -> None:
    targets = {key: getattr(layer, key) for key in _VECTOR_KEYS}
    if with_factors:
        targets.update(layer.factor_tensors())
    keys = tuple(targets)
    missing = [f"{name}.{key}" for key in keys if f"{name}.{key}" not in tensors]
    if missing:
        raise ValueError(f"LoLDU adapter file lacks {missing}; it does not match its adapter_config.json")
    if not with_factors:
        found = tensor_sha256(layer.perm)
        if found != fingerprint["perm"]:
            raise _mismatch(name, "pivot order (perm sha256)", fingerprint["perm"], found)
    with torch.no_grad():
        for key, target in targets.items():
            value = tensors[f"{name}.{key}"]
            if key == "sigma" and value.dim() == 0:  # written before sigma was a length-1 vector
                value = value.reshape(1)
            if value.shape != target.shape:
                raise ValueError(
                    f"LoLDU adapter tensor {name}.{key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(value.to(device=target.device, dtype=target.dtype))
        layer.refresh_derived_buffers()


def _load_modules_to_save(model: nn.Module, names: list[str], tensors: dict[str, Tensor]) -> None:
    for module_name in names:
        module = _get_module(model, module_name, "modules_to_save")
        prefix = f"{MODULES_TO_SAVE_PREFIX}{module_name}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        module.load_state_dict(state, strict=True)
