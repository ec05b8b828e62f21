"""One prompt renderer: the bench asks a model exactly the prompt training tokenized for the same row.

Held-out rows with a `system` field go through the bench's own path (load_heldout, Bench, the metrics), and the
token ids the bench feeds the model are compared with what TRL's trainers build from the same rows after
forge's row -> TRL columns conversion: DPOTrainer's and SFTTrainer's `_prepare_dataset`, RewardTrainer's, forge's
token cache and PPO's prompt tokenization. A bench that drops the system turn fails every comparison.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from forge_trl.bench import metrics as M
from forge_trl.bench.runner import Bench, load_heldout
from forge_trl.config.bench import BenchConfig
from forge_trl.data.formats import to_trl_columns
from forge_trl.data.prompts import prompt_ids
from forge_trl.data.rows import Row
from forge_trl.data.token_cache import tokenize_preference_row, tokenize_sft_row

# Only the tokenization of these configs is used; bf16=False lets them be built on any machine.
ARGS = {"report_to": "none", "bf16": False}
HELDOUT = [
    {"system": "Answer with one number.", "prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "6", "answer": "5"},
    {
        "system": "You are terse.",
        "prompt": "Give the opposite of hot.",
        "chosen": "cold",
        "rejected": "warm, I think",
        "answer": "cold",
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    from forge_trl.models.loading import load_tokenizer, resolve_source

    return load_tokenizer(resolve_source("forge-tiny").tokenizer_path)


@pytest.fixture
def heldout(tmp_path):
    """The rows as bench files, read back by the bench's own loader."""
    prompts, pairs = tmp_path / "prompts.jsonl", tmp_path / "pairs.jsonl"
    prompts.write_text("".join(json.dumps({k: r[k] for k in ("system", "prompt", "answer")}) + "\n" for r in HELDOUT))
    pairs.write_text(
        "".join(json.dumps({k: r[k] for k in ("system", "prompt", "chosen", "rejected")}) + "\n" for r in HELDOUT)
    )
    return load_heldout(BenchConfig(prompts=str(prompts), pairs=str(pairs)))


def columns(row: dict, layout: str) -> dict:
    """The TRL columns training builds from the row (the tiny tokenizer has a chat template)."""
    return to_trl_columns(Row(row, "train.jsonl", 1), layout, chat=True)


def unpadded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    return [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(input_ids.tolist(), attention_mask.tolist())]


class _Recorder:
    """Stands in for a policy (`vocab_size` logits per token) or a reward model (`vocab_size=None`: one score per
    sequence) and records the token ids it is given."""

    device = torch.device("cpu")

    def __init__(self, eos_token_id: int, vocab_size: int | None):
        self.eos, self.vocab = eos_token_id, vocab_size
        self.generated_from: list[list[int]] = []
        self.scored: list[list[int]] = []

    def generate(self, input_ids, attention_mask, **_):
        self.generated_from += unpadded(input_ids, attention_mask)
        return torch.cat([input_ids, torch.full((len(input_ids), 1), self.eos)], dim=1)

    def __call__(self, input_ids, attention_mask):
        self.scored += unpadded(input_ids, attention_mask)
        shape = (len(input_ids), 1) if self.vocab is None else (*input_ids.shape, self.vocab)
        return SimpleNamespace(logits=torch.zeros(shape))


def test_the_tiny_chat_template_renders_the_system_turn(tokenizer):
    """Otherwise these rows could not tell a renderer that drops the system turn from one that keeps it."""
    row = HELDOUT[0]
    with_system = prompt_ids(tokenizer, columns(row, "prompt_only")["prompt"])
    without = prompt_ids(tokenizer, [{"role": "user", "content": row["prompt"]}])
    assert tokenizer.decode(with_system).startswith(f"<|system|>{row['system']}")
    assert with_system != without


def test_bench_prompts_are_the_prompts_every_trainer_trained_on(tokenizer, heldout, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from forge_trl.tasks.ppo import tokenize_prompts

    model = _Recorder(tokenizer.eos_token_id, len(tokenizer))
    bench = Bench(BenchConfig(plots=False), heldout)
    bench.responses("recorded-policy", model, tokenizer)
    bench_prompts = model.generated_from
    assert len(bench_prompts) == len(HELDOUT)

    # DPO: TRL's own tokenization of the converted rows, and forge's token cache of the same rows.
    pairs = [columns(r, "prompted_preference") for r in HELDOUT]
    dpo = DPOTrainer._prepare_dataset(
        SimpleNamespace(_tokenizer=tokenizer),
        Dataset.from_list(pairs),
        tokenizer,
        DPOConfig(output_dir=str(tmp_path / "dpo"), **ARGS),
        "train",
    )
    assert list(dpo["prompt_ids"]) == bench_prompts
    assert [tokenize_preference_row(p, tokenizer)["prompt_ids"] for p in pairs] == bench_prompts

    # SFT: the prompt is the part of each sequence that the loss masks out (labels -100).
    sft_rows = [
        columns({"system": r["system"], "prompt": r["prompt"], "response": r["answer"]}, "sft") for r in HELDOUT
    ]
    sft_self = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    sft = SFTTrainer._prepare_dataset(
        sft_self,
        Dataset.from_list(sft_rows),
        tokenizer,
        SFTConfig(output_dir=str(tmp_path / "sft"), **ARGS),
        False,
        None,
        "train",
    )
    masked = [
        ids[: next(i for i, label in enumerate(labels) if label != -100)]
        for ids, labels in zip(sft["input_ids"], sft["labels"])
    ]
    assert masked == bench_prompts
    cached = [tokenize_sft_row(row, tokenizer) for row in sft_rows]
    assert [c["input_ids"][: c["completion_mask"].index(1)] for c in cached] == bench_prompts

    # PPO: the prompt-only rows tokenized for the policy's rollouts.
    prompt_only = Dataset.from_list(
        [columns({"system": r["system"], "prompt": r["prompt"]}, "prompt_only") for r in HELDOUT]
    )
    assert list(tokenize_prompts(prompt_only, tokenizer)["input_ids"]) == bench_prompts


def test_bench_preference_and_reward_sequences_match_dpo_and_reward_training(tokenizer, heldout, tmp_path):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    pairs = [columns(r, "prompted_preference") for r in HELDOUT]
    trained = [tokenize_preference_row(p, tokenizer) for p in pairs]

    policy = _Recorder(tokenizer.eos_token_id, len(tokenizer))
    M.preference_accuracy(policy, tokenizer, heldout.pairs)
    assert policy.scored == (
        [t["prompt_ids"] + t["chosen_ids"] for t in trained] + [t["prompt_ids"] + t["rejected_ids"] for t in trained]
    )

    reward = Dataset.from_list(pairs)
    reward = RewardTrainer._prepare_dataset(
        None, reward, tokenizer, RewardConfig(output_dir=str(tmp_path / "rm"), **ARGS), "train"
    )
    rm = _Recorder(tokenizer.eos_token_id, None)
    bench = Bench(BenchConfig(plots=False), heldout)
    bench._reward_models["recorded-rm"] = (rm, tokenizer)  # the RM under evaluation, already "loaded"
    bench._evaluate_reward_model("recorded-rm")
    assert rm.scored == list(reward["chosen_ids"]) + list(reward["rejected_ids"])
