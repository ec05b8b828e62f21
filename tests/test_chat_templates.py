"""Real chat templates (Qwen3, Qwen3.5, Llama 3.2, Gemma 3, Mistral Nemo) through forge's data path, TRL's
tokenization, the bench and PPO (tests/chat_template_support.py builds each family's tokenizer and a tiny model).

What a family's template must give, and what these tests hold forge to:
- the prompt, rendered with the generation prompt, is a token prefix of prompt + reply;
- SFT trains on exactly the reply and what the template closes it with: the end-of-turn token, plus the newline the
  template writes after it (Qwen, Gemma). That newline is the template's own text between turns; training on it is
  harmless, since generation stops at the end-of-turn token before it. Qwen3 also trains on the empty think block its
  template puts before the last reply, unless `enable_thinking=false` moves that block into the prompt;
- the bench and PPO give a model the very prompt ids training masked out of the loss;
- generation stops at every EOS id of the model's generation_config, not only the tokenizer's EOS;
- `data.chat_template_kwargs` reaches the template in TRL's columns, TRL's config (GRPO/RLOO), the bench and PPO;
- a system turn the template rejects or drops is merged into the first user turn.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from forge_trl.bench import metrics as M
from forge_trl.bench.runner import Bench, HeldOut
from forge_trl.config import DataConfig
from forge_trl.config.bench import BenchConfig
from forge_trl.data import prompts
from forge_trl.data.dataset import prepare_data
from forge_trl.data.prompts import (
    chat_template_kwargs,
    prompt_ids,
    render_prompt,
    sequence_ids,
    set_chat_template_kwargs,
    stop_token_ids,
)
from forge_trl.errors import ConfigError, DataError
from forge_trl.rl.ppo_sampling import cut_at_stop, sample_responses
from tests.chat_template_support import (
    FAMILIES,
    MAIN_FAMILIES,
    family_tokenizer,
    force_tokens,
    save_family,
    stop_tokens,
    tiny_model,
)

ARGS = {"report_to": "none", "bf16": False}  # TRL configs built only for their tokenization settings
NO_THINKING = {"enable_thinking": False}
ROWS = [
    {"prompt": "What is two plus three?", "response": "five", "answer": "five"},
    {"system": "Answer with one word.", "prompt": "Give the opposite of hot.", "response": "cold", "answer": "cold"},
]
# What SFT trains on for the first row (decoded): the reply plus what the template closes it with.
REPLY = {
    "qwen3": "<think>\n\n</think>\n\nfive<|im_end|>\n",
    # Qwen3.5's generation prompt opens the think block ("<think>\n"); the reply closes it.
    "qwen3_5": "\n</think>\n\nfive<|im_end|>\n",
    "llama3": "five<|eot_id|>",
    "gemma3": "five<end_of_turn>\n",
    "mistral": "five</s>",
}
REPLY_NO_THINKING = {"qwen3": "five<|im_end|>\n", "qwen3_5": "five<|im_end|>\n"}


def write_rows(path: Path, rows: list[dict], fields: tuple[str, ...]) -> str:
    path.write_text("".join(json.dumps({k: r[k] for k in fields if k in r}) + "\n" for r in rows))
    return str(path)


def sft_tokenized(tokenizer, tmp_path: Path, kwargs: dict):
    """forge's data path (rows -> TRL columns, filter, kwargs column) and then TRL's own SFT tokenization."""
    from trl import SFTConfig, SFTTrainer

    data = DataConfig(path=write_rows(tmp_path / "sft.jsonl", ROWS, ("system", "prompt", "response")))
    data.chat_template_kwargs = kwargs
    columns = prepare_data("sft", data, tokenizer).train
    trl_self = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    config = SFTConfig(output_dir=str(tmp_path / "sft"), **ARGS)
    return columns, SFTTrainer._prepare_dataset(trl_self, columns, tokenizer, config, False, None, "train")


def trained_prompts(tokenized) -> list[list[int]]:
    """Each SFT sequence's ids before its first trained token (what the loss masks out)."""
    return [
        ids[: next(i for i, label in enumerate(labels) if label != -100)]
        for ids, labels in zip(tokenized["input_ids"], tokenized["labels"])
    ]


class PromptRecorder:
    """Stands in for a policy: records the prompt ids `generate` is given and answers with one stop token."""

    device = torch.device("cpu")

    def __init__(self, stop: int):
        self.stop = stop
        self.prompts: list[list[int]] = []

    def generate(self, input_ids, attention_mask, **_):
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            self.prompts.append([t for t, m in zip(ids, mask) if m])
        return torch.cat([input_ids, torch.full((len(input_ids), 1), self.stop)], dim=1)


def bench_and_ppo_prompts(tokenizer, tmp_path: Path, kwargs: dict) -> tuple[list[list[int]], list[list[int]]]:
    """The prompt ids the bench generates from, and PPO's tokenized prompt-only rows, for ROWS."""
    from forge_trl.tasks.ppo import tokenize_prompts

    recorder = PromptRecorder(tokenizer.eos_token_id)
    set_chat_template_kwargs(tokenizer, kwargs)
    heldout = HeldOut([{k: r[k] for k in ("system", "prompt") if k in r} for r in ROWS], [None] * len(ROWS), [], None)
    Bench(BenchConfig(plots=False), heldout).responses("recorded", recorder, tokenizer)
    data = DataConfig(path=write_rows(tmp_path / "prompts.jsonl", ROWS, ("system", "prompt")))
    data.chat_template_kwargs = kwargs
    ppo = tokenize_prompts(prepare_data("prompt_only", data, tokenizer).train, tokenizer)
    return recorder.prompts, [list(ids) for ids in ppo["input_ids"]]


# ----- rendering -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_the_prompt_is_a_token_prefix_of_prompt_and_reply(family):
    tokenizer = family_tokenizer(family)
    reply = [{"role": "assistant", "content": "five"}]
    for prompt in (
        [{"role": "user", "content": "What is two plus three?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is two plus three?"}],
    ):
        alone, whole = prompt_ids(tokenizer, prompt), sequence_ids(tokenizer, prompt, reply)
        assert whole[: len(alone)] == alone, family
        assert len(whole) > len(alone)
    assert tokenizer.decode(whole).count("Be brief.") == 1  # the system text is in the sequence, once


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_sft_trains_on_the_reply_and_its_end_of_turn(family, tmp_path):
    tokenizer = family_tokenizer(family)
    columns, tokenized = sft_tokenized(tokenizer, tmp_path, {})
    first = tokenized[0]
    trained = [t for t, label in zip(first["input_ids"], first["labels"]) if label != -100]
    assert tokenizer.decode(trained) == REPLY[family]
    assert FAMILIES[family].end_of_turn in tokenizer.convert_ids_to_tokens(trained)
    # forge renders the same prompt TRL masked out, for every row (the second has a system field).
    assert trained_prompts(tokenized) == [prompt_ids(tokenizer, row["prompt"]) for row in columns]


@pytest.mark.parametrize("family", MAIN_FAMILIES)
def test_bench_and_ppo_give_the_model_the_prompt_training_masked_out(family, tmp_path):
    tokenizer = family_tokenizer(family)
    _, tokenized = sft_tokenized(tokenizer, tmp_path, {})
    bench, ppo = bench_and_ppo_prompts(tokenizer, tmp_path, {})
    assert bench == trained_prompts(tokenized)
    assert ppo == trained_prompts(tokenized)


# ----- data.chat_template_kwargs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen3", "qwen3_5"])
def test_enable_thinking_false_reaches_training_bench_and_ppo(family, tmp_path):
    tokenizer = family_tokenizer(family)
    columns, tokenized = sft_tokenized(tokenizer, tmp_path, NO_THINKING)
    assert columns[0]["chat_template_kwargs"] == NO_THINKING  # TRL's own column, read by its tokenization
    first = tokenized[0]
    trained = [t for t, label in zip(first["input_ids"], first["labels"]) if label != -100]
    assert tokenizer.decode(trained) == REPLY_NO_THINKING[family]
    masked = trained_prompts(tokenized)
    assert all(tokenizer.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") for ids in masked)

    bench, ppo = bench_and_ppo_prompts(tokenizer, tmp_path, NO_THINKING)
    assert bench == masked and ppo == masked

    # Without the kwargs the generation prompt has no closed think block: the kwargs made the difference.
    set_chat_template_kwargs(tokenizer, {})
    plain = prompt_ids(tokenizer, columns[0]["prompt"])
    assert plain != masked[0] and not tokenizer.decode(plain).endswith("</think>\n\n")


def test_chat_template_kwargs_reach_the_grpo_and_rloo_configs(tmp_path):
    from trl import GRPOConfig, RLOOConfig

    from forge_trl.commands.compose import compose
    from forge_trl.config import to_typed
    from forge_trl.tasks.grpo import GRPOTask
    from forge_trl.tasks.rloo import RLOOTask

    for task, config_cls in ((GRPOTask, GRPOConfig), (RLOOTask, RLOOConfig)):
        cfg = to_typed(
            compose(
                [
                    f"task={task.name}",
                    "task.reward_model.checkpoint_path=/no/rm",
                    "+data.chat_template_kwargs.enable_thinking=false",
                ]
            )
        )
        assert cfg.data.chat_template_kwargs == NO_THINKING  # the CLI override
        ctx = SimpleNamespace(
            cfg=cfg, output_dir=tmp_path, eval_dataset=None, precision="fp32", routing=None, injection=None
        )
        args = task().trl_config(config_cls, ctx)
        assert args.chat_template_kwargs == NO_THINKING


def test_the_bench_renders_a_checkpoint_with_the_kwargs_it_was_trained_with(tmp_path):
    tokenizer = family_tokenizer("qwen3")
    data = DataConfig(path=write_rows(tmp_path / "sft.jsonl", ROWS, ("prompt", "response")))
    data.chat_template_kwargs = NO_THINKING
    stats = prepare_data("sft", data, tokenizer).stats  # forge_run.json's `data`
    assert stats["chat_template_kwargs"] == NO_THINKING

    fresh = family_tokenizer("qwen3")
    Bench(BenchConfig(plots=False), HeldOut([], [], [], None)).bind_template_kwargs(fresh, SimpleNamespace(data=stats))
    assert chat_template_kwargs(fresh) == NO_THINKING
    override = BenchConfig(plots=False, chat_template_kwargs={"enable_thinking": True})
    Bench(override, HeldOut([], [], [], None)).bind_template_kwargs(fresh, SimpleNamespace(data=stats))
    assert chat_template_kwargs(fresh) == {"enable_thinking": True}
    Bench(BenchConfig(plots=False), HeldOut([], [], [], None)).bind_template_kwargs(fresh, None)  # a plain model
    assert chat_template_kwargs(fresh) == {}


def test_a_tokenized_cache_is_keyed_by_the_template_kwargs(tmp_path):
    from forge_trl.data.token_cache import build_cache, load_cache

    source = write_rows(tmp_path / "sft.jsonl", ROWS, ("system", "prompt", "response"))
    built = DataConfig(path=source)
    built.chat_template_kwargs = NO_THINKING
    tokenizer = family_tokenizer("qwen3")
    build_cache(
        source, tmp_path / "cache", task_name="sft", layout="sft", data=built, tokenizer=tokenizer, tokenizer_source="t"
    )
    cached, _, _ = load_cache(str(tmp_path / "cache"), "sft", built, family_tokenizer("qwen3"), apply_max_rows=False)
    first = cached[0]
    assert tokenizer.decode(first["input_ids"][first["completion_mask"].index(1) :]) == REPLY_NO_THINKING["qwen3"]
    with pytest.raises(DataError, match=r"data\.chat_template_kwargs .*enable_thinking.* \(this run: none\)"):
        load_cache(str(tmp_path / "cache"), "sft", DataConfig(path=source), tokenizer, apply_max_rows=False)


@pytest.mark.parametrize(
    "value, message",
    [([1, 2], "expected a mapping"), ({"add_generation_prompt": True}, "'add_generation_prompt' is set by forge")],
)
def test_chat_template_kwargs_must_be_a_mapping_of_template_variables(value, message):
    with pytest.raises(ConfigError, match=rf"^data\.chat_template_kwargs: .*{message}"):
        DataConfig(chat_template_kwargs=value)


# ----- system turns --------------------------------------------------------------------------------------------------


def test_a_template_that_rejects_a_system_turn_gets_it_merged_into_the_first_user_turn(tmp_path, monkeypatch, caplog):
    from jinja2.exceptions import TemplateError

    monkeypatch.setattr(prompts, "_system_support", {})  # probe afresh, so that the one warning is this test's
    tokenizer = family_tokenizer("mistral_v0_2")
    system_row = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Hot?"}]
    with pytest.raises(TemplateError, match="roles must alternate"):
        tokenizer.apply_chat_template(system_row, tokenize=False)

    with caplog.at_level(logging.WARNING, logger="forge_trl.data.prompts"):
        columns, tokenized = sft_tokenized(tokenizer, tmp_path, {})
        render_prompt(tokenizer, system_row)
    merged = columns[1]["prompt"]  # the row with a system field, as TRL received it
    assert merged == [{"role": "user", "content": "Answer with one word.\n\nGive the opposite of hot."}]
    assert tokenizer.decode(tokenized[1]["input_ids"]).startswith("<s>[INST] Answer with one word.\n\nGive the")
    assert len([r for r in caplog.records if "system turn" in r.getMessage()]) == 1  # logged once


def test_a_template_that_drops_the_system_turn_from_the_sequence_gets_it_merged():
    """Mistral Nemo renders the system text only with the last user turn: with a reply after it, it vanishes."""
    tokenizer = family_tokenizer("mistral")
    system_row = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hot?"}]
    reply = [{"role": "assistant", "content": "cold"}]
    assert "Be brief." not in tokenizer.apply_chat_template(system_row + reply, tokenize=False)
    assert "Be brief." in tokenizer.apply_chat_template(system_row, tokenize=False)
    assert tokenizer.decode(sequence_ids(tokenizer, system_row, reply)) == "<s>[INST]Be brief.\n\nHot?[/INST]cold</s>"


def test_templates_that_render_a_system_turn_keep_their_own_rendering():
    for family in ("qwen3", "llama3", "gemma3"):
        tokenizer = family_tokenizer(family)
        system_row = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hot?"}]
        native = tokenizer.apply_chat_template(system_row, tokenize=False, add_generation_prompt=True)
        assert render_prompt(tokenizer, system_row) == native
    assert native.startswith("<bos><start_of_turn>user\nBe brief.\n\nHot?")  # Gemma 3 merges it itself


# ----- stopping ------------------------------------------------------------------------------------------------------

STOP_CASES = [(family, token) for family in MAIN_FAMILIES for token in stop_tokens(family)]


@pytest.mark.parametrize("family, token", STOP_CASES)
def test_generation_stops_at_each_eos_id_of_the_generation_config(family, token):
    tokenizer = family_tokenizer(family)
    model = tiny_model(tokenizer, family)
    stop = tokenizer.convert_tokens_to_ids(token)
    assert stop in stop_token_ids(tokenizer, model) and tokenizer.eos_token_id in stop_token_ids(tokenizer, model)
    word = tokenizer.encode("five", add_special_tokens=False)[0]
    prompt = [{"role": "user", "content": "What is two plus three?"}]

    handle = force_tokens(model, [word, stop, word])
    generations = M.generate_responses(model, tokenizer, [{"prompt": prompt[0]["content"]}], max_new_tokens=6)
    handle.remove()
    assert (generations[0].tokens, generations[0].stopped) == (1, True)
    assert generations[0].text == tokenizer.decode([word], skip_special_tokens=True)

    # PPO's sampler: generation stops there too, and the response mask ends on the stop token.
    handle = force_tokens(model, [word, stop, word])
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    pad = tokenizer.pad_token_id
    stops = stop_token_ids(tokenizer, model)
    responses = sample_responses(
        model,
        ids,
        torch.ones_like(ids),
        seeds=[0],
        temperature=1.0,
        max_new_tokens=6,
        stop_ids=stops,
        pad_token_id=pad,
    )
    handle.remove()
    assert responses[0, :2].tolist() == [word, stop]
    assert responses[0, 2:].tolist() == [pad] * 4  # generate ended there: nothing was sampled after it
    _, mask, has_stop = cut_at_stop(responses, stops, pad)
    assert mask[0].tolist() == [1, 1, 0, 0, 0, 0] and bool(has_stop[0])


def test_ppo_stop_token_id_still_overrides_the_model_stop_ids():
    responses = torch.tensor([[5, 7, 9, 9], [5, 8, 7, 9]])
    _, mask, has_stop = cut_at_stop(responses, [7], pad_token_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]] and has_stop.tolist() == [True, True]
    _, mask, has_stop = cut_at_stop(responses, [8], pad_token_id=0)
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]] and has_stop.tolist() == [False, True]


# ----- reasoning blocks in the bench's checkers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply, answer",
    [
        ("<think>\n2 and 3 make 5\n</think>\n\nfive", "five"),
        ("<think>\n\n</think>\n\nfive", "five"),
        ("2 and 3 make 5</think>\n\nfive", "five"),  # the generation prompt opened the block (Qwen3.5)
        ("<think>\n2 and 3 make", ""),  # never closed: all reasoning, no answer
        ("five", "five"),
    ],
)
def test_strip_reasoning_leaves_the_answer(reply, answer):
    assert M.strip_reasoning(reply) == answer


@pytest.mark.parametrize("strip, expected", [(True, 1.0), (False, 0.0)])
def test_the_bench_checkers_ignore_a_reasoning_block_unless_told_to_keep_it(strip, expected, tmp_path):
    from forge_trl.data.demo_suite import check_answer

    path = save_family("qwen3", tmp_path / "qwen3-tiny")
    cfg = BenchConfig(plots=False, strip_reasoning=strip, format_regex="[a-z]+")
    bench = Bench(cfg, HeldOut([{"prompt": "What is two plus three?"}], ["five"], [], check_answer))
    # The checkpoint's reply, as generation would return it (cached, so no weights need to produce it).
    bench._responses[str(path.resolve())] = [M.Generation("<think>\n2 and 3\n</think>\n\nfive", 9, True)]
    result = bench.evaluate(str(path))
    assert result["checker_accuracy"] == expected
    assert result["format_compliance"] == expected
    assert BenchConfig().strip_reasoning  # stripping is the default
