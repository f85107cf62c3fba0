"""The wheel bundle of scripts/gpu_check.sh --bundle: describe it where it is made, install it where it runs.

    python scripts/gpu_bundle.py describe DIR [--limit-mib 60]
    python scripts/gpu_bundle.py install DIR TARGET --repo REPO [--record FILE]

`describe` writes DIR/BUNDLE.md (every file, its size and sha256, the total) and prints it; it exits 1
when the bundle is over the limit. `install` puts the bundle's wheels into TARGET with
`pip install --no-index --no-deps --target`, on top of the machine's own packages:

- the project's wheel always (the code under test); it must hold exactly this checkout's src/ and conf/;
- any other wheel only where the machine lacks the package or has a version outside what the bundle's
  wheels require of it (the machine's copy is kept otherwise);
- never torch, torchvision or a CUDA library: a bundle holding one is refused.

It writes the plan (each wheel, installed or kept, and why) to --record, with the requirements of the
installed wheels that the machine does not meet. Standard library plus `packaging`, which every
environment with transformers or lightning has.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import importlib.metadata as metadata
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import InvalidVersion, Version

PROJECT = "loldu-lightning"
MANIFEST = "BUNDLE.md"
# The machine's own builds, matched to its driver: the bundle never carries or replaces them.
PROTECTED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
MINILM_TOKENIZER = Path("tokenizers") / "minilm"


class BundleError(RuntimeError):
    """A bundle that cannot be used as it is; the message says what to do."""


@dataclass
class Wheel:
    path: Path
    name: str
    version: str
    requires: list[Requirement] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)

    @property
    def pure(self) -> bool:
        return self.path.name.endswith("-none-any.whl")


def read_wheel(path: Path) -> Wheel:
    with zipfile.ZipFile(path) as archive:
        meta_name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            raise BundleError(f"{path.name} has no .dist-info/METADATA: not a wheel; rebuild the bundle")
        meta = email.parser.Parser().parsestr(archive.read(meta_name).decode("utf-8"))
    requires = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            requires.append(Requirement(line))
        except InvalidRequirement:
            continue
    return Wheel(
        path,
        canonicalize_name(meta["Name"]),
        meta["Version"],
        requires,
        [canonicalize_name(extra) for extra in meta.get_all("Provides-Extra") or []],
    )


def applies(requirement: Requirement, extras: list[str]) -> bool:
    """Whether the requirement is in force with any of ``extras`` ('' = the plain install)."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in ["", *extras])


def required_of(wheels: list[Wheel], name: str) -> SpecifierSet:
    """Everything the bundle's wheels require of ``name``: the project's with all its extras (the test extra
    pulls them all), the others' plain requirements."""
    spec = SpecifierSet()
    for wheel in wheels:
        extras = wheel.extras if wheel.name == PROJECT else []
        for requirement in wheel.requires:
            if canonicalize_name(requirement.name) == name and applies(requirement, extras):
                spec &= requirement.specifier
    return spec


def machine_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfied(version: str, spec: SpecifierSet) -> bool:
    try:
        return spec.contains(Version(version), prereleases=True)
    except InvalidVersion:  # a local build with a version pip cannot compare: the bundle's copy is the safe one
        return False


def checkout_differences(wheel: Wheel, repo: Path) -> list[str]:
    """Files of the project's package (.py, .yaml) that differ between the wheel and the checkout."""
    in_wheel: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel.path) as archive:
        for name in archive.namelist():
            if name.startswith("loldu_lightning/") and name.endswith((".py", ".yaml")):
                relative = name.removeprefix("loldu_lightning/")
                source = f"conf/{relative.removeprefix('conf/')}" if relative.startswith("conf/") else f"src/{name}"
                in_wheel[source] = archive.read(name)
    in_checkout = {
        str(path.relative_to(repo)): path
        for folder in (repo / "src" / "loldu_lightning", repo / "conf")
        for path in folder.rglob("*")
        if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts
    }
    differ = sorted(set(in_wheel) ^ set(in_checkout))
    differ += sorted(p for p in set(in_wheel) & set(in_checkout) if in_checkout[p].read_bytes() != in_wheel[p])
    return differ


@dataclass
class Plan:
    install: list[Wheel] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # one per wheel: decision and why


def plan(bundle: Path, repo: Path) -> Plan:
    paths = sorted(bundle.glob("*.whl"))
    if not paths:
        raise BundleError(f"no wheels in {bundle}: make the bundle with `bash scripts/gpu_bundle.sh {bundle}`")
    wheels = [read_wheel(path) for path in paths]
    protected = [w.path.name for w in wheels if PROTECTED.match(w.name)]
    if protected:
        raise BundleError(
            f"the bundle holds {', '.join(protected)}: the check runs on the machine's own torch and CUDA libraries; "
            "remove those wheels"
        )
    projects = [w for w in wheels if w.name == PROJECT]
    if len(projects) != 1:
        raise BundleError(
            f"the bundle must hold exactly one {PROJECT} wheel (it holds {len(projects)}); "
            f"remake it with `bash scripts/gpu_bundle.sh {bundle}`"
        )
    differ = checkout_differences(projects[0], repo)
    if differ:
        raise BundleError(
            f"the bundle's {projects[0].path.name} is not this checkout ({len(differ)} files differ, e.g. {differ[0]}); "
            f"remake it from this checkout with `bash scripts/gpu_bundle.sh {bundle}`"
        )
    result = Plan()
    for wheel in wheels:
        decision = decide(wheel, wheels)
        if decision.startswith("install"):
            result.install.append(wheel)
        result.lines.append(f"{wheel.name} {wheel.version}: {decision}")
    return result


def decide(wheel: Wheel, wheels: list[Wheel]) -> str:
    """'install: why' or 'keep the machine's X: why' for one wheel of the bundle."""
    if wheel.name == PROJECT:
        return "install: the code under test (matches this checkout)"
    have = machine_version(wheel.name)
    if have is None:
        return "install: the machine lacks it"
    spec = required_of(wheels, wheel.name)
    wanted = f" {spec}" if str(spec) else " (any version)"
    if satisfied(have, spec):
        return f"keep the machine's {have}: satisfies{wanted}"
    return f"install: the machine's {have} is outside{wanted}"


def unmet_requirements(installed: list[Wheel]) -> list[str]:
    """Plain requirements (no extras) of the installed wheels that neither the bundle nor the machine meets."""
    provided = {w.name: w.version for w in installed}
    problems = []
    for wheel in installed:
        for requirement in wheel.requires:
            name = canonicalize_name(requirement.name)
            if not applies(requirement, []):
                continue
            have = provided.get(name) or machine_version(name)
            if have is None:
                problems.append(f"{wheel.name} needs {requirement}: not installed")
            elif not satisfied(have, requirement.specifier):
                problems.append(f"{wheel.name} needs {requirement}: {have} is installed")
    return sorted(set(problems))


def install(bundle: Path, target: Path, repo: Path, record: Path | None) -> None:
    chosen = plan(bundle, repo)
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(target), "-q"]
    completed = subprocess.run([*command, *(str(w.path) for w in chosen.install)], capture_output=True, text=True)
    if completed.returncode != 0:
        raise BundleError(
            f"pip install --target {target} failed: {(completed.stderr or completed.stdout).strip()[-800:]}"
        )
    tokenizer = bundle / MINILM_TOKENIZER
    lines = [
        f"bundle: {bundle}",
        f"installed into: {target} (first on PYTHONPATH, over the machine's packages)",
        "",
        *chosen.lines,
        "",
        f"MiniLM tokenizer (tiny-roberta's): {tokenizer if tokenizer.is_dir() else 'not in the bundle'}",
    ]
    unmet = unmet_requirements(chosen.install)
    lines += [
        "",
        "Declared requirements of the installed wheels that nothing here meets (the GPU check does not import "
        "these; a test that needs one fails or skips with its name):"
        if unmet
        else "Every declared requirement of the installed wheels is met.",
    ]
    lines += [f"- {problem}" for problem in unmet]
    text = "\n".join(lines) + "\n"
    if record is not None:
        record.write_text(text, encoding="utf-8")
    print(text, end="")


def describe(bundle: Path, limit_mib: float) -> int:
    files = sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST)
    total = sum(p.stat().st_size for p in files)
    wheels = [read_wheel(p) for p in files if p.suffix == ".whl"]
    binary = [w.path.name for w in wheels if not w.pure]
    lines = [
        "# GPU check bundle",
        "",
        "Made by `scripts/gpu_bundle.sh`; installed by `scripts/gpu_check.sh --bundle DIR` (docs/gpu.md).",
        "",
        "| file | bytes | sha256 |",
        "|---|---|---|",
        *(
            f"| {p.relative_to(bundle)} | {p.stat().st_size:,} | {hashlib.sha256(p.read_bytes()).hexdigest()[:16]} |"
            for p in files
        ),
        "",
        f"Total: {total:,} bytes ({total / 2**20:.1f} MiB) in {len(files)} files; limit {limit_mib:g} MiB.",
        f"Wheels: {len(wheels)}, {len(wheels) - len(binary)} pure Python"
        + (f"; built for a platform: {', '.join(binary)}" if binary else ""),
    ]
    text = "\n".join(lines) + "\n"
    (bundle / MANIFEST).write_text(text, encoding="utf-8")
    print(text, end="")
    if total > limit_mib * 2**20:
        print(f"gpu_bundle: {total / 2**20:.1f} MiB is over the {limit_mib:g} MiB limit", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    describe_cmd = commands.add_parser("describe")
    describe_cmd.add_argument("bundle", type=Path)
    describe_cmd.add_argument("--limit-mib", type=float, default=60)
    install_cmd = commands.add_parser("install")
    install_cmd.add_argument("bundle", type=Path)
    install_cmd.add_argument("target", type=Path)
    install_cmd.add_argument("--repo", type=Path, required=True)
    install_cmd.add_argument("--record", type=Path)
    args = parser.parse_args()
    try:
        if args.command == "describe":
            return describe(args.bundle.resolve(), args.limit_mib)
        install(args.bundle.resolve(), args.target.resolve(), args.repo.resolve(), args.record)
    except BundleError as error:
        print(f"gpu_bundle: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
