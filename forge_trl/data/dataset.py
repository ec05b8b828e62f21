"""From `data.*` settings to the train/eval `datasets.Dataset` a task hands to its TRL trainer."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from forge_trl.config import DataConfig
from forge_trl.data.demo_suite import DEMO_FILES, ensure_demo_suite
from forge_trl.data.filters import convert_and_filter
from forge_trl.data.prompts import set_chat_template_kwargs, trl_rows
from forge_trl.data.rows import read_rows
from forge_trl.data.token_cache import is_processed_cache, load_cache
from forge_trl.errors import ConfigError, DataError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    layout: str
    stats: dict = field(default_factory=dict)


def resolve_layout(task, data: DataConfig) -> str:
    """`data.layout`, or the task's default layout; a ConfigError when the task cannot train on it."""
    layout = data.layout or task.data_layouts[0]
    if layout not in task.data_layouts:
        raise ConfigError(
            f"data.layout={layout} does not suit task={task.name}; expected data.layout={'|'.join(task.data_layouts)}"
        )
    return layout


def resolve_paths(data: DataConfig, layout: str) -> tuple[str, str | None]:
    """(train path, eval path); the built-in demo suite when `data.path` is null."""
    if data.path is not None:
        return data.path, data.eval_path
    if layout not in DEMO_FILES:
        raise ConfigError(
            f"data.layout={layout}: the demo suite has no {layout} rows; set data.path to your JSONL file"
        )
    files = ensure_demo_suite()
    return str(files[DEMO_FILES[layout]]), data.eval_path


def load_split(
    path: str, layout: str, data: DataConfig, tokenizer, *, apply_max_rows: bool, task_name: str | None = None
) -> tuple[list[dict] | Dataset, int, int]:
    """One file as TRL columns, empty labels filtered: (rows or Dataset, rows read, rows filtered).

    The rows are rendered as the model's template can render them, with `data.chat_template_kwargs` (bound to
    `tokenizer` here for every later renderer, and given to TRL as its `chat_template_kwargs` column; see
    forge_trl/data/prompts.py). With `data.format=processed`, a directory written by `python -m forge_trl.preprocess`
    loads as its tokenized Dataset, after checking that it was built for this tokenizer, chat template, template
    kwargs and max_length."""
    set_chat_template_kwargs(tokenizer, data.chat_template_kwargs)
    if is_processed_cache(path):
        if data.format != "processed":
            raise DataError(
                "is a tokenized cache from python -m forge_trl.preprocess; set data.format=processed", path=path
            )
        return load_cache(path, layout, data, tokenizer, apply_max_rows=apply_max_rows, task_name=task_name)
    rows = read_rows(path)
    if apply_max_rows and data.max_rows is not None and len(rows) > data.max_rows:
        rows = random.Random(0).sample(rows, data.max_rows)
    kept, _, dropped = convert_and_filter(rows, layout, data, tokenizer)
    return trl_rows(tokenizer, kept), len(rows), dropped


def prepare_data(layout: str, data: DataConfig, tokenizer, task_name: str | None = None) -> PreparedData:
    """Train (and eval) datasets in TRL's columns for `layout`, which `resolve_layout` has checked.

    `task_name` lets a tokenized cache check that it was built for this task's trainer."""
    from datasets import Dataset

    def as_dataset(rows):
        return rows if isinstance(rows, Dataset) else Dataset.from_list(rows)

    train_path, eval_path = resolve_paths(data, layout)
    train_rows, read, dropped = load_split(
        train_path, layout, data, tokenizer, apply_max_rows=True, task_name=task_name
    )
    if len(train_rows) == 0:
        raise DataError(f"data.max_rows={data.max_rows} drew only rows the empty-label filter dropped", path=train_path)
    stats = {"train_path": train_path, "train_rows": len(train_rows), "rows_read": read, "filtered_empty": dropped}
    if data.chat_template_kwargs:  # recorded in forge_run.json, where the bench reads them back
        stats["chat_template_kwargs"] = dict(data.chat_template_kwargs)
    eval_ds = None
    if eval_path is not None:
        eval_rows, _, eval_dropped = load_split(
            eval_path, layout, data, tokenizer, apply_max_rows=False, task_name=task_name
        )
        eval_ds = as_dataset(eval_rows)
        stats.update(eval_path=eval_path, eval_rows=len(eval_rows), eval_filtered_empty=eval_dropped)
    log.info("data: %d training rows from %s (%s layout)", len(train_rows), train_path, layout)
    return PreparedData(as_dataset(train_rows), eval_ds, layout, stats)
