"""Greedy text generation from a causal LM: plain inference, used by training callbacks and evaluations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .data.instruct import pad_token_id


@torch.no_grad()
def generate_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    stop_strings: Sequence[str] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (the new text only), batched with left padding.

    `stop_strings` end a sequence early (HumanEval's stop sequences save most of the generation time).
    The model's train/eval mode is restored afterwards, so a callback can call this mid-training.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so the prompts must end there
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token_id = tokenizer.eos_token_id
            encoded = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
            encoded = {
                key: value.to(device) for key, value in encoded.items() if key in ("input_ids", "attention_mask")
            }
            stopping = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
            generated = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_token_id(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
                **stopping,
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs
