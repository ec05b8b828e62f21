"""From `data.*` settings to the train/eval `datasets.Dataset` a task hands to its TRL trainer."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence, TypeVar

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
T = TypeVar("T")


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


# The held-out rows of `data.val_size` are drawn with this seed, not the run's: changing `seed` keeps the eval set.
VAL_SPLIT_SEED = 20240601


def held_out_count(val_size: float, rows: int) -> int:
    """How many of `rows` rows `data.val_size` holds out: a count as it is, a fraction rounded up (as
    `datasets.Dataset.train_test_split` does). A ConfigError unless at least one row is left to train on."""
    count = int(val_size) if val_size >= 1 else math.ceil(val_size * rows)
    if count >= rows:
        raise ConfigError(
            f"data.val_size={val_size:g} holds out {count} of the {rows} rows, leaving none to train on; "
            "lower it or add rows"
        )
    return count


def split_held_out(items: Sequence[T], val_size: float | None) -> tuple[list[T], list[T]]:
    """(training items, held-out items): `held_out_count` items drawn with `VAL_SPLIT_SEED`, disjoint from the
    rest; both keep the file's order. The draw depends only on the number of items, so it is the same on every run
    and every process."""
    if val_size is None:
        return list(items), []
    held = set(random.Random(VAL_SPLIT_SEED).sample(range(len(items)), held_out_count(val_size, len(items))))
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


@dataclass
class Split:
    """One file (or its training part) as TRL columns, empty labels filtered."""

    rows: list[dict] | Dataset
    rows_read: int
    filtered: int
    # The rows `data.val_size` held out of the same file, converted and filtered alike (None: nothing held out).
    held_out: list[dict] | Dataset | None = None
    held_out_filtered: int = 0


def load_split(
    path: str,
    layout: str,
    data: DataConfig,
    tokenizer,
    *,
    apply_max_rows: bool,
    task_name: str | None = None,
    val_size: float | None = None,
) -> Split:
    """One file as TRL columns, empty labels filtered; with `val_size`, `split_held_out`'s rows apart.

    The rows are rendered as the model's template can render them, with `data.chat_template_kwargs` (bound to
    `tokenizer` here for every later renderer, and given to TRL as its `chat_template_kwargs` column; see
    forge_trl/data/prompts.py). With `data.format=processed`, a directory written by `python -m forge_trl.preprocess`
    loads as its tokenized Dataset, after checking that it was built for this tokenizer, chat template, template
    kwargs and max_length; its rows (each a whole example, a pair too) are split after `max_rows` in the same way.

    Raw rows are split after the `max_rows` draw and before conversion, so each held-out row is one whole example
    (a preference pair stays whole) and the training part never sees it."""
    set_chat_template_kwargs(tokenizer, data.chat_template_kwargs)
    if is_processed_cache(path):
        if data.format != "processed":
            raise DataError(
                "is a tokenized cache from python -m forge_trl.preprocess; set data.format=processed", path=path
            )
        dataset, read, dropped = load_cache(
            path, layout, data, tokenizer, apply_max_rows=apply_max_rows, task_name=task_name
        )
        if val_size is None:
            return Split(dataset, read, dropped)
        train, held = split_held_out(range(len(dataset)), val_size)
        return Split(dataset.select(train), read, dropped, dataset.select(held))
    rows = read_rows(path)
    if apply_max_rows and data.max_rows is not None and len(rows) > data.max_rows:
        rows = random.Random(0).sample(rows, data.max_rows)
    train_rows, held_rows = split_held_out(rows, val_size)
    kept, _, dropped = convert_and_filter(train_rows, layout, data, tokenizer)
    split = Split(trl_rows(tokenizer, kept), len(rows), dropped)
    if held_rows:
        held_kept, _, split.held_out_filtered = convert_and_filter(held_rows, layout, data, tokenizer)
        split.held_out = trl_rows(tokenizer, held_kept)
    return split


def prepare_data(layout: str, data: DataConfig, tokenizer, task_name: str | None = None) -> PreparedData:
    """Train (and eval) datasets in TRL's columns for `layout`, which `resolve_layout` has checked.

    The eval dataset is `data.eval_path`, or the rows `data.val_size` holds out of `data.path` (a ConfigError
    rejects both). `task_name` lets a tokenized cache check that it was built for this task's trainer."""
    from datasets import Dataset

    def as_dataset(rows):
        return rows if isinstance(rows, Dataset) else Dataset.from_list(rows)

    train_path, eval_path = resolve_paths(data, layout)
    train = load_split(
        train_path, layout, data, tokenizer, apply_max_rows=True, task_name=task_name, val_size=data.val_size
    )
    if len(train.rows) == 0:
        raise DataError(f"data.max_rows={data.max_rows} drew only rows the empty-label filter dropped", path=train_path)
    stats = {
        "train_path": train_path,
        "train_rows": len(train.rows),
        "rows_read": train.rows_read,
        "filtered_empty": train.filtered,
    }
    if data.chat_template_kwargs:  # recorded in forge_run.json, where the bench reads them back
        stats["chat_template_kwargs"] = dict(data.chat_template_kwargs)
    eval_ds = None
    if train.held_out is not None:
        eval_ds = as_dataset(train.held_out)
        stats.update(val_size=data.val_size, eval_rows=len(eval_ds), eval_filtered_empty=train.held_out_filtered)
        log.info(
            "data: %d rows of %s held out for evaluation (data.val_size=%g)", len(eval_ds), train_path, data.val_size
        )
    elif eval_path is not None:
        held = load_split(eval_path, layout, data, tokenizer, apply_max_rows=False, task_name=task_name)
        eval_ds = as_dataset(held.rows)
        stats.update(eval_path=eval_path, eval_rows=len(eval_ds), eval_filtered_empty=held.filtered)
    log.info("data: %d training rows from %s (%s layout)", len(train.rows), train_path, layout)
    return PreparedData(as_dataset(train.rows), eval_ds, layout, stats)
