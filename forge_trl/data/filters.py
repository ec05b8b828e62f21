"""The empty-label filter.

A row whose response is cut to zero tokens by `data.max_length` (the prompt alone fills the budget) has no
label to learn from; in a mean over response tokens it divides by zero and poisons the weights with NaN.
Such rows are dropped before training, for every task, and counted in the log.

Token counts are taken the way TRL's trainers build sequences: the chat template renders the prompt (with the
generation prompt) and prompt + response, and truncation keeps the start of the sequence.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
COMPLETION_COLUMNS = ("completion", "chosen", "rejected")


def render_pair(tokenizer, prompt, completion) -> tuple[str, str]:
    """(prompt text, prompt + completion text) as the trainer will tokenize them: message lists through the
    chat template (the prompt with the generation prompt), plain strings joined."""
    if isinstance(prompt, list):
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        return prompt_text, full_text
    return prompt, prompt + completion


def response_token_budget(rows: list[dict], tokenizer, max_length: int) -> list[int]:
    """For each row, the fewest response tokens left after truncation to `max_length` (over its completions)."""
    prompts, fulls, owner = [], [], []
    for index, row in enumerate(rows):
        for column in COMPLETION_COLUMNS:
            if column in row and "prompt" in row:
                prompt_text, full_text = render_pair(tokenizer, row["prompt"], row[column])
                prompts.append(prompt_text)
                fulls.append(full_text)
                owner.append(index)
    budget = [max_length] * len(rows)  # rows without a prompt (plain text) always keep their tokens
    if not prompts:
        return budget
    prompt_lens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    full_lens = [len(ids) for ids in tokenizer(fulls, add_special_tokens=False)["input_ids"]]
    for index, prompt_len, full_len in zip(owner, prompt_lens, full_lens):
        kept = min(full_len, max_length) - prompt_len
        budget[index] = min(budget[index], max(kept, 0))
    return budget


def filter_empty_labels(rows: list[dict], sources: list[str], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Drop rows whose response is truncated to zero tokens; returns (kept rows, number dropped).

    `sources` names each row (file:line) so the log can point at the first dropped one."""
    budget = response_token_budget(rows, tokenizer, max_length)
    keep = [i for i, tokens in enumerate(budget) if tokens > 0]
    dropped = len(rows) - len(keep)
    if dropped:
        first = sources[next(i for i, tokens in enumerate(budget) if tokens == 0)]
        log.warning(
            "filtered %d rows with empty labels (response truncated to 0 tokens by data.max_length=%d; first: %s)",
            dropped, max_length, first,
        )
    return [rows[i] for i in keep], dropped


def warn_identical_pairs(rows: list[dict], sources: list[str]) -> int:
    """Count preference rows whose chosen equals their rejected (they carry no preference) and warn once."""
    same = [i for i, row in enumerate(rows) if "chosen" in row and row.get("chosen") == row.get("rejected")]
    if same:
        log.warning("%d rows have chosen identical to rejected and teach no preference (first: %s)",
                    len(same), sources[same[0]])
    return len(same)
