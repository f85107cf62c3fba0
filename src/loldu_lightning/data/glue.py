"""GLUE as a LightningDataModule: the canonical TSV files on disk, or the Hugging Face `glue` dataset.

Both sources are normalised to (text_a, text_b, label) examples, tokenised once in `setup()` and
padded per batch, so short tasks such as SST-2 do not pay for `max_length` padding.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ..options import GlueDataOptions
from .loaders import evaluation_loader, trainer_epoch, training_loader
from .subsets import seeded_order, seeded_subset

# GLUE sentences contain literal quote characters and some QQP/MNLI rows are long.
csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class GlueTaskInfo:
    """Everything that differs between GLUE tasks: files, columns, labels, metrics."""

    name: str
    directory: str  # folder name in the GLUE release, e.g. "SST-2"
    text_columns: tuple[str, str | None]  # TSV header names
    hf_text_columns: tuple[str, str | None]  # Hugging Face `glue` column names
    label_column: str
    labels: tuple[str, ...] | None  # label strings in class-index order; None = regression
    metrics: tuple[str, ...]
    val_splits: tuple[str, ...] = ("validation",)
    header: bool = True
    fieldnames: tuple[str, ...] | None = None  # for header-less files (CoLA)

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


GLUE_TASKS: dict[str, GlueTaskInfo] = {
    info.name: info
    for info in (
        GlueTaskInfo(
            "cola",
            "CoLA",
            ("sentence", None),
            ("sentence", None),
            "label",
            ("0", "1"),
            ("mcc", "accuracy"),
            header=False,
            fieldnames=("source", "label", "original_label", "sentence"),
        ),
        GlueTaskInfo("sst2", "SST-2", ("sentence", None), ("sentence", None), "label", ("0", "1"), ("accuracy",)),
        GlueTaskInfo(
            "mrpc",
            "MRPC",
            ("#1 String", "#2 String"),
            ("sentence1", "sentence2"),
            "Quality",
            ("0", "1"),
            ("accuracy", "f1"),
        ),
        GlueTaskInfo(
            "qqp",
            "QQP",
            ("question1", "question2"),
            ("question1", "question2"),
            "is_duplicate",
            ("0", "1"),
            ("accuracy", "f1"),
        ),
        GlueTaskInfo(
            "stsb",
            "STS-B",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2"),
            "score",
            None,
            ("pearson", "spearman"),
        ),
        GlueTaskInfo(
            "mnli",
            "MNLI",
            ("sentence1", "sentence2"),
            ("premise", "hypothesis"),
            "gold_label",
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            val_splits=("validation_matched", "validation_mismatched"),
        ),
        GlueTaskInfo(
            "qnli",
            "QNLI",
            ("question", "sentence"),
            ("question", "sentence"),
            "label",
            ("entailment", "not_entailment"),
            ("accuracy",),
        ),
        GlueTaskInfo(
            "rte",
            "RTE",
            ("sentence1", "sentence2"),
            ("sentence1", "sentence2"),
            "label",
            ("entailment", "not_entailment"),
            ("accuracy",),
        ),
    )
}

# The GLUE release names the dev files after the split; MNLI has two.
_TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


def glue_task(name: str) -> GlueTaskInfo:
    try:
        return GLUE_TASKS[name]
    except KeyError:
        raise ValueError(
            f"Unknown GLUE task {name!r}; choose one of {sorted(GLUE_TASKS)} (task=glue/<name>)."
        ) from None


Example = tuple[str, str | None, float | int]


def read_glue_tsv(path: Path, info: GlueTaskInfo) -> list[Example]:
    """Read one GLUE TSV as the GLUE release ships it (quotes are literal, MRPC has a BOM)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"GLUE file {path} not found. data.data_dir must be a folder with the GLUE release's files for "
            f"{info.name} ({info.directory}/: train.tsv and {', '.join(_TSV_FILES[s] for s in info.val_splits)}); "
            "or set data.data_dir=null to use the Hugging Face `glue` dataset (needs the hub)."
        )
    examples = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(
            handle, delimiter="\t", quoting=csv.QUOTE_NONE, fieldnames=None if info.header else info.fieldnames
        )
        first, second = info.text_columns
        for row in reader:
            text_a, label = row.get(first), row.get(info.label_column)
            text_b = row.get(second) if second else None
            if text_a is None or label is None or (second and text_b is None):
                continue  # the GLUE release has a few truncated rows (QQP); skipping them is standard
            examples.append((text_a, text_b, _encode_label(label, info, path)))
    if not examples:
        raise ValueError(
            f"{path} holds no {info.name} examples: expected columns {info.text_columns} and {info.label_column!r}."
        )
    return examples


def _encode_label(raw: str, info: GlueTaskInfo, path: Path) -> float | int:
    if info.labels is None:
        return float(raw)
    try:
        return info.labels.index(raw.strip())
    except ValueError:
        raise ValueError(f"{path}: label {raw!r} is not one of {info.labels} for {info.name}.") from None


def load_hf_glue(info: GlueTaskInfo, split: str) -> list[Example]:
    from datasets import load_dataset

    try:
        dataset = load_dataset("glue", info.name, split=split)
    except Exception as error:  # datasets raises many types when offline; one message says what to do
        raise FileNotFoundError(
            f"Could not load the Hugging Face `glue/{info.name}` dataset ({type(error).__name__}: {error}). "
            f"Offline? Point data.data_dir at a folder with the GLUE TSV files ({info.directory}/train.tsv, "
            "dev.tsv), e.g. data.data_dir=../shared/data/glue/" + info.directory
        ) from error
    first, second = info.hf_text_columns
    return [(row[first], row[second] if second else None, row["label"]) for row in dataset]


class TokenizedExamples(Dataset):
    """Pre-tokenised examples; padding is left to the collator."""

    def __init__(self, encodings: dict[str, list], labels: Sequence[float | int], regression: bool):
        self.encodings = encodings
        self.labels = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


class GlueDataModule(L.LightningDataModule):
    """One GLUE task; `val_dataloader` returns one loader per dev split (two for MNLI).

    Every `data.*` value comes from `options`; `seed` is the run's (it draws the limited subsets).
    """

    def __init__(self, task_name: str, tokenizer: PreTrainedTokenizerBase, options: GlueDataOptions, *, seed: int):
        super().__init__()
        self.info = glue_task(task_name)
        self.tokenizer = tokenizer
        self.options = options
        self.data_dir = Path(options.data_dir).expanduser() if options.data_dir else None
        self.seed = seed
        train_from_dev = options.train_from_dev
        if train_from_dev is not None and (len(self.info.val_splits) != 1 or train_from_dev < 1):
            raise ValueError(
                f"data.train_from_dev={train_from_dev}: must be a positive number of dev examples, for a task with "
                f"one dev split ({self.info.name} has {len(self.info.val_splits)})."
            )
        self.collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
        self.datasets: dict[str, TokenizedExamples] = {}

    def check_data(self) -> None:
        """Fail before any model loads when the files are missing."""
        if self.data_dir is None:
            return
        if not self.data_dir.is_dir():
            raise FileNotFoundError(
                f"data.data_dir={self.data_dir} does not exist. Point it at the GLUE folder for {self.info.name} "
                f"(with train.tsv and dev.tsv), e.g. data.data_dir=../shared/data/glue/{self.info.directory}."
            )
        needed = self.info.val_splits if self.options.train_from_dev else ("train", *self.info.val_splits)
        for split in needed:
            if not (self.data_dir / _TSV_FILES[split]).is_file():
                raise FileNotFoundError(
                    f"{self.data_dir / _TSV_FILES[split]} not found: data.data_dir must hold the GLUE release's "
                    f"files for {self.info.name}: train.tsv and "
                    f"{', '.join(_TSV_FILES[s] for s in self.info.val_splits)}."
                )

    def _examples(self, split: str) -> list[Example]:
        if self.data_dir is not None:
            return read_glue_tsv(self.data_dir / _TSV_FILES[split], self.info)
        return load_hf_glue(self.info, split)

    def _tokenize(self, examples: list[Example], limit: int | None, seed_offset: int) -> TokenizedExamples:
        examples = seeded_subset(examples, limit, self.seed + seed_offset)
        texts_a = [a for a, _, _ in examples]
        texts_b = [b for _, b, _ in examples] if self.info.text_columns[1] else None
        encodings = self.tokenizer(texts_a, texts_b, truncation=True, max_length=self.options.max_length)
        return TokenizedExamples(dict(encodings), [label for _, _, label in examples], self.info.is_regression)

    def _split_dev(self) -> tuple[list[Example], list[Example]]:
        """`train_from_dev` seeded dev examples to train on, and the rest of dev to validate on.

        For a task whose training file is not at hand (the shared data holds QNLI's dev set only). The split
        depends on `split_seed`, not the run's seed, so every seed of a study validates on the same examples.
        """
        dev = self._examples(self.info.val_splits[0])
        count = self.options.train_from_dev
        if count >= len(dev):
            raise ValueError(
                f"data.train_from_dev={count} leaves nothing to validate on: {self.info.name}'s dev "
                f"split has {len(dev)} examples; choose fewer."
            )
        chosen = set(seeded_order(len(dev), self.options.split_seed)[:count])
        train = [example for i, example in enumerate(dev) if i in chosen]
        rest = [example for i, example in enumerate(dev) if i not in chosen]
        return train, rest

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.check_data()
        train_limit, val_limit = self.options.train_limit, self.options.val_limit
        if self.options.train_from_dev:
            train, rest = self._split_dev()
            self.datasets["train"] = self._tokenize(train, train_limit, 0)
            self.datasets[self.info.val_splits[0]] = self._tokenize(rest, val_limit, 1)
            return
        if stage in (None, "fit"):
            self.datasets["train"] = self._tokenize(self._examples("train"), train_limit, 0)
        for offset, split in enumerate(self.info.val_splits, start=1):
            self.datasets[split] = self._tokenize(self._examples(split), val_limit, offset)

    def train_dataloader(self) -> DataLoader:
        train, options = self.datasets["train"], self.options
        # Batches of similar lengths (still shuffled) pad far less: SST-2 trains about twice as fast.
        lengths = [len(ids) for ids in train.encodings["input_ids"]] if options.group_by_length else None
        return training_loader(
            train,
            options.batch_size,
            self.collate,
            options.num_workers,
            lengths,
            epoch_source=trainer_epoch(self),
            megabatch=options.length_group_megabatch,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            evaluation_loader(
                self.datasets[split], self.options.eval_batch_size, self.trainer, self.collate, self.options.num_workers
            )
            for split in self.info.val_splits
        ]
