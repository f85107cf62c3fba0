"""adapter_manifest.json: one description of every adapter folder, and the older forms it replaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loldu_lightning.loldu.manifest import MANIFEST_NAME, MANIFEST_VERSION, AdapterManifest, is_adapter_folder


def write_config(directory: Path, document: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "adapter_config.json").write_text(json.dumps(document))
    return directory


def test_write_then_read_gives_the_same_manifest(tmp_path: Path) -> None:
    manifest = AdapterManifest("lora", "peft", "roberta-base")
    path = manifest.write(tmp_path / "new")
    assert path == tmp_path / "new" / MANIFEST_NAME
    assert json.loads(path.read_text()) == {
        "manifest_version": MANIFEST_VERSION,
        "adapter": "lora",
        "layout": "peft",
        "base_model_name_or_path": "roberta-base",
    }
    assert AdapterManifest.read(tmp_path / "new") == manifest
    assert is_adapter_folder(tmp_path / "new")


def test_the_manifest_wins_over_adapter_config(tmp_path: Path) -> None:
    # A PiSSA folder: PEFT's config says LORA, the manifest names the adapter that trained it.
    write_config(tmp_path, {"peft_type": "LORA", "base_model_name_or_path": "m"})
    AdapterManifest("pissa", "peft", "m").write(tmp_path)
    assert AdapterManifest.read(tmp_path).adapter == "pissa"


# Each form of adapter_config.json that named the adapter before the manifest existed.
OLD_FORMS = {
    "native LoLDU (loldu.save_adapter)": (
        {"method": "loldu", "format_version": 1, "rank": 8, "base_model_name": "prajjwal1/bert-tiny"},
        AdapterManifest("loldu", "loldu", "prajjwal1/bert-tiny"),
    ),
    "a PEFT baseline": (
        {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "roberta-base"},
        AdapterManifest("lora", "peft", "roberta-base"),
    ),
    "LoLDU through PEFT (export, PeftModel.save_pretrained)": (
        {"peft_type": "LOLDU", "base_model_name_or_path": None, "fingerprints": {}},
        AdapterManifest("loldu", "peft", None),
    ),
    "full, bitfit, linear_probe": (
        {"adapter_type": "bitfit", "base_model_name_or_path": "roberta-base", "library": "loldu_lightning"},
        AdapterManifest("bitfit", "parameters", "roberta-base"),
    ),
}


@pytest.mark.parametrize("form", sorted(OLD_FORMS))
def test_folders_without_a_manifest_are_read_from_their_adapter_config(form: str, tmp_path: Path) -> None:
    document, expected = OLD_FORMS[form]
    write_config(tmp_path, document)
    assert is_adapter_folder(tmp_path)
    assert AdapterManifest.read(tmp_path) == expected


def test_missing_folders_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter folder not found: .*nowhere"):
        AdapterManifest.read(tmp_path / "nowhere")
    assert not is_adapter_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"neither {MANIFEST_NAME} nor adapter_config.json"):
        AdapterManifest.read(tmp_path)


def test_bad_manifests_and_configs_are_refused_with_the_reason(tmp_path: Path) -> None:
    write_config(tmp_path / "nameless", {"r": 8})
    with pytest.raises(ValueError, match="names no adapter"):
        AdapterManifest.read(tmp_path / "nameless")

    newer = tmp_path / "newer"
    newer.mkdir()
    document = {"manifest_version": MANIFEST_VERSION + 1, "adapter": "lora", "layout": "peft"}
    (newer / MANIFEST_NAME).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=f"version {MANIFEST_VERSION + 1} is not supported"):
        AdapterManifest.read(newer)

    (newer / MANIFEST_NAME).write_text(json.dumps({**document, "manifest_version": 1, "layout": "onnx"}))
    with pytest.raises(ValueError, match="layout 'onnx' is not one of"):
        AdapterManifest.read(newer)

    (newer / MANIFEST_NAME).write_text(json.dumps({**document, "manifest_version": 1, "rank": 8}))
    with pytest.raises(ValueError, match=r"unknown keys \['rank'\]"):
        AdapterManifest.read(newer)

    (newer / MANIFEST_NAME).write_text(json.dumps({"adapter": "lora"}))
    with pytest.raises(ValueError, match="lacks"):
        AdapterManifest.read(newer)

    (newer / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        AdapterManifest.read(newer)
