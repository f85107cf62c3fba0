"""Resumable checkpoints of a run: written atomically, found by `ckpt_path=last`, verified before use,
and refused when the run they belong to was configured differently.

Lightning writes and restores the checkpoints (`ModelCheckpoint`, `trainer.fit(ckpt_path=...)`); this
module adds what it leaves to the application: an atomic write (Lightning's own write can leave a
truncated file when the process dies during it), the choice of the newest file among the several a
run writes (`last.ckpt`, `interrupted.ckpt`, `on_exception.ckpt`), and the comparison of the
configuration stored in the checkpoint with the one asked to resume it.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

# Files a run writes that resume training where it stopped; `best-*.ckpt` are for evaluation.
RESUMABLE = ("last.ckpt", "interrupted.ckpt", "on_exception.ckpt")
# Where the composed configuration lives inside a checkpoint (written by RunRecord).
CONFIG_KEY = "loldu_run_config"

# What defines a run: a resume that changes any of these is refused unless allowed by name.
DEFINING = (
    "model",
    "adapter",
    "task",
    "data",
    "optimizer",
    "scheduler",
    "seed",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.accumulate_grad_batches",
    "trainer.precision",
    "trainer.limit_train_batches",
    "trainer.gradient_clip_val",
)
# Inside the defining groups, what only changes speed or evaluation bookkeeping, never the trained result.
NOT_DEFINING = ("data.num_workers", "data.eval_batch_size")


class CheckpointError(Exception):
    """A checkpoint that cannot be used to resume, with the reason and what to do instead."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to `<name>.tmp` then renames over `<name>`: a kill mid-write leaves the previous file whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        with open(partial, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)


def is_readable(path: Path) -> bool:
    """Whether `path` is a whole torch checkpoint: a zip archive whose members all pass their CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def resumable_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The run's resumable checkpoint files, newest first."""
    found = [checkpoint_dir / name for name in RESUMABLE if (checkpoint_dir / name).is_file()]
    return sorted(found, key=lambda path: path.stat().st_mtime_ns, reverse=True)


def newest_resumable(checkpoint_dir: Path) -> Path | None:
    """The newest resumable checkpoint, checked whole; a damaged newest file is an error naming the
    next usable one (never a silent fallback that would quietly lose steps)."""
    candidates = resumable_checkpoints(checkpoint_dir)
    if not candidates:
        return None
    newest = candidates[0]
    if is_readable(newest):
        return newest
    fallback = next((path for path in candidates[1:] if is_readable(path)), None)
    hint = (
        f"resume from the earlier checkpoint with ckpt_path={fallback}"
        if fallback
        else "no earlier checkpoint is usable"
    )
    raise CheckpointError(f"checkpoint {newest} is truncated or corrupt; {hint}, or delete the damaged file.")


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: Path) -> Path | None:
    """`last` means the newest resumable checkpoint of this run directory; anything else is a file path."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        newest = newest_resumable(checkpoint_dir)
        if newest is None:
            raise CheckpointError(
                f"ckpt_path=last but {checkpoint_dir} holds no checkpoint ({', '.join(RESUMABLE)}). To resume "
                "an earlier run, run in its directory (hydra.run.dir=<that run's folder> ckpt_path=last)."
            )
        return newest
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={ckpt_path} is not a checkpoint file.")
    if not is_readable(path):
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt; give another one with ckpt_path=<file>.")
    return path


def defining_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened `key -> value` pairs of `config` (a resolved plain dict) that define the run."""
    flat = dict(_flatten(config))
    return {
        key: value
        for key, value in flat.items()
        if any(key == root or key.startswith(root + ".") for root in DEFINING)
        and not any(key == skip or key.startswith(skip + ".") for skip in NOT_DEFINING)
    }


def config_fingerprint(run_config: Mapping[str, Any]) -> str:
    """A short, stable digest of a defining configuration (metrics.json keeps it to recognise a finished job)."""
    encoded = json.dumps(dict(run_config), sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def _flatten(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        if not node and prefix:
            yield prefix, {}
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def stored_config(path: Path) -> dict[str, Any] | None:
    """The defining configuration a checkpoint was written with (None for checkpoints that predate it)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for key, state in checkpoint.get("callbacks", {}).items():
        if key.startswith("RunRecord") and CONFIG_KEY in state:
            return json.loads(state[CONFIG_KEY])
    return None


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`key -> (old, new)` for every defining key whose value differs (missing on one side counts)."""
    missing = "<unset>"
    return {
        key: (old.get(key, missing), new.get(key, missing))
        for key in sorted(set(old) | set(new))
        if old.get(key, missing) != new.get(key, missing)
    }


def check_resume(path: Path, new: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, tuple[Any, Any]]:
    """Refuse to resume `path` with a different defining configuration, except the `allowed` keys.

    Returns the changes that were allowed (for the log). `allowed` entries match a key or a group
    (`trainer.max_epochs`, or `optimizer` for every optimizer option).
    """
    old = stored_config(path)
    if old is None:
        return {}
    allowed = list(allowed)
    changes = changed_keys(old, new)
    accepted = {k: v for k, v in changes.items() if any(k == a or k.startswith(a + ".") for a in allowed)}
    refused = {k: v for k, v in changes.items() if k not in accepted}
    if refused:
        listing = "; ".join(f"{key}: {old_value!r} -> {new_value!r}" for key, (old_value, new_value) in refused.items())
        keys = ",".join(refused)
        raise CheckpointError(
            f"resuming {path} with a different configuration ({listing}). Resume with the checkpoint's "
            f"values, or accept the changes on purpose with +resume.allow_changes=[{keys}]"
        )
    return accepted
