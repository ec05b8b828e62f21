"""Tokenize a dataset once into a cache that `data.format=processed data.path=<cache dir>` trains from.

A cache directory holds a `datasets.save_to_disk` dataset plus `forge_processed.json`. Its columns are the ones
TRL's trainer would build itself, made the same way, so a run on the cache trains exactly as a run on the raw rows:

| trainer | forge tasks   | cache columns                                          | TRL still does              |
|---------|---------------|--------------------------------------------------------|-----------------------------|
| sft     | sft, pretrain | input_ids + completion_mask (prompt/completion rows),  | labels, truncation, packing |
|         |               | input_ids (text rows)                                  |                             |
| dpo     | dpo           | prompt_ids, chosen_ids, rejected_ids                   | truncation in the collator  |

SFTTrainer skips its own tokenization when it sees `input_ids`. DPOTrainer has no such switch in TRL 1.16: forge's
DPO trainer (`PretokenizedPreferenceMixin` in forge_trl/trainers/mixins.py) returns rows that
`is_pretokenized_preference` accepts from `_prepare_dataset` unchanged. Sequences are stored untruncated, so packing
and the truncation mode still behave as on raw rows.

The cache is keyed by what decides the token ids and the rows kept: the tokenizer (a hash of its serialized
vocabulary, merges, normalizers and special tokens), the chat template actually applied and
`data.chat_template_kwargs` (when set), `data.max_length` (the empty-label filter depends on it), the layout, the
trainer family and the TRL version. Loading a cache under a
different key is refused with a DataError naming each difference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from forge_trl.data.prompts import document_ids, set_chat_template_kwargs, split_completion, split_preference
from forge_trl.errors import ConfigError, DataError
from forge_trl.files import write_dir_atomically

log = logging.getLogger(__name__)

METADATA_FILE = "forge_processed.json"
FORMAT_VERSION = 1
# The raw row each cached row came from (0-based, in file order); `data.max_rows` samples by it, as on raw rows.
SOURCE_ROW_COLUMN = "forge_source_row"
# Forge task -> the TRL trainer whose tokenization the cache reproduces.
TRAINER_OF_TASK = {"sft": "sft", "pretrain": "sft", "dpo": "dpo"}
PRETOKENIZED_PREFERENCE_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
# Every key that must match between the cache and the run that loads it, with how to name it in an error.
KEY_NAMES = {
    "tokenizer": "tokenizer",
    "chat_template": "chat template",
    "chat_template_kwargs": "data.chat_template_kwargs",
    "max_length": "data.max_length",
    "layout": "data.layout",
    "trainer": "trainer",
    "trl": "TRL version",
    "format_version": "cache format",
}


def is_processed_cache(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / METADATA_FILE).is_file()


def is_pretokenized_preference(dataset) -> bool:
    """True for preference rows already tokenized as DPOTrainer's `_prepare_dataset` would leave them; the trainer
    must then skip that step, which would otherwise look for text columns."""
    columns = set(getattr(dataset, "column_names", None) or ())
    return set(PRETOKENIZED_PREFERENCE_COLUMNS) <= columns and not {"chosen", "rejected"} & columns


# --- cache key ----------------------------------------------------------------------------------------------------


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in the tokenizer that changes token ids: the serialized model, normalizer, pre- and
    post-processor and added tokens (or the vocabulary of a slow tokenizer), and the special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = json.loads(backend.to_str())
        # transformers toggles these on the backend per call; they are call settings, not the tokenizer.
        body.pop("truncation", None)
        body.pop("padding", None)
    else:
        body = sorted(tokenizer.get_vocab().items())
    specials = {
        name: str(getattr(tokenizer, name, None)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    return _sha(json.dumps([body, specials], sort_keys=True))


def applied_chat_template(tokenizer, use_chat_template: bool) -> str | None:
    """The template the rows are rendered with: None when rows stay plain text."""
    template = getattr(tokenizer, "chat_template", None)
    return template if use_chat_template and template else None


def cache_key(
    tokenizer,
    *,
    use_chat_template: bool,
    max_length: int,
    layout: str,
    trainer: str,
    template_kwargs: Mapping | None = None,
) -> dict:
    """The key a cache is built under. `template_kwargs` (`data.chat_template_kwargs`) joins it only when the rows
    are rendered with a template and it is not empty, so caches built before the setting existed stay valid."""
    import trl

    template = applied_chat_template(tokenizer, use_chat_template)
    key = {
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "chat_template": _sha(template) if template is not None else None,
        "max_length": max_length,
        "layout": layout,
        "trainer": trainer,
        "trl": trl.__version__,
        "format_version": FORMAT_VERSION,
    }
    if template is not None and template_kwargs:
        key["chat_template_kwargs"] = json.loads(json.dumps(dict(template_kwargs), sort_keys=True, default=str))
    return key


def describe_key_differences(built: dict, wanted: dict) -> list[str]:
    differences = []
    for key, label in KEY_NAMES.items():
        if built.get(key) != wanted.get(key):
            differences.append(f"{label} {_show(key, built.get(key))} (this run: {_show(key, wanted.get(key))})")
    return differences


def _show(key: str, value) -> str:
    if key in ("chat_template", "chat_template_kwargs") and value is None:
        return "none"
    if key == "chat_template_kwargs":
        return json.dumps(value, sort_keys=True)
    if key in ("tokenizer", "chat_template"):
        return f"#{value}"
    return str(value)


# --- tokenization, as TRL 1.16's trainers do it ---------------------------------------------------------------------


def tokenize_sft_row(row: dict, tokenizer) -> dict:
    """SFTTrainer's tokenization of one prompt/completion or text row (before labels and truncation)."""
    if "prompt" not in row:
        return {"input_ids": document_ids(tokenizer, row["text"])}
    prompt_ids, completion_ids = split_completion(tokenizer, row["prompt"], row["completion"])
    return {
        "input_ids": prompt_ids + completion_ids,
        "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids),
    }


def tokenize_preference_row(row: dict, tokenizer) -> dict:
    """DPOTrainer's tokenization of one {prompt, chosen, rejected} row."""
    return split_preference(tokenizer, row["prompt"], row["chosen"], row["rejected"])


TOKENIZERS = {"sft": tokenize_sft_row, "dpo": tokenize_preference_row}


def trainer_for_task(task_name: str, layout: str) -> str:
    trainer = TRAINER_OF_TASK.get(task_name)
    if trainer is None:
        supported = "|".join(TRAINER_OF_TASK)
        raise ConfigError(
            f"preprocess does not support task={task_name} yet (its trainer tokenizes rows its own way); "
            f"expected task={supported}, or train task={task_name} on raw rows (data.format=raw)"
        )
    if trainer == "sft" and layout not in ("sft", "text") or trainer == "dpo" and "preference" not in layout:
        raise ConfigError(f"preprocess: data.layout={layout} does not suit task={task_name}")
    return trainer


# --- building and loading a cache -----------------------------------------------------------------------------------


@dataclass
class BuildResult:
    out: Path
    rows: int
    rows_read: int
    filtered_empty: int
    reused: bool = False


def source_digest(path: Path) -> str:
    """sha256 over a JSONL file's bytes, or over every file of a dataset directory (with its relative name)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def read_metadata(path: str | os.PathLike) -> dict:
    file = Path(path).expanduser() / METADATA_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(
            f"unreadable processed-data metadata ({exc}); rerun python -m forge_trl.preprocess", path=str(file)
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
        raise DataError(
            "not a forge_trl.preprocess metadata file (no 'key'); rerun python -m forge_trl.preprocess", path=str(file)
        )
    return meta


def build_cache(
    source_path: str,
    out: str | os.PathLike,
    *,
    task_name: str,
    layout: str,
    data,
    tokenizer,
    tokenizer_source: str,
    overwrite: bool = False,
) -> BuildResult:
    """Read, convert, filter and tokenize `source_path` into the cache directory `out` (written atomically).

    An `out` already built from the same source bytes under the same key is reused as it is."""
    from datasets import Dataset
    from tqdm.auto import tqdm

    from forge_trl.data.filters import convert_and_filter
    from forge_trl.data.rows import read_rows

    trainer = trainer_for_task(task_name, layout)
    source, out = Path(source_path).expanduser(), Path(out).expanduser()
    if is_processed_cache(source):
        raise ConfigError(f"data.path={source} is already a processed cache; point data.path at the raw rows")
    set_chat_template_kwargs(tokenizer, data.chat_template_kwargs)
    key = cache_key(
        tokenizer,
        use_chat_template=data.chat_template,
        max_length=data.max_length,
        layout=layout,
        trainer=trainer,
        template_kwargs=data.chat_template_kwargs,
    )
    digest = source_digest(source) if source.exists() else None
    if out.exists():
        if is_processed_cache(out) and not overwrite:
            meta = read_metadata(out)
            if meta["key"] == key and meta.get("source", {}).get("sha256") == digest:
                log.info("preprocess: %s is up to date (same source and key); nothing to do", out)
                return BuildResult(
                    out, meta["rows"], meta["source"]["rows_read"], meta["source"]["filtered_empty"], reused=True
                )
        if not overwrite:
            raise ConfigError(f"out={out} already exists; pass overwrite=true to replace it, or choose another out")

    rows = read_rows(source)
    kept, positions, dropped = convert_and_filter(rows, layout, data, tokenizer)
    tokenize = TOKENIZERS[trainer]
    records = []
    for row, position in zip(tqdm(kept, desc="tokenizing", unit="row", disable=None), positions):
        record = tokenize(row, tokenizer)
        # DPOTrainer drops rows whose prompt alone fills max_length; the cache skips its _prepare_dataset, so here.
        if trainer == "dpo" and len(record["prompt_ids"]) >= data.max_length:
            dropped += 1
            continue
        record[SOURCE_ROW_COLUMN] = position
        records.append(record)
    if not records:
        raise DataError(f"every row's prompt fills data.max_length={data.max_length}; raise it", path=str(source))

    meta = {
        "key": key,
        "task": task_name,
        "columns": [c for c in records[0] if c != SOURCE_ROW_COLUMN],
        "rows": len(records),
        "tokenizer_source": tokenizer_source,
        "source": {"path": str(source.resolve()), "sha256": digest, "rows_read": len(rows), "filtered_empty": dropped},
    }

    def fill(staging: Path) -> None:
        Dataset.from_list(records).save_to_disk(str(staging / "data"))
        for item in (staging / "data").iterdir():  # the cache dir itself is the dataset dir users point at
            item.rename(staging / item.name)
        (staging / "data").rmdir()
        (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    write_dir_atomically(out, fill)  # an old cache at `out` is removed only once the new one is in place
    log.info("preprocess: %d rows (%d read, %d filtered) -> %s", len(records), len(rows), dropped, out)
    return BuildResult(out, len(records), len(rows), dropped)


def load_cache(path: str, layout: str, data, tokenizer, *, apply_max_rows: bool, task_name: str | None = None):
    """The cached dataset at `path` for this run, after checking its key: (dataset, rows read, rows filtered)."""
    from datasets import load_from_disk

    meta = read_metadata(path)
    built = meta["key"]
    trainer = built.get("trainer") if task_name is None else TRAINER_OF_TASK.get(task_name)
    if trainer is None:
        raise DataError(
            f"processed data was tokenized for the {built.get('trainer')} trainer; task={task_name} "
            "cannot train on it; use data.format=raw",
            path=str(path),
        )
    wanted = cache_key(
        tokenizer,
        use_chat_template=data.chat_template,
        max_length=data.max_length,
        layout=layout,
        trainer=trainer,
        template_kwargs=data.chat_template_kwargs,
    )
    differences = describe_key_differences(built, wanted)
    if differences:
        raise DataError(
            f"stale processed data: built for {'; '.join(differences)}; rerun python -m forge_trl.preprocess with "
            "this run's model, data.max_length, data.chat_template and data.chat_template_kwargs",
            path=str(path),
        )
    dataset = load_from_disk(str(Path(path).expanduser()))
    rows_read = meta["source"]["rows_read"]
    if apply_max_rows and data.max_rows is not None and rows_read > data.max_rows:
        # The same draw as on raw rows (random.sample picks by position), minus the rows the filter dropped.
        drawn = random.Random(0).sample(range(rows_read), data.max_rows)
        index_of = {position: i for i, position in enumerate(dataset[SOURCE_ROW_COLUMN])}
        dataset = dataset.select([index_of[p] for p in drawn if p in index_of])
    return dataset.remove_columns(SOURCE_ROW_COLUMN), rows_read, meta["source"]["filtered_empty"]
