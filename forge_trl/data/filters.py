"""Rows -> TRL columns, filtered: the empty-label filter and the identical-pair warning.

A row whose response is cut to zero tokens by `data.max_length` (the prompt alone fills the budget) has no
label to learn from; in a mean over response tokens it divides by zero and poisons the weights with NaN.
Such rows are dropped before training, for every task, and counted in the log.

Token counts are taken the way TRL's trainers build sequences (forge_trl/data/prompts.py renders both): the prompt
with the generation prompt, and prompt + response; truncation keeps the start of the sequence.
"""

from __future__ import annotations

import logging

from forge_trl.config import DataConfig
from forge_trl.data.formats import to_trl_columns
from forge_trl.data.prompts import is_conversational, render_prompt, render_sequence, token_ids, uses_chat_template
from forge_trl.data.rows import Row
from forge_trl.errors import DataError

log = logging.getLogger(__name__)
COMPLETION_COLUMNS = ("completion", "chosen", "rejected")


def response_token_budget(rows: list[dict], tokenizer, max_length: int) -> list[int]:
    """For each row, the fewest response tokens left after truncation to `max_length` (over its completions)."""
    prompts, fulls, kinds, owner = [], [], [], []
    for index, row in enumerate(rows):
        for column in COMPLETION_COLUMNS:
            if column in row and "prompt" in row:
                prompts.append(render_prompt(tokenizer, row["prompt"]))
                fulls.append(render_sequence(tokenizer, row["prompt"], row[column]))
                kinds.append(is_conversational(row["prompt"]))
                owner.append(index)
    budget = [max_length] * len(rows)  # rows without a prompt (plain text) always keep their tokens
    if not prompts:
        return budget
    prompt_lens = [len(ids) for ids in token_ids(tokenizer, prompts, kinds)]
    full_lens = [len(ids) for ids in token_ids(tokenizer, fulls, kinds)]
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
            dropped,
            max_length,
            first,
        )
    return [rows[i] for i in keep], dropped


def warn_identical_pairs(rows: list[dict], sources: list[str]) -> int:
    """Count preference rows whose chosen equals their rejected (they carry no preference) and warn once."""
    same = [i for i, row in enumerate(rows) if "chosen" in row and row.get("chosen") == row.get("rejected")]
    if same:
        log.warning(
            "%d rows have chosen identical to rejected and teach no preference (first: %s)", len(same), sources[same[0]]
        )
    return len(same)


# Columns a `data.format=processed` JSONL file or dataset dir (not a forge_trl.preprocess cache) must already
# have, per layout.
PROCESSED_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    "text": [("text",)],
    "sft": [("prompt", "completion"), ("text",), ("messages",)],
    "preference": [("chosen", "rejected")],
    "prompted_preference": [("prompt", "chosen", "rejected")],
    "prompt_only": [("prompt",)],
    "unpaired_preference": [("prompt", "completion", "label")],
}


def _convert(rows: list[Row], layout: str, data: DataConfig, chat: bool) -> list[dict]:
    if data.format == "raw":
        return [to_trl_columns(row, layout, chat) for row in rows]
    for row in rows:
        if not any(all(c in row.data for c in cols) for cols in PROCESSED_COLUMNS[layout]):
            expected = " or ".join("{" + ", ".join(c) + "}" for c in PROCESSED_COLUMNS[layout])
            raise DataError(f"processed {layout} row needs columns {expected}", path=row.path, line=row.line)
    return [row.data for row in rows]


def convert_and_filter(rows: list[Row], layout: str, data: DataConfig, tokenizer) -> tuple[list[dict], list[int], int]:
    """Rows as TRL columns with empty labels filtered: (kept rows, each kept row's position in `rows`, number
    dropped). The positions let a tokenized cache reproduce `data.max_rows` sampling."""
    chat = uses_chat_template(tokenizer, data.chat_template)
    if data.chat_template and not chat:
        log.warning("tokenizer has no chat template; prompt and response are joined as plain text")
    converted = _convert(rows, layout, data, chat)
    sources = [f"{row.path}:{row.line}" for row in rows]
    warn_identical_pairs(converted, sources)
    kept, dropped = filter_empty_labels(converted, sources, tokenizer, data.max_length)
    if not kept:
        raise DataError(
            f"all {len(rows)} rows have an empty response after truncation to data.max_length={data.max_length}; "
            "raise data.max_length or shorten the prompts",
            path=rows[0].path,
        )
    # The filter returns the very dicts it was given, so identity finds where each kept row came from.
    kept_ids = {id(row) for row in kept}
    positions = [index for index, row in enumerate(converted) if id(row) in kept_ids]
    return kept, positions, dropped
