"""An adapter trained by the framework on real MiniLM, converted to PEFT's format and back."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from loldu_lightning.adapters import build_adapter
from loldu_lightning.builders.glue import build_glue
from loldu_lightning.export import native_to_peft, peft_to_native
from loldu_lightning.export.__main__ import main as export_main
from loldu_lightning.train import train
from tests.helpers import compose_config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The quickstart (real all-MiniLM-L6-v2, packaged SST-2 sample) on a few batches."""
    out = tmp_path_factory.mktemp("run")
    cfg = compose_config(["debug=fast", "data.batch_size=8"], out)
    result = train(cfg)
    assert result["status"] == "completed"
    return cfg, out / "adapter" / "last"


def _val_batch(cfg):
    _, datamodule = build_glue(cfg)
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders  # one loader per validation split
    batch = next(iter(loader))
    return {key: value for key, value in batch.items() if key != "labels"}


def _framework_logits(cfg, native_dir, batch):
    """The framework's own evaluation path: a fresh model, the adapter loaded by Adapter.load."""
    model = build_adapter(cfg.adapter).load(build_glue(cfg)[0].model, native_dir).eval()
    with torch.no_grad():
        return model(**batch).logits


def _peft_logits(cfg, peft_dir, batch):
    model = PeftModel.from_pretrained(build_glue(cfg)[0].model, str(peft_dir)).eval()
    with torch.no_grad():
        return model(**batch).logits


def test_framework_adapter_converted_to_peft_gives_the_same_logits(trained_run, tmp_path):
    cfg, native_dir = trained_run
    batch = _val_batch(cfg)
    expected = _framework_logits(cfg, native_dir, batch)
    untrained = build_glue(cfg)[0].model.eval()
    with torch.no_grad():
        assert not torch.allclose(untrained(**batch).logits, expected)  # the comparison below is not vacuous

    assert export_main(["peft", str(native_dir), str(tmp_path / "peft")]) == 0
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    native_document = json.loads((native_dir / "adapter_config.json").read_text())
    assert document["peft_type"] == "LOLDU" and document["r"] == native_document["rank"]
    assert document["fingerprints"] == native_document["fingerprints"]
    assert sorted(document["modules_to_save"]) == ["bert.pooler", "classifier"]
    keys = set(load_file(str(tmp_path / "peft" / "adapter_model.safetensors")))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.loldu_adapter.z" in keys
    assert "base_model.model.classifier.weight" in keys

    torch.testing.assert_close(_peft_logits(cfg, tmp_path / "peft", batch), expected, rtol=0, atol=0)

    # and back: the native folder written from the PEFT one loads in the framework with the same logits
    assert export_main(["native", str(tmp_path / "peft"), str(tmp_path / "native")]) == 0
    torch.testing.assert_close(_framework_logits(cfg, tmp_path / "native", batch), expected, rtol=0, atol=0)
    assert (
        load_file(str(tmp_path / "native" / "adapter_model.safetensors")).keys()
        == load_file(str(native_dir / "adapter_model.safetensors")).keys()
    )


def test_round_trip_keeps_saved_factors(tmp_path):
    import transformers

    from loldu_lightning import loldu

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    model = loldu.inject(
        transformers.BertForSequenceClassification(config),
        loldu.LoLDUConfig(rank=4, target_modules=["query"], save_factors=True, seed=3),
    )
    loldu.save_adapter(model, tmp_path / "native", modules_to_save=["classifier"])
    native_to_peft(tmp_path / "native", tmp_path / "peft")
    peft_to_native(tmp_path / "peft", tmp_path / "back")
    original = load_file(str(tmp_path / "native" / "adapter_model.safetensors"))
    back = load_file(str(tmp_path / "back" / "adapter_model.safetensors"))
    assert original.keys() == back.keys() and "bert.encoder.layer.0.attention.self.query.lower" in original
    assert all(torch.equal(original[key], back[key]) for key in original)
    assert loldu.read_adapter_config(tmp_path / "back")["save_factors"] is True


def test_converted_folders_carry_the_manifest_and_the_wrong_direction_is_refused(tmp_path):
    import transformers

    from loldu_lightning import loldu
    from loldu_lightning.loldu.manifest import MANIFEST_NAME, AdapterManifest

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    model = loldu.inject(transformers.BertForSequenceClassification(config), loldu.LoLDUConfig(rank=4, seed=3))
    loldu.save_adapter(model, tmp_path / "native", base_model_name="tiny-bert")
    native_to_peft(tmp_path / "native", tmp_path / "peft")
    assert AdapterManifest.read(tmp_path / "peft") == AdapterManifest("loldu", "peft", "tiny-bert")
    with pytest.raises(ValueError, match="PEFT's layout"):
        native_to_peft(tmp_path / "peft", tmp_path / "again")
    with pytest.raises(ValueError, match="not a LoLDU adapter in PEFT's layout"):
        peft_to_native(tmp_path / "native", tmp_path / "again")

    # a folder PeftModel.save_pretrained wrote has PEFT's files only: its adapter_config.json stands for the manifest
    (tmp_path / "peft" / MANIFEST_NAME).unlink()
    peft_to_native(tmp_path / "peft", tmp_path / "back")
    assert AdapterManifest.read(tmp_path / "back") == AdapterManifest("loldu", "loldu", "tiny-bert")
    assert (tmp_path / "back" / MANIFEST_NAME).is_file()


def test_bad_folders_get_one_line_errors(tmp_path, capsys):
    assert export_main(["peft", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert "not found" in capsys.readouterr().err
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    assert export_main(["native", str(tmp_path / "lora"), str(tmp_path / "out")]) == 1
    assert "not a LoLDU adapter" in capsys.readouterr().err
