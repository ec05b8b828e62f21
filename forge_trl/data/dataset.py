"""From `data.*` settings to the train/eval `datasets.Dataset` a task hands to its TRL trainer."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from forge_trl.config import DataConfig
from forge_trl.data.demo_suite import DEMO_FILES, ensure_demo_suite
from forge_trl.data.filters import filter_empty_labels, warn_identical_pairs
from forge_trl.data.formats import to_trl_columns
from forge_trl.data.token_cache import is_processed_cache, load_cache
from forge_trl.data.rows import Row, read_rows
from forge_trl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Columns a `data.format=processed` JSONL file or dataset dir (not a forge_trl.preprocess cache) must already
# have, per layout.
PROCESSED_COLUMNS = {
    "text": [("text",)],
    "sft": [("prompt", "completion"), ("text",), ("messages",)],
    "preference": [("chosen", "rejected")],
    "prompted_preference": [("prompt", "chosen", "rejected")],
    "prompt_only": [("prompt",)],
    "unpaired_preference": [("prompt", "completion", "label")],
}


@dataclass
class PreparedData:
    train: object
    eval: object | None
    layout: str
    stats: dict = field(default_factory=dict)


def resolve_layout(task, data: DataConfig) -> str:
    """`data.task`, or the task's default layout; a ConfigError when the task cannot train on it."""
    layout = data.task or task.data_layouts[0]
    if layout not in task.data_layouts:
        raise ConfigError(
            f"data.task={layout} does not suit task={task.name}; expected data.task="
            f"{'|'.join(task.data_layouts)}"
        )
    return layout


def resolve_paths(data: DataConfig, layout: str) -> tuple[str, str | None]:
    """(train path, eval path); the built-in demo suite when `data.path` is null."""
    if data.path is not None:
        return data.path, data.eval_path
    if layout not in DEMO_FILES:
        raise ConfigError(f"data.task={layout}: the demo suite has no {layout} rows; set data.path to your JSONL file")
    files = ensure_demo_suite()
    return str(files[DEMO_FILES[layout]]), data.eval_path


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
    chat = data.chat_template and bool(getattr(tokenizer, "chat_template", None))
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


def load_split(path: str, layout: str, data: DataConfig, tokenizer, *, apply_max_rows: bool,
               task_name: str | None = None) -> tuple[object, int, int]:
    """One file as TRL columns, empty labels filtered: (rows or Dataset, rows read, rows filtered).

    With `data.format=processed`, a directory written by `python -m forge_trl.preprocess` loads as its tokenized
    Dataset, after checking that it was built for this tokenizer, chat template and max_length."""
    if is_processed_cache(path):
        if data.format != "processed":
            raise DataError("is a tokenized cache from python -m forge_trl.preprocess; set data.format=processed",
                            path=path)
        return load_cache(path, layout, data, tokenizer, apply_max_rows=apply_max_rows, task_name=task_name)
    rows = read_rows(path)
    if apply_max_rows and data.max_rows is not None and len(rows) > data.max_rows:
        rows = random.Random(0).sample(rows, data.max_rows)
    kept, _, dropped = convert_and_filter(rows, layout, data, tokenizer)
    return kept, len(rows), dropped


def prepare_data(layout: str, data: DataConfig, tokenizer, task_name: str | None = None) -> PreparedData:
    """Train (and eval) datasets in TRL's columns for `layout`, which `resolve_layout` has checked.

    `task_name` lets a tokenized cache check that it was built for this task's trainer."""
    from datasets import Dataset

    def as_dataset(rows):
        return rows if isinstance(rows, Dataset) else Dataset.from_list(rows)

    train_path, eval_path = resolve_paths(data, layout)
    train_rows, read, dropped = load_split(train_path, layout, data, tokenizer, apply_max_rows=True,
                                           task_name=task_name)
    if len(train_rows) == 0:
        raise DataError(f"data.max_rows={data.max_rows} drew only rows the empty-label filter dropped", path=train_path)
    stats = {"train_path": train_path, "train_rows": len(train_rows), "rows_read": read, "filtered_empty": dropped}
    eval_ds = None
    if eval_path is not None:
        eval_rows, _, eval_dropped = load_split(eval_path, layout, data, tokenizer, apply_max_rows=False,
                                                task_name=task_name)
        eval_ds = as_dataset(eval_rows)
        stats.update(eval_path=eval_path, eval_rows=len(eval_rows), eval_filtered_empty=eval_dropped)
    log.info("data: %d training rows from %s (%s layout)", len(train_rows), train_path, layout)
    return PreparedData(as_dataset(train_rows), eval_ds, layout, stats)
