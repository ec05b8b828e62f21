"""Held-out metrics computed directly from a model: greedy responses and preference accuracy.

A held-out prompt is a row (`{prompt, [system]}`, or a bare prompt string) or a preference pair row. It takes the
row -> TRL columns path that training rows take and goes through the one prompt renderer
(forge_trl/data/prompts.py), so the model is asked exactly what it was trained on: system turn, chat template,
generation prompt and special tokens included. A response ends at any of the model's stop ids
(`prompts.stop_token_ids`: the tokenizer's EOS and every id of `generation_config.eos_token_id`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from forge_trl.data.prompts import (
    completion_column,
    encode,
    encode_prompts,
    heldout_columns,
    heldout_prompt,
    is_conversational,
    render_sequence,
    split_preference,
    stop_token_ids,
)

# A held-out prompt: a row with `prompt` and optionally `system` (extra fields ignored), or the bare prompt text.
HeldOutPrompt = Union[dict, str]
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + ".*?" + re.escape(THINK_CLOSE), re.DOTALL)


@dataclass
class Generation:
    """One sampled response: its text, its number of new tokens, and whether it ended with a stop id in budget (for
    an API target: the server's completion tokens, and whether it finished for a reason other than the budget).
    `error`: why an API request for it failed (the text is then empty)."""

    text: str
    tokens: int
    stopped: bool
    error: Optional[str] = None


@torch.no_grad()
def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[HeldOutPrompt],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    temperature: float | None = None,
    progress: bool = False,
) -> list[Generation]:
    """Responses to `prompts` (left-padded batches): greedy, or sampled at `temperature` when it is set. A response
    ends at the first of the model's stop ids (`stop_token_ids`), which is not part of its text."""
    from tqdm.auto import tqdm

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs = []
    stops = stop_token_ids(tokenizer, model)
    try:
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="generating", unit="batch", disable=not progress or len(starts) < 2):
            columns = [heldout_prompt(p, tokenizer) for p in prompts[start : start + batch_size]]
            batch = encode_prompts(tokenizer, columns, return_tensors="pt", padding=True).to(model.device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=temperature is not None,
                temperature=temperature,
                top_k=0 if temperature is not None else None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=stops,
            )
            for row in generated[:, batch["input_ids"].shape[1] :].tolist():
                # generate() pads finished rows with pad (which may be a stop id): the response ends at the first stop.
                end = next((i for i, token in enumerate(row) if token in stops), None)
                kept = row if end is None else row[:end]
                outputs.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept), end is not None))
    finally:
        tokenizer.padding_side = side
    return outputs


def generate(
    model,
    tokenizer,
    prompts: Sequence[HeldOutPrompt],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 32,
    temperature: float | None = None,
) -> list[str]:
    """The texts of `generate_responses`."""
    return [
        g.text
        for g in generate_responses(
            model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, temperature=temperature
        )
    ]


@torch.no_grad()
def mean_completion_logps(
    model, tokenizer, tokenized: Sequence[tuple[list[int], list[int]]], *, batch_size: int = 32
) -> list[float]:
    """Per-token average log-probability of each completion given its prompt (ORPO's normalisation); `tokenized`
    holds (prompt ids, completion ids) pairs."""
    results = []
    for start in range(0, len(tokenized), batch_size):
        chunk = tokenized[start : start + batch_size]
        width = max(len(p_ids) + len(c_ids) for p_ids, c_ids in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, (p_ids, c_ids) in enumerate(chunk):
            end = len(p_ids) + len(c_ids)
            input_ids[row, :end] = torch.tensor(p_ids + c_ids)
            attention[row, :end] = 1
            labels[row, len(p_ids) : end] = torch.tensor(c_ids, dtype=torch.long)
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = labels[:, 1:].to(model.device)
        mask = targets != -100
        token_logps = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        results.extend((token_logps.sum(-1) / mask.sum(-1).clamp(min=1)).tolist())
    return results


def preference_accuracy(model, tokenizer, rows: Sequence[dict]) -> float:
    """Share of pairs where mean logp(chosen) > mean logp(rejected), each pair tokenized as DPOTrainer does."""
    chosen, rejected = [], []
    for row in rows:
        columns = heldout_columns(row, "prompted_preference", tokenizer)
        ids = split_preference(tokenizer, columns["prompt"], columns["chosen"], columns["rejected"])
        chosen.append((ids["prompt_ids"], ids["chosen_ids"]))
        rejected.append((ids["prompt_ids"], ids["rejected_ids"]))
    chosen_logps = mean_completion_logps(model, tokenizer, chosen)
    rejected_logps = mean_completion_logps(model, tokenizer, rejected)
    return sum(c > r for c, r in zip(chosen_logps, rejected_logps)) / max(len(rows), 1)


def pair_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs whose chosen score is strictly higher (a tie counts as a miss)."""
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(chosen), 1)


@torch.no_grad()
def reward_scores(
    reward_model, tokenizer, prompts: Sequence[HeldOutPrompt], responses: Sequence[str], *, batch_size: int = 32
) -> list[float]:
    """The RM's scalar score of each (prompt, response), tokenized as RewardTrainer tokenized prompt + chosen."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    scores: list[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            columns = [heldout_prompt(p, tokenizer) for p in prompts[start : start + batch_size]]
            texts = [
                render_sequence(tokenizer, c, completion_column(c, r))
                for c, r in zip(columns, responses[start : start + batch_size])
            ]
            conversational = bool(columns) and is_conversational(columns[0])  # one tokenizer: one kind for all
            batch = encode(tokenizer, texts, conversational, return_tensors="pt", padding=True).to(reward_model.device)
            scores.extend(reward_model(**batch).logits[:, 0].float().tolist())
    finally:
        tokenizer.padding_side = side
    return scores


def strip_reasoning(text: str) -> str:
    """The answer part of a reply, for the checkers: without `<think>...</think>` blocks, without a `<think>` block
    that never closes (at the start, the whole reply is reasoning), and without the reasoning before a leading
    `</think>` (a reply that begins inside a block its generation prompt opened, as Qwen3.5's does)."""
    close, opened = text.find(THINK_CLOSE), text.find(THINK_OPEN)
    if close != -1 and (opened == -1 or close < opened):
        text = text[close + len(THINK_CLOSE) :]
    text = _THINK_BLOCK.sub("", text)
    opened = text.find(THINK_OPEN)  # a block never closed: reasoning to the end (all of it, at the start)
    return (text if opened == -1 else text[:opened]).strip()


def checker_accuracy(responses: Sequence[str], answers: Sequence[str], check) -> float:
    """Share of responses that `check(response, answer)` accepts."""
    return sum(bool(check(r, a)) for r, a in zip(responses, answers)) / max(len(responses), 1)


def format_checks(generations: Sequence[Generation], pattern: str | None = None) -> list[bool]:
    """Per response: non-empty, ended (EOS within the budget) and fully matching `pattern` if given."""
    regex = re.compile(pattern, re.DOTALL) if pattern else None

    def complies(g: Generation) -> bool:
        return g.stopped and bool(g.text.strip()) and (regex is None or regex.fullmatch(g.text.strip()) is not None)

    return [complies(g) for g in generations]


def format_compliance(generations: Sequence[Generation], pattern: str | None = None) -> float:
    """Share of responses that are non-empty, ended (EOS within the budget) and fully match `pattern` if given."""
    return sum(format_checks(generations, pattern)) / max(len(generations), 1)


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    """Mean, median and 90th percentile (nearest rank) of response lengths in tokens."""
    if not lengths:
        return {"length_mean": 0.0, "length_median": 0.0, "length_p90": 0.0}
    ordered = sorted(lengths)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    p90 = ordered[max(0, -(-9 * n // 10) - 1)]  # nearest rank: the ceil(0.9 n)-th smallest
    return {"length_mean": sum(ordered) / n, "length_median": float(median), "length_p90": float(p90)}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant (the correlation is undefined)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sxx * syy) ** 0.5


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (so Spearman = Pearson of ranks)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    return pearson(ranks(xs), ranks(ys))


def win_rate(outcomes: Sequence[float]) -> float:
    """Mean of per-prompt outcomes: 1 = the target won, 0 = the baseline won, 0.5 = a tie."""
    return sum(outcomes) / max(len(outcomes), 1)
