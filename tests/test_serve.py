"""The adapter server: the real LitServe server on a free localhost port, talked to with httpx, on a tiny
BERT that borrows MiniLM's tokenizer; and the Python API (AdapterService) for generation."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
import torch
import transformers

httpx = pytest.importorskip("httpx", reason="the serve extra is not installed: pip install 'loldu-lightning[serve]'")
pytest.importorskip("litserve", reason="the serve extra is not installed: pip install 'loldu-lightning[serve]'")

from loldu_lightning.export.convert import native_to_peft  # noqa: E402
from loldu_lightning.loldu import LoLDUConfig, inject, load_adapter, save_adapter  # noqa: E402
from loldu_lightning.models import byte_level_tokenizer, minilm_path  # noqa: E402
from loldu_lightning.serve import AdapterService, Request, RequestError  # noqa: E402
from loldu_lightning.serve.process import served  # noqa: E402
from tests.tiny_models import tiny_model  # noqa: E402

MAX_LENGTH = 48
SENTENCES = ["a gripping, beautifully acted film", "a dull, lifeless mess", "it was fine"]


def tiny_bert(num_labels: int = 2) -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    return transformers.BertForSequenceClassification(config).eval()


def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A LoLDU adapter (r=8 on query/value) with values far from its init, and its own head."""
    inject(model, LoLDUConfig(rank=8, target_modules=["query", "value"], seed=seed, residual="ldu"))
    generator = torch.Generator().manual_seed(50 + seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".z") or name.startswith("classifier"):
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    base = root / "base"
    tiny_bert().save_pretrained(base)
    transformers.AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(base)
    adapters = root / "adapters"
    for i in range(2):
        save_adapter(trained_like(tiny_bert(), i), adapters / f"a{i}", modules_to_save=["classifier"])
    save_adapter(trained_like(tiny_bert(num_labels=3), 2), root / "native_p2", modules_to_save=["classifier"])
    native_to_peft(root / "native_p2", adapters / "p2")  # PEFT's layout, a 3-label head
    other = tiny_bert()
    with torch.no_grad():
        other.bert.encoder.layer[0].attention.self.query.weight.mul_(1.01)
    save_adapter(trained_like(other, 3), adapters / "misfit", modules_to_save=["classifier"])
    save_adapter(trained_like(tiny_bert(), 4), root / "late", modules_to_save=["classifier"])
    return {"root": root, "base": base, "adapters": adapters, "late": root / "late", "p2": root / "native_p2"}


def offline_probabilities(folders: dict[str, Path], folder: Path, text: str, num_labels: int = 2) -> list[float]:
    model = load_adapter(tiny_bert(num_labels), folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["base"])
    with torch.no_grad():
        return torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1).tolist()


@pytest.fixture(scope="module")
def server(folders: dict[str, Path]):
    arguments = ["--model", str(folders["base"]), "--adapters", str(folders["adapters"]), "--batch-timeout", "1.0"]
    arguments += ["--max-length", str(MAX_LENGTH), "--accelerator", "cpu"]
    log_file = folders["root"] / "server.log"
    with served(arguments, log_file, timeout_s=240) as url:
        yield url, log_file


def test_answers_equal_the_adapter_run_offline(server, folders) -> None:
    url, _ = server
    loaded = httpx.get(f"{url}/adapters", timeout=30).json()
    assert loaded["adapters"] == ["a0", "a1", "p2"]  # the misfit adapter was refused at start
    for name, folder, labels in (
        ("a0", folders["adapters"] / "a0", 2),
        ("a1", folders["adapters"] / "a1", 2),
        ("p2", folders["p2"], 3),
    ):
        answer = httpx.post(f"{url}/predict", json={"adapter": name, "inputs": SENTENCES[0]}, timeout=60).json()
        expected = offline_probabilities(folders, folder, SENTENCES[0], labels)
        assert answer["probabilities"] == pytest.approx(expected, abs=1e-5), name
        assert answer["label"] == max(range(labels), key=expected.__getitem__)


def test_misfit_adapter_refused_in_one_line(server) -> None:
    _, log = server
    lines = [line for line in log.read_text().splitlines() if "adapter misfit refused" in line]
    assert len(lines) == 1 and "differs from the one the adapter was trained on" in lines[0]


def test_three_adapters_sent_together_are_served_in_one_batch(server) -> None:
    url, _ = server
    before = httpx.get(f"{url}/stats", timeout=30).json()
    requests = [{"adapter": name, "inputs": text} for name, text in zip(["a0", "a1", "p2"], SENTENCES, strict=True)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda body: httpx.post(f"{url}/predict", json=body, timeout=60).json(), requests))
    batches = {answer["batch"]["id"] for answer in answers}
    assert len(batches) == 1, answers
    assert answers[0]["batch"]["size"] == 3 and answers[0]["batch"]["adapters"] == 3
    after = httpx.get(f"{url}/stats", timeout=30).json()
    assert after["batches"] == before["batches"] + 1 and after["most_adapters_in_a_batch"] >= 3
    assert [len(a["probabilities"]) for a in answers] == [2, 2, 3]


def test_hot_add_and_remove(server, folders) -> None:
    url, _ = server
    added = httpx.post(f"{url}/adapters", json={"name": "late", "path": str(folders["late"])}, timeout=60)
    assert added.status_code == 200 and "late" in added.json()["adapters"]
    answer = httpx.post(f"{url}/predict", json={"adapter": "late", "inputs": SENTENCES[1]}, timeout=60).json()
    assert answer["probabilities"] == pytest.approx(
        offline_probabilities(folders, folders["late"], SENTENCES[1]), abs=1e-5
    )
    again = httpx.post(f"{url}/adapters", json={"name": "late", "path": str(folders["late"])}, timeout=60)
    assert again.status_code == 400 and "loaded already" in again.json()["error"]
    assert httpx.delete(f"{url}/adapters/late", timeout=60).status_code == 200
    gone = httpx.post(f"{url}/predict", json={"adapter": "late", "inputs": SENTENCES[1]}, timeout=60)
    assert gone.status_code == 404 and "unknown adapter 'late'" in gone.json()["error"]
    assert "late" not in httpx.get(f"{url}/adapters", timeout=30).json()["adapters"]
    assert httpx.delete(f"{url}/adapters/late", timeout=60).status_code == 404
    misfit = httpx.post(f"{url}/adapters", json={"name": "m", "path": str(folders["adapters"] / "misfit")}, timeout=60)
    assert misfit.status_code == 400 and "\n" not in misfit.json()["error"]


def test_bad_requests_get_one_line_4xx_and_do_not_hurt_their_batch(server) -> None:
    url, _ = server
    bad = [
        ({"adapter": "nope", "inputs": "hi"}, 404, "unknown adapter"),
        ({"adapter": "a0", "inputs": 5}, 422, "inputs must be a string"),
        ({"adapter": "a0", "inputs": "word " * 200}, 413, f"at most {MAX_LENGTH}"),
        ({"adapter": "a0"}, 422, "needs"),
        ({"adapter": "a0", "inputs": "hi", "temperature": 2}, 422, "unknown field"),
    ]
    good = {"adapter": "a1", "inputs": SENTENCES[2]}
    with concurrent.futures.ThreadPoolExecutor(len(bad) + 1) as pool:
        futures = [pool.submit(httpx.post, f"{url}/predict", json=body, timeout=60) for body, _, _ in bad]
        good_answer = pool.submit(httpx.post, f"{url}/predict", json=good, timeout=60).result()
        for future, (_, status, text) in zip(futures, bad, strict=True):
            response = future.result()
            assert response.status_code == status, response.text
            assert text in response.json()["error"] and "\n" not in response.json()["error"]
    assert good_answer.status_code == 200 and len(good_answer.json()["probabilities"]) == 2
    not_json = httpx.post(
        f"{url}/predict", content=b"{not json", headers={"content-type": "application/json"}, timeout=60
    )
    assert not_json.status_code == 422  # FastAPI refuses a body that is not JSON
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def tiny_llama() -> transformers.LlamaForCausalLM:
    return tiny_model("tiny-llama", max_position_embeddings=128)


def test_service_generation_equals_each_adapter_offline(tmp_path: Path) -> None:
    for i in range(2):
        model = tiny_llama()
        inject(model, LoLDUConfig(rank=4, target_modules=["q_proj", "v_proj"], seed=i, residual="ldu"))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(".z"):
                    parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(i)) * 2)
        save_adapter(model, tmp_path / f"g{i}")
    service = AdapterService(tiny_llama(), byte_level_tokenizer(), "generation", max_length=32, max_new_tokens=8)
    assert service.load_folder(tmp_path) == {}
    prompts = ["abcdef", "uvwxyz"]  # equal lengths: no padding, so alone and batched see the same tokens
    answers = service.predict([service.check(Request(f"g{i}", p, 6)) for i, p in enumerate(prompts)])
    tokenizer = byte_level_tokenizer()
    for i, prompt in enumerate(prompts):
        model = load_adapter(tiny_llama(), tmp_path / f"g{i}")
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=258, eos_token_id=257)
        assert answers[i]["text"] == tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answers[0]["text"] != answers[1]["text"] or prompts[0] == prompts[1]
    with pytest.raises(RequestError, match="max_new_tokens must be an integer from 1 to 8"):
        service.check(Request("g0", "abc", 9))
