"""The embedded default models, built locally because no model hub is reachable.

`forge-tiny` is a random-init Qwen3 and `forge-tiny-moe` a random-init Qwen3-MoE, both with a byte-level
BPE tokenizer trained on the demo corpus. Each is built once into a content-keyed cache directory (the key
hashes the corpus, the tokenizer settings and the model config), so reruns reuse it and any change to those
inputs gives a new directory instead of a stale one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from forge_trl.data.demo_suite import ASSISTANT_TOKEN, END_TOKEN, USER_TOKEN, ensure_demo_suite
from forge_trl.files import write_dir_atomically

TINY_NAMES = ("forge-tiny", "forge-tiny-moe")
BUILD_VERSION = "1"
VOCAB_SIZE = 2048
PAD, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", END_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, "<|system|>"

# Assistant content sits inside {% generation %} so TRL's assistant-only loss can find it. No newline follows
# the end token, so a completion ends exactly at EOS.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

_COMMON = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)
MODEL_CONFIGS = {
    "forge-tiny": dict(model_type="qwen3", intermediate_size=384, **_COMMON),
    "forge-tiny-moe": dict(
        model_type="qwen3_moe",
        intermediate_size=384,
        moe_intermediate_size=96,
        num_experts=8,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        norm_topk_prob=True,
        **_COMMON,
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("FORGE_TRL_CACHE", Path.home() / ".cache" / "forge_trl"))


def _build_key(name: str, corpus: bytes) -> str:
    spec = json.dumps(
        {"v": BUILD_VERSION, "vocab": VOCAB_SIZE, "template": CHAT_TEMPLATE, "config": MODEL_CONFIGS[name]},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(spec + corpus).hexdigest()[:12]


def build_tokenizer(corpus_lines: list[str]):
    """Train a byte-level BPE on the corpus and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, EOS, USER, ASSISTANT, SYSTEM],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_CONFIGS["forge-tiny"]["max_position_embeddings"],
    )


def build_model(name: str, tokenizer, seed: int = 0):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(MODEL_CONFIGS[name])
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **spec,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


class _NoModelOnThisRank(Exception):
    """save_pretrained wrote no model files in this process (a rank other than 0 of a process group)."""


def _wait_for_build(target: Path, timeout_s: float = 600.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while not (target / "config.json").is_file():
        if time.monotonic() > deadline:
            from forge_trl.errors import ModelError

            raise ModelError(
                f"{target}: waited {timeout_s:.0f} s for rank 0 to build the built-in model; build it once before "
                "launching (python -c 'from forge_trl.models.tiny import ensure_tiny; ensure_tiny()')"
            )
        time.sleep(0.1)
    return target


def ensure_tiny(name: str = "forge-tiny") -> Path:
    """Return the directory of the built-in model `name`, building it on first use."""
    if name not in MODEL_CONFIGS:
        raise KeyError(name)
    files = ensure_demo_suite()
    corpus = Path(files["corpus"]).read_bytes()
    target = cache_root() / f"{name}-{_build_key(name, corpus)}"
    if (target / "config.json").is_file():
        return target
    # Every rank of a multi-process launch may get here at once: each builds into its own temporary directory (pid
    # and random part: two hosts sharing a cache stay apart) and the first to publish it wins.
    tokenizer = build_tokenizer(corpus.decode("utf-8").splitlines())
    model = build_model(name, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if not (tmp / "config.json").is_file():
            # Inside an initialised torch.distributed group, save_pretrained writes model files on rank 0 only, so
            # this rank holds a tokenizer without a model. Publishing that would poison the cache; rank 0 is
            # building the same directory, so wait for its build instead.
            raise _NoModelOnThisRank

    try:
        write_dir_atomically(target, save, overwrite=False)
    except _NoModelOnThisRank:
        return _wait_for_build(target)
    except FileExistsError:  # another process finished the same build first
        if not (target / "config.json").is_file():
            raise  # not that: a directory without a model is in the way
    return target
