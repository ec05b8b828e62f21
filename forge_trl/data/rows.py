"""Reading raw rows from a JSONL file or a local HF dataset directory, each tagged with where it came from.

The one reader of both, for training, preprocessing, convert and the bench. Every row keeps its source (file and
1-based line, or dataset row number) so that a later validation error can name it. A UTF-8 BOM, CRLF line endings
and blank lines are accepted. A `DatasetDict` directory is read one split at a time: `split`, else `train`, else
its only split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from forge_trl.errors import ConfigError, DataError

# A row longer than this is refused rather than tokenized: no max_length comes near it, and tokenizing a single
# multi-megabyte row takes tens of seconds and gigabytes before truncation could cut it (8.5 MB: ~50 s, ~2.9 GB).
MAX_ROW_CHARS = 4_000_000


@dataclass
class Row:
    data: dict
    path: str
    # 1-based line in a JSONL file, or 1-based row number in a dataset directory; None for a row from no file
    # (a held-out prompt given in the config).
    line: int | None


def read_rows(path: str | Path, split: str | None = None) -> list[Row]:
    """The rows of a JSONL file or of a `save_to_disk` directory (`split` picks a DatasetDict's split)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError("file not found; set data.path to a JSONL file or a dataset directory", path=str(path))
    if path.is_dir():
        rows = _read_dataset_dir(path, split)
    elif split is not None:
        raise ConfigError(f"split={split}: {path} is a JSONL file, which has no splits")
    else:
        rows = _read_jsonl(path)
    if not rows:
        raise DataError("no rows" if path.is_dir() else "no rows; expected one JSON object per line", path=str(path))
    return rows


def _read_jsonl(path: Path) -> list[Row]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", path=str(path)) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_ROW_CHARS:
            raise DataError(
                f"row is {len(line) / 1e6:.1f} M characters, over the {MAX_ROW_CHARS / 1e6:.0f} M limit; "
                "split long documents into several rows",
                path=str(path),
                line=number,
            )
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg} at column {exc.colno})", path=str(path), line=number) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path=str(path), line=number)
        rows.append(Row(obj, str(path), number))
    return rows


def _read_dataset_dir(path: Path, split: str | None) -> list[Row]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"not a dataset directory ({str(exc).splitlines()[0]}); expected a JSONL file or a directory "
            "written by Dataset.save_to_disk",
            path=str(path),
        ) from None
    if isinstance(dataset, DatasetDict):
        dataset = dataset[_pick_split(path, list(dataset), split)]
    elif split is not None:
        raise ConfigError(f"split={split}: {path} holds a single dataset without splits; leave split out")
    assert isinstance(dataset, Dataset)
    return [Row(dict(item), str(path), index + 1) for index, item in enumerate(dataset)]


def _pick_split(path: Path, names: list[str], split: str | None) -> str:
    if split is not None:
        if split not in names:
            raise ConfigError(f"split={split}: {path} has splits {', '.join(names)}; pick one with split=")
        return split
    if "train" in names:
        return "train"
    if len(names) == 1:
        return names[0]
    raise DataError(
        f"dataset has splits {', '.join(names)} and none is 'train'; save the split to use on its own "
        "(or pick it with split= in forge_trl.convert)",
        path=str(path),
    )
