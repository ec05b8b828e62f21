"""Test tokenizers, and tiny models, for real model families' chat templates.

A family's tokenizer is forge's tiny byte-level BPE (`forge-tiny`) plus the family's added tokens, with eos, bos and
pad set as the real model's tokenizer sets them, and the family's real chat template from
tests/fixtures/chat_templates/ (SOURCES.md there says where each was read). What this reproduces: the template text,
every special token as one token, and the special tokens the real tokenizer names. What it does not: token ids, and
the BPE merges of ordinary text (Qwen's vocabulary has one token for "\\n\\n", forge-tiny's has none), so whitespace
next to a special token may split differently in the real model (tests/real_vocab.py builds Qwen3's real vocabulary
for that).

`tiny_model` is a random Qwen3-architecture model sized to the tokenizer whose `generation_config.eos_token_id`
lists the family's stop tokens as the real model's generation_config.json does (an int for Mistral, a list for the
others); `save_family` writes both as a model directory forge can load. `force_tokens` makes a model emit a chosen
sequence of tokens, to test where generation stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    """How a family's tokenizer differs from forge-tiny's."""

    template: str  # fixture file stem under tests/fixtures/chat_templates/
    added: tuple[tuple[str, bool], ...]  # (token, special) in the order the real tokenizer lists them
    eos: str
    bos: str | None
    pad: str | None  # None: the real tokenizer has none, and forge pads with EOS (forge_trl.models.loading)
    generation_eos: tuple[str, ...] | str  # the real generation_config.json `eos_token_id`, as tokens
    end_of_turn: str  # the token the template closes an assistant turn with


_QWEN_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
)
_QWEN_STOPS = ("<|im_end|>", "<|endoftext|>")
_MISTRAL_TOKENS = tuple(
    (token, True)
    for token in (
        "<unk>",
        "<s>",
        "</s>",
        "[INST]",
        "[/INST]",
        "[AVAILABLE_TOOLS]",
        "[/AVAILABLE_TOOLS]",
        "[TOOL_RESULTS]",
        "[/TOOL_RESULTS]",
        "[TOOL_CALLS]",
    )
)

# Special tokens, eos/bos/pad and generation_config EOS ids of: Qwen/Qwen3-0.6B (`<think>` and `</think>` are added
# tokens that are not special); Qwen3.5, whose tokenizer settings follow Qwen3's; meta-llama/Llama-3.2-3B-Instruct;
# google/gemma-3-4b-it (the tokenizer's EOS is `<eos>`, the turn ends with `<end_of_turn>`: only the generation config
# lists both); mistralai/Mistral-Nemo-Instruct-2407 (`mistral`; one EOS id) and Mistral-7B-Instruct-v0.2
# (`mistral_v0_2`, whose template rejects a system turn).
FAMILIES: dict[str, Family] = {
    "qwen3": Family("qwen3", _QWEN_TOKENS, "<|im_end|>", None, "<|endoftext|>", _QWEN_STOPS, "<|im_end|>"),
    "qwen3_5": Family("qwen3_5", _QWEN_TOKENS, "<|im_end|>", None, "<|endoftext|>", _QWEN_STOPS, "<|im_end|>"),
    "llama3": Family(
        "llama3",
        tuple(
            (token, True)
            for token in (
                "<|begin_of_text|>",
                "<|end_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eom_id|>",
                "<|eot_id|>",
                "<|python_tag|>",
            )
        ),
        "<|eot_id|>",
        "<|begin_of_text|>",
        None,
        ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        "<|eot_id|>",
    ),
    "gemma3": Family(
        "gemma3",
        tuple(
            (token, True)
            for token in ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>")
        ),
        "<eos>",
        "<bos>",
        "<pad>",
        ("<eos>", "<end_of_turn>"),
        "<end_of_turn>",
    ),
    "mistral": Family("mistral", _MISTRAL_TOKENS, "</s>", "<s>", None, "</s>", "</s>"),
    "mistral_v0_2": Family("mistral_v0_2", _MISTRAL_TOKENS, "</s>", "<s>", None, "</s>", "</s>"),
}
# The five families every chat-template test runs over (mistral_v0_2 is there for its system-turn rejection).
MAIN_FAMILIES = ("qwen3", "qwen3_5", "llama3", "gemma3", "mistral")


def template_text(family: str) -> str:
    return (TEMPLATES / f"{FAMILIES[family].template}.jinja").read_text(encoding="utf-8")


def family_tokenizer(family: str):
    """A fresh tokenizer for `family` (fresh: tests bind template kwargs to it)."""
    from tokenizers import AddedToken

    from forge_trl.models.loading import load_tokenizer, resolve_source

    spec = FAMILIES[family]
    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    for special in (True, False):
        tokens = [AddedToken(t, special=s, normalized=False) for t, s in spec.added if s == special]
        tokenizer.add_tokens(tokens, special_tokens=special)
    tokenizer.eos_token = spec.eos
    tokenizer.bos_token = spec.bos
    tokenizer.pad_token = spec.pad or spec.eos
    tokenizer.chat_template = template_text(family)
    return tokenizer


def stop_tokens(family: str) -> tuple[str, ...]:
    """The family's generation_config EOS tokens, as a tuple even where the real config holds one int."""
    eos = FAMILIES[family].generation_eos
    return (eos,) if isinstance(eos, str) else eos


def generation_eos_ids(tokenizer, family: str) -> int | list[int]:
    """The family's generation_config `eos_token_id` in this tokenizer's ids (an int where the real one is)."""
    eos = FAMILIES[family].generation_eos
    if isinstance(eos, str):
        return tokenizer.convert_tokens_to_ids(eos)
    return [tokenizer.convert_tokens_to_ids(token) for token in eos]


def tiny_model(tokenizer, family: str, seed: int = 0):
    """A random one-layer Qwen3-architecture causal LM over the tokenizer's vocabulary, with the family's EOS ids in
    its generation config."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=generation_eos_ids(tokenizer, family),
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = generation_eos_ids(tokenizer, family)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_family(family: str, directory: Path) -> Path:
    """The family's tokenizer and a tiny model, written as a model directory (`model.name_or_path=<directory>`)."""
    tokenizer = family_tokenizer(family)
    tiny_model(tokenizer, family).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def force_tokens(model, tokens: Sequence[int], bias: float = 1e4):
    """Make `model` emit `tokens[k]` as its k-th generated token (the last one from then on), whatever the input:
    a hook on the LM head adds `bias` to that token's logit at the last position of each forward pass (one pass per
    generated token). Returns the hook handle; call `.remove()` to undo."""
    calls = {"n": 0}

    def hook(module, inputs, logits):
        token = tokens[min(calls["n"], len(tokens) - 1)]
        calls["n"] += 1
        logits = logits.clone()
        logits[:, -1, token] += bias
        return logits

    return model.lm_head.register_forward_hook(hook)
