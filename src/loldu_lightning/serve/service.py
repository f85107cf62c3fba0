"""``AdapterService``: one base model, many LoLDU adapters by name, requests batched across them.

The Python API of the server, without HTTP::

    service = AdapterService.from_model("minilm", adapters="adapters/")   # loads every adapter folder
    service.predict([Request("sst2", "a gripping film"), Request("mrpc", ["one", "two"])])
    service.add("cola", "adapters/cola"); service.remove("sst2")

Requests are checked one by one (``check``: a ``RequestError`` with an HTTP status and one line)
before a batch runs, so one bad request never fails its batch. A batch runs once through
``loldu.AdapterBank``: every example with its own adapter (and its own classification head).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loldu_lightning.loldu import AdapterBank
from loldu_lightning.loldu.manifest import AdapterManifest
from loldu_lightning.options import ModelOptions

TASKS = ("classification", "generation")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One example: the adapter that serves it, its input and (generation) how many tokens to add."""

    adapter: str
    inputs: Any
    max_new_tokens: int | None = None
    encoded: dict[str, list[int]] = field(default_factory=dict, repr=False)


@dataclass
class Stats:
    """The server's own counters: every batch that ran, how big it was, how many adapters it mixed."""

    batches: int = 0
    requests: int = 0
    largest_batch: int = 0
    most_adapters_in_a_batch: int = 0

    def record(self, size: int, adapters: int) -> dict[str, int]:
        self.batches += 1
        self.requests += size
        self.largest_batch = max(self.largest_batch, size)
        self.most_adapters_in_a_batch = max(self.most_adapters_in_a_batch, adapters)
        return {"id": self.batches, "size": size, "adapters": adapters}


def model_spec(model: str) -> ModelOptions:
    """``minilm``, ``smollm2`` or a local transformers folder, as ``models.load_model`` takes it."""
    from loldu_lightning.options import ModelOptions

    return ModelOptions(name_or_path=model, gguf_file=SMOLLM2_GGUF if model == "smollm2" else None)


def infer_task(model_config: Any) -> str:
    """``classification`` or ``generation`` from a transformers config's architectures."""
    names = " ".join(getattr(model_config, "architectures", None) or [])
    if "ForCausalLM" in names:
        return "generation"
    if "ForSequenceClassification" in names:
        return "classification"
    model_type = getattr(model_config, "model_type", "")
    return "generation" if model_type in ("llama", "gpt2", "mistral", "qwen2") else "classification"


class AdapterService:
    """See the module docstring. ``model`` is the plain base model (no adapter), ``tokenizer`` its tokenizer."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: str,
        *,
        max_length: int = 512,
        max_new_tokens: int = 256,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"serve: task {task!r} is not one of {list(TASKS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = task
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.bank: AdapterBank | None = None
        self.sources: dict[str, str] = {}
        self.stats = Stats()
        self.refused: dict[str, str] = {}
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token_id = tokenizer.eos_token_id
        if task == "generation":
            tokenizer.padding_side = "left"  # generation appends on the right

    @classmethod
    def from_model(
        cls,
        model: str,
        adapters: str | Path | None = None,
        *,
        task: str | None = None,
        device: str = "cpu",
        max_length: int = 512,
        max_new_tokens: int = 256,
    ) -> AdapterService:
        """Load the base model once (``minilm``, ``smollm2`` or a local folder) and every adapter folder in ``adapters``."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        from loldu_lightning.models import load_model, load_tokenizer, resolve_name_or_path

        spec = model_spec(model)
        if task is None:
            path = resolve_name_or_path(spec.name_or_path)
            extra = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
            task = infer_task(AutoConfig.from_pretrained(path, **extra))
        auto = AutoModelForCausalLM if task == "generation" else AutoModelForSequenceClassification
        base = load_model(spec, auto).to(device)
        service = cls(base, load_tokenizer(spec), task, max_length=max_length, max_new_tokens=max_new_tokens)
        if adapters is not None:
            service.load_folder(adapters)
        return service

    # -- adapters --------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return self.bank.names if self.bank is not None else []

    def load_folder(self, folder: str | Path) -> dict[str, str]:
        """Load every adapter folder directly inside ``folder`` (named after it); the ones that do not
        fit are refused, one line each, and returned (name -> reason)."""
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"serve: adapters folder {root} does not exist; pass a folder of adapter folders")
        refused: dict[str, str] = {}
        for path in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                self.add(path.name, path)
            except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
                refused[path.name] = str(error).splitlines()[0]
        self.refused.update(refused)
        return refused

    def add(self, name: str, path: str | Path) -> None:
        """Load the adapter folder ``path`` (native or PEFT layout) under ``name``."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"adapter name {name!r} is not allowed: use letters, digits, '.', '_' and '-'")
        if name in self.adapters:
            raise ValueError(f"adapter {name!r} is loaded already; DELETE /adapters/{name} first to replace it")
        path = Path(path)
        manifest = AdapterManifest.read(path)
        if manifest.adapter != "loldu":
            raise ValueError(f"adapter {name!r}: {path} holds a {manifest.adapter!r} adapter; this server serves LoLDU")
        with tempfile.TemporaryDirectory() as scratch:
            native = path
            if manifest.layout == "peft":
                from loldu_lightning.export.convert import peft_to_native

                native = peft_to_native(path, Path(scratch) / "native")
            if self.bank is None:
                bank = AdapterBank.for_adapter(self.model, native)
                try:
                    bank.load(name, native)
                except Exception:
                    from loldu_lightning.loldu import unload

                    unload(bank.model, merge=False)  # the first adapter sets the layout; a refusal leaves none
                    raise
                self.bank = bank
            else:
                self.bank.load(name, native)
        self.sources[name] = str(path)

    def remove(self, name: str) -> None:
        if self.bank is None or name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} is loaded")
        self.bank.remove(name)
        del self.sources[name]

    def adapter_bytes(self) -> dict[str, int]:
        """Memory each loaded adapter takes (its update vectors and its heads)."""
        return {name: self.bank.bytes_per_adapter(name) for name in self.adapters} if self.bank else {}

    # -- requests --------------------------------------------------------------------------------
    def check(self, request: Request) -> Request:
        """Raise ``RequestError`` (404 unknown adapter, 422 wrong input, 413 too long) or return the
        request with its tokens."""
        if not isinstance(request.adapter, str) or request.adapter not in self.adapters:
            raise RequestError(404, f"unknown adapter {request.adapter!r}; loaded: {self.adapters}")
        inputs = request.inputs
        if self.task == "classification":
            pair = isinstance(inputs, list) and len(inputs) == 2 and all(isinstance(t, str) for t in inputs)
            if not (isinstance(inputs, str) or pair):
                raise RequestError(422, "inputs must be a string or a list of two strings (a sentence pair)")
            texts = inputs if pair else [inputs]
            encoded = self.tokenizer(*texts, truncation=False)
        else:
            if not isinstance(inputs, str):
                raise RequestError(422, "inputs must be a string (the prompt)")
            encoded = self.tokenizer(inputs, truncation=False)
            wanted = request.max_new_tokens if request.max_new_tokens is not None else 32
            if isinstance(wanted, bool) or not isinstance(wanted, int) or not 1 <= wanted <= self.max_new_tokens:
                raise RequestError(422, f"max_new_tokens must be an integer from 1 to {self.max_new_tokens}")
            request.max_new_tokens = wanted
        length = len(encoded["input_ids"])
        if length == 0:
            raise RequestError(422, "inputs are empty")
        if length > self.max_length:
            raise RequestError(413, f"inputs are {length} tokens long; this server takes at most {self.max_length}")
        request.encoded = {key: list(value) for key, value in encoded.items()}
        return request

    @torch.inference_mode()
    def predict(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """Answer checked requests in one batch (each example with its own adapter)."""
        if not requests:
            return []
        names = [r.adapter for r in requests]
        batch_info = self.stats.record(len(requests), len(set(names)))
        device = next(self.model.parameters()).device
        encoded = self.tokenizer.pad([r.encoded for r in requests], return_tensors="pt")
        encoded = {key: value.to(device) for key, value in encoded.items()}
        with self.bank.select(names):
            if self.task == "classification":
                answers = self._classify(encoded, names)
            else:
                answers = self._generate(encoded, requests)
        return [{**answer, "adapter": name, "batch": batch_info} for answer, name in zip(answers, names, strict=True)]

    def _classify(self, encoded: dict[str, torch.Tensor], names: list[str]) -> list[dict[str, Any]]:
        logits = self.bank.model(**encoded).logits.float()
        answers = []
        for row in logits:
            row = row[~torch.isnan(row)]  # heads narrower than the widest in the batch are NaN-padded
            if row.numel() == 1:  # a regression head (STS-B)
                answers.append({"score": row.item()})
            else:
                probabilities = torch.softmax(row, dim=-1)
                answers.append({"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()})
        return answers

    def _generate(self, encoded: dict[str, torch.Tensor], requests: Sequence[Request]) -> list[dict[str, Any]]:
        longest = max(r.max_new_tokens for r in requests)
        generated = self.bank.model.generate(
            **encoded,
            max_new_tokens=longest,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new = generated[:, encoded["input_ids"].shape[1] :]
        # Greedy decoding: the first n tokens of a longer continuation are exactly the n-token one.
        return [
            {"text": self.tokenizer.decode(new[i, : r.max_new_tokens], skip_special_tokens=True)}
            for i, r in enumerate(requests)
        ]
