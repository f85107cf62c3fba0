"""Instruction data for causal-LM tuning (the paper's LLaMA2 + Alpaca experiment, Tables III and VIII).

Records are `{"instruction", "input", "output"}` (Stanford Alpaca's format), read from a local JSON
list or JSONL file (`data.path`) or from a Hugging Face dataset (`data.hf_dataset`, e.g.
`yahma/alpaca-cleaned`) when a hub is reachable. Each record becomes

    input_ids = prompt_ids + response_ids + [eos]      labels = [-100] * len(prompt_ids) + response_ids + [eos]

with the prompt rendered by the Alpaca template (alpaca-lora's `templates/alpaca.json`, with and
without input) or by the tokenizer's own chat template (`data.prompt_format=chat`). Prompt and
response are tokenised separately and concatenated, so the label mask is exact at the boundary.
Examples longer than `data.max_length` lose the end of their response (and the EOS, as in
alpaca-lora); an example whose prompt alone fills the cut-off has no label left and is dropped
(and counted in the log) rather than contributing a silent zero-token loss.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchmetrics import Metric
from transformers import PreTrainedTokenizerBase

from ..options import InstructDataOptions
from .loaders import evaluation_loader, trainer_epoch, training_loader
from .subsets import seeded_order, seeded_subset

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value that torch's cross-entropy (and transformers' LM loss) skips

# alpaca-lora's templates/alpaca.json (itself Stanford Alpaca's PROMPT_DICT)
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_FORMATS = ("alpaca", "chat")
REQUIRED_FIELDS = ("instruction", "output")


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str


def _bad_record(where: str, problem: str) -> ValueError:
    return ValueError(
        f"{where} {problem}. Every record needs string fields 'instruction' and 'output' ('input' is optional), "
        "as in Stanford Alpaca's alpaca_data.json; fix the record or point data.path at another file."
    )


def parse_records(rows: Sequence[Any], source: str) -> list[Record]:
    """Validate raw rows (dicts) into Records; the message names the first bad row and its problem."""
    records = []
    for index, row in enumerate(rows):
        where = f"{source}: record {index}"
        if not isinstance(row, Mapping):
            raise _bad_record(where, f"is a {type(row).__name__}, not an object")
        for field in REQUIRED_FIELDS:
            if field not in row:
                raise _bad_record(where, f"has no {field!r} (it has {sorted(row)})")
            if not isinstance(row[field], str):
                raise _bad_record(where, f"has a non-string {field!r} ({type(row[field]).__name__})")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise _bad_record(where, f"has a non-string 'input' ({type(extra).__name__})")
        records.append(Record(row["instruction"], extra, row["output"]))
    if not records:
        raise ValueError(
            f"{source} holds no records; data.path must be a JSON list or JSONL file of "
            "{instruction, input, output} records."
        )
    return records


def read_records(path: str | Path) -> list[Record]:
    """A JSON list (alpaca_data.json) or JSON Lines file (one record per line), decided by the content."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a folder; give the .json/.jsonl file inside it)" if path.is_dir() else ""
        raise FileNotFoundError(
            f"data.path={path} does not exist{hint}. Point data.path at an Alpaca-style JSON or JSONL file "
            "(e.g. data.path=../shared/data/alpaca/alpaca_5000.json), or set data.path=null and "
            "data.hf_dataset=yahma/alpaca-cleaned to use the Hugging Face dataset (needs the hub)."
        )
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{number} is neither a JSON list file nor valid JSON Lines ({error}); "
                    "fix the file or point data.path at another one."
                ) from None
    if isinstance(rows, Mapping):
        rows = [rows]
    return parse_records(rows, str(path))


def load_hf_records(name: str, split: str = "train") -> list[Record]:
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split)
    except Exception as error:  # datasets raises many types when offline; one message says what to do
        raise FileNotFoundError(
            f"Could not load the Hugging Face dataset {name!r} ({type(error).__name__}: {error}). Offline? Set "
            "data.path=<an Alpaca JSON/JSONL file>, e.g. data.path=../shared/data/alpaca/alpaca_5000.json."
        ) from error
    return parse_records(list(dataset), f"hf:{name}")


def resolve_val_size(val_size: int | float | None, total: int) -> int:
    """`None` = 2% capped at 2,000 (alpaca-lora's default); a float in (0, 1) a fraction; an int a count."""
    if val_size is None:
        count = min(2000, max(1, round(0.02 * total)))
    elif isinstance(val_size, float) and 0 < val_size < 1:
        count = max(1, round(val_size * total))
    elif isinstance(val_size, (int, float)) and float(val_size).is_integer() and val_size >= 1:
        count = int(val_size)
    else:
        raise ValueError(
            f"data.val_size={val_size!r}: use a count (e.g. 100), a fraction in (0, 1), or null for 2% capped at 2,000."
        )
    if count >= total:
        raise ValueError(f"data.val_size={val_size!r} leaves no training examples out of {total}; make it smaller.")
    return count


def split_records(records: Sequence[Record], val_size: int | float | None, seed: int) -> tuple[list, list]:
    """A seeded shuffle, then the first `val_size` records are the validation split (alpaca-lora's way)."""
    order = seeded_order(len(records), seed)
    count = resolve_val_size(val_size, len(records))
    return [records[i] for i in order[count:]], [records[i] for i in order[:count]]


def render_prompt(record: Record, prompt_format: str, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The text the model sees before its response."""
    if prompt_format == "alpaca":
        template = ALPACA_PROMPT_INPUT if record.input else ALPACA_PROMPT_NO_INPUT
        return template.format(instruction=record.instruction, input=record.input)
    if prompt_format == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data.prompt_format=chat needs a tokenizer with a chat template, and this one has none; "
                "use data.prompt_format=alpaca."
            )
        content = f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"data.prompt_format={prompt_format!r} is not allowed; choose one of {list(PROMPT_FORMATS)}.")


def encode_example(
    record: Record,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: str,
    max_length: int,
    train_on_inputs: bool = False,
) -> dict[str, list[int]] | None:
    """Token ids and labels of one record, or None when truncation would leave it without labels."""
    prompt = render_prompt(record, prompt_format, tokenizer)
    # The chat template writes its own special tokens; the Alpaca prompt gets the tokenizer's BOS, if any.
    prompt_ids = tokenizer(prompt, add_special_tokens=prompt_format == "alpaca")["input_ids"]
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    prompt_part = min(len(prompt_ids), len(input_ids))
    labels = list(input_ids) if train_on_inputs else [IGNORE_INDEX] * prompt_part + input_ids[prompt_part:]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


class EncodedExamples(Dataset):
    def __init__(self, examples: list[dict[str, list[int]]]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        return [len(example["input_ids"]) for example in self.examples]


class CausalLMCollator:
    """Right-pads a batch: pad ids in input_ids, 0 in attention_mask, -100 in labels (no loss on padding)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {
            key: torch.tensor([list(f[key]) + [value] * (width - len(f[key])) for f in features], dtype=torch.long)
            for key, value in fill.items()
        }


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its EOS (Llama-2 has none; padded positions carry no loss either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class InstructDataModule(L.LightningDataModule):
    """Alpaca-style instruction data: a seeded validation split, response-only labels, length-grouped batches.

    Every `data.*` value comes from `options`; `seed` is the run's (it draws the split and the subsets).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, options: InstructDataOptions, *, seed: int):
        super().__init__()
        if options.prompt_format not in PROMPT_FORMATS:
            raise ValueError(
                f"data.prompt_format={options.prompt_format!r} is not allowed; choose one of {list(PROMPT_FORMATS)}."
            )
        if options.path in (None, "") and not options.hf_dataset:
            raise ValueError(
                "Neither data.path nor data.hf_dataset is set: point data.path at an Alpaca JSON/JSONL "
                "file (e.g. ../shared/data/alpaca/alpaca_5000.json) or name a hub dataset "
                "(data.hf_dataset=yahma/alpaca-cleaned)."
            )
        if tokenizer.eos_token_id is None:
            raise ValueError(
                f"The tokenizer {type(tokenizer).__name__} has no EOS token, which ends every response; "
                "use the model's own tokenizer (model.tokenizer=null)."
            )
        if options.max_length < 2:
            raise ValueError(
                f"data.max_length={options.max_length} is too short for a prompt and a response; the paper uses 256."
            )
        self.tokenizer = tokenizer
        self.options = options
        self.path = None if options.path in (None, "") else Path(options.path).expanduser()
        self.seed = int(seed)
        self.collate = CausalLMCollator(pad_token_id(tokenizer))
        self._records: tuple[list[Record], list[Record]] | None = None
        self.datasets: dict[str, EncodedExamples] = {}
        self.dropped: dict[str, int] = {}

    def records(self) -> tuple[list[Record], list[Record]]:
        """(train, validation) records after the seeded split and the optional limits; read once."""
        if self._records is None:
            options = self.options
            records = read_records(self.path) if self.path is not None else load_hf_records(options.hf_dataset)
            train, val = split_records(records, options.val_size, self.seed)
            self._records = (
                seeded_subset(train, options.train_limit, self.seed),
                seeded_subset(val, options.val_limit, self.seed),
            )
        return self._records

    def check_data(self) -> None:
        """Read and validate every record before any model loads (a typo costs a second, not a model load)."""
        self.records()

    def _encode(self, records: list[Record], split: str) -> EncodedExamples:
        options = self.options
        encoded = [
            encode_example(r, self.tokenizer, options.prompt_format, options.max_length, options.train_on_inputs)
            for r in records
        ]
        kept = [example for example in encoded if example is not None]
        self.dropped[split] = len(encoded) - len(kept)
        if self.dropped[split]:
            log.warning(
                "%s: dropped %d of %d examples whose prompt alone fills data.max_length=%d (no response "
                "token left to learn from)",
                split,
                self.dropped[split],
                len(encoded),
                options.max_length,
            )
        if not kept:
            raise ValueError(
                f"Every {split} example was dropped: the prompts are longer than data.max_length="
                f"{options.max_length}; raise data.max_length."
            )
        return EncodedExamples(kept)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        train, val = self.records()
        if stage in (None, "fit"):
            self.datasets["train"] = self._encode(train, "train")
        self.datasets["validation"] = self._encode(val, "validation")
        tokens = {split: sum(data.lengths) for split, data in self.datasets.items()}
        log.info(
            "Instruction data: %s examples, %s tokens (max_length %d, prompt %s, train_on_inputs %s)",
            {s: len(d) for s, d in self.datasets.items()},
            tokens,
            self.options.max_length,
            self.options.prompt_format,
            self.options.train_on_inputs,
        )

    def validation_prompts(self, count: int) -> list[str]:
        """The prompts of the first `count` validation records: a fixed set for generation samples."""
        prompt_format = self.options.prompt_format
        return [render_prompt(record, prompt_format, self.tokenizer) for record in self.records()[1][:count]]

    def train_dataloader(self) -> DataLoader:
        train, options = self.datasets["train"], self.options
        # Shuffled batches of similar lengths: Alpaca outputs range from one word to pages, so this
        # removes most of the padding.
        return training_loader(
            train,
            options.batch_size,
            self.collate,
            options.num_workers,
            train.lengths if options.group_by_length else None,
            epoch_source=trainer_epoch(self),
            megabatch=options.length_group_megabatch,
        )

    def val_dataloader(self) -> DataLoader:
        # each example once across DDP ranks; the summed NLL/token metrics then equal one process's
        options = self.options
        return evaluation_loader(
            self.datasets["validation"], options.eval_batch_size, self.trainer, self.collate, options.num_workers
        )


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood, number of label tokens) of next-token prediction, over the
    labels this module's collate leaves unmasked (IGNORE_INDEX elsewhere)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shift_labels != IGNORE_INDEX).sum()


class TokenNLL(Metric):
    """Token-weighted next-token loss over a whole split, summed over all ranks: the summed NLL over the
    summed label tokens (not a mean of batch means). `compute` gives the loss, its perplexity and the count."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        total, count = token_nll(logits, labels)
        self.nll += total.float()
        self.tokens += count.float()

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.nll / self.tokens.clamp(min=1)
        return {"loss": loss, "perplexity": torch.exp(loss), "tokens": self.tokens}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf
