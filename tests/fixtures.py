"""Small data sets generated in the real on-disk formats, for a clone without ../shared/data.

CI always has the real data; a user's clone does not, and its end-to-end tests should still run
(on these stand-ins) instead of skipping. The formats are exactly what the data modules read:
GLUE's TSV files and torchvision's ImageFolder layout.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

_WORDS = ["the", "film", "story", "cast", "music", "plot", "city", "river", "team", "report", "market", "garden"]
_POSITIVE = ["wonderful", "moving", "brilliant", "charming"]
_NEGATIVE = ["dull", "tedious", "awful", "bleak"]


def _sentence(rng: random.Random, extra: str) -> str:
    words = rng.sample(_WORDS, 5)
    words.insert(rng.randrange(len(words)), extra)
    return " ".join(words) + " ."


def write_glue_task(folder: Path, task: str, rows: int = 96, seed: int = 0) -> Path:
    """`train.tsv` and `dev.tsv` of GLUE task folder `task` (RTE, SST-2 or MRPC), with a learnable label."""
    rng = random.Random(f"{task}:{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", rows), ("dev", rows // 3)):
        lines = []
        for index in range(count):
            label = index % 2
            cue = rng.choice(_POSITIVE if label else _NEGATIVE)
            first, second = _sentence(rng, cue), _sentence(rng, cue if label else rng.choice(_POSITIVE))
            if task == "RTE":
                lines.append(f"{index}\t{first}\t{second}\t{'entailment' if label else 'not_entailment'}")
            elif task == "SST-2":
                lines.append(f"{first}\t{label}")
            elif task == "MRPC":
                lines.append(f"{label}\t{1000 + index}\t{2000 + index}\t{first}\t{second}")
            else:
                raise ValueError(f"no generator for GLUE task folder {task!r}; write RTE, SST-2 or MRPC")
        header = {
            "RTE": "index\tsentence1\tsentence2\tlabel",
            "SST-2": "sentence\tlabel",
            "MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        }[task]
        (folder / f"{split}.tsv").write_text("\n".join([header, *lines]) + "\n")
    return folder


def write_glue_root(root: Path) -> Path:
    for task in ("RTE", "SST-2", "MRPC"):
        write_glue_task(root / task, task)
    return root


def write_image_folder(root: Path, classes: int = 10, per_class: int = 26, size: int = 32) -> Path:
    """`train/<class>/*.jpg` and `test/<class>/*.jpg` (the cifar10_subset layout, 10 classes): each class is one
    flat colour plus noise, so a tiny model can learn it."""
    rng = random.Random(0)
    for split, count in (("train", per_class), ("test", max(2, per_class // 4))):
        for label in range(classes):
            base = (20 + 23 * label, 230 - 21 * label, 60 + 90 * (label % 3))
            for index in range(count):
                colour = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in base)
                path = root / split / f"class_{label}" / f"{index:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (size, size), colour).save(path, quality=95)
    return root
