"""`forge-trl convert input=<jsonl or dataset dir> out=<file.jsonl> map=<from>:<to>,... [layout=...]`
(also `python -m forge_trl.convert`).

Renames fields so that rows in someone else's layout become one of forge's raw layouts (forge_trl/data/formats.py),
and writes them as JSONL:

    forge-trl convert input=qa.jsonl out=sft.jsonl map=question:prompt,answer:response layout=sft

- `input`: a JSONL file, or a directory written by `datasets.save_to_disk` (`split=` picks a DatasetDict split;
  default `train`, or the only split).
- `map`: `from:to` pairs, comma-separated or repeated (`map=a:b map=c:d`). A source ending in `?` is optional
  (`system?:system`): rows without it are kept without it. Fields not named in the map are copied unchanged unless
  `drop_unmapped=true`.
- `layout`: check every output row against a forge layout (sft, preference, ...) and stop at the first bad one.
- `out` is written atomically (a temporary file, then a rename) and is never replaced without `overwrite=true`.

A bad row is reported as a DataError with its file:line and field, on one line, with exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from forge_trl.commands.args import KeyValueParser
from forge_trl.config import DataLayout
from forge_trl.data.formats import to_trl_columns
from forge_trl.data.rows import Row, read_rows
from forge_trl.errors import ConfigError, DataError
from forge_trl.files import write_file_atomically

log = logging.getLogger("forge_trl")

# Below this many rows a progress bar is noise.
PROGRESS_MIN_ROWS = 1000


@dataclass(frozen=True)
class FieldMapping:
    source: str
    target: str
    optional: bool = False

    def __str__(self) -> str:
        return f"{self.source}{'?' if self.optional else ''}:{self.target}"


@dataclass
class ConvertArgs:
    """Rename the fields of someone else's rows so that they become one of forge's layouts, and write JSONL."""

    # A JSONL file, or a directory written by `datasets.save_to_disk`.
    input: str
    # The JSONL file to write (atomically; an existing one only with overwrite=true).
    out: str
    # `from:to` field pairs, comma-separated or repeated; `from?` marks an optional field (e.g. map=sys?:system).
    map: List[str] = field(default_factory=list)
    # Check every output row against this forge layout and stop at the first bad one.
    layout: Optional[DataLayout] = None
    # The split of a DatasetDict directory. null: `train`, or the only split.
    split: Optional[str] = None
    # Drop the fields the map does not name (otherwise they are copied unchanged).
    drop_unmapped: bool = False
    # Replace an existing `out`.
    overwrite: bool = False
    mappings: list[FieldMapping] = field(init=False)

    def __post_init__(self):
        self.mappings = parse_mappings(self.map)


def parse_mappings(specs: list[str]) -> list[FieldMapping]:
    mappings = []
    for spec in specs:
        for pair in filter(None, (part.strip() for part in spec.split(","))):
            source, sep, target = pair.partition(":")
            source, target = source.strip(), target.strip()
            optional = source.endswith("?")
            source = source.removesuffix("?")
            if not sep or not source or not target:
                raise ConfigError(f"map: '{pair}' is not <from>:<to> (e.g. map=question:prompt,answer:response)")
            mappings.append(FieldMapping(source, target, optional))
    targets = [m.target for m in mappings]
    repeated = next((t for t in targets if targets.count(t) > 1), None)
    if repeated is not None:
        raise ConfigError(f"map: two fields map to '{repeated}'")
    return mappings


PARSER = KeyValueParser(
    ConvertArgs,
    "convert",
    example="forge-trl convert input=qa.jsonl out=data/sft.jsonl "
    "map=question:prompt,answer:response,sys?:system layout=sft",
)


def parse_args(argv: list[str]) -> ConvertArgs:
    return PARSER.parse(argv)


def map_row(row: Row, mappings: list[FieldMapping], drop_unmapped: bool) -> dict:
    """The row with its fields renamed by `mappings`; a DataError names a missing source field and the line."""
    sources = {m.source for m in mappings}
    out = {} if drop_unmapped else {k: v for k, v in row.data.items() if k not in sources}
    for mapping in mappings:
        if mapping.source not in row.data:
            if mapping.optional:
                continue
            raise DataError(
                f"missing field '{mapping.source}' named by map {mapping} (row has: "
                f"{', '.join(sorted(row.data)) or 'no fields'})",
                path=row.path,
                line=row.line,
                field=mapping.source,
            )
        if mapping.target in out:
            raise DataError(
                f"the row already has a field '{mapping.target}' that map {mapping} would overwrite; "
                "map it elsewhere too or pass drop_unmapped=true",
                path=row.path,
                line=row.line,
                field=mapping.target,
            )
        out[mapping.target] = row.data[mapping.source]
    return out


def _bare_message(exc: DataError) -> str:
    """The message of a DataError without its 'file:line field' prefix (rebuilt the way DataError builds it)."""
    prefix = str(DataError("", path=exc.path, line=exc.line, field=exc.field))
    text = str(exc)
    return text[len(prefix) :] if text.startswith(prefix) else text


def check_layout(mapped: dict, row: Row, layout: str, mappings: list[FieldMapping]) -> None:
    """Validate a mapped row with forge's own layout rules; errors point at the input line and name the input
    field that fed the bad output field."""
    try:
        to_trl_columns(Row(mapped, row.path, row.line), layout, chat=True)
    except DataError as exc:
        output_field = (exc.field or "").split("[", 1)[0]
        fed_by = next((m.source for m in mappings if m.target == output_field), None)
        if fed_by is not None:
            hint = f" (mapped from '{fed_by}')"
        elif output_field and output_field not in mapped:
            hint = f"; map one of your fields to it, e.g. map=<field>:{output_field}"
        else:
            hint = ""
        raise DataError(_bare_message(exc) + hint, path=exc.path, line=exc.line, field=exc.field) from None


def convert(args: ConvertArgs) -> int:
    """Map every row and write `args.out` atomically; returns the number of rows written."""
    from tqdm.auto import tqdm

    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise ConfigError(f"out={out} already exists; pass overwrite=true to replace it")
    if out.is_dir():
        raise ConfigError(f"out={out} is a directory; expected a .jsonl file path")
    source = Path(args.input).expanduser()
    if source.exists() and source.resolve() == out.resolve():
        raise ConfigError("out must differ from input")
    rows = read_rows(args.input, args.split)

    def fill(staging: Path) -> None:
        with staging.open("w", encoding="utf-8") as handle:
            quiet = True if len(rows) < PROGRESS_MIN_ROWS else None  # None: tqdm shows a bar only on a terminal
            for row in tqdm(rows, desc="converting", unit="row", disable=quiet):
                mapped = map_row(row, args.mappings, args.drop_unmapped)
                if args.layout is not None:
                    check_layout(mapped, row, args.layout, args.mappings)
                try:
                    line = json.dumps(mapped, ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    raise DataError(f"cannot be written as JSON ({exc})", path=row.path, line=row.line) from None
                handle.write(line + "\n")

    write_file_atomically(out, fill)  # a bad row leaves no file and an existing `out` untouched
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    def work(args: ConvertArgs) -> None:
        count = convert(args)
        checked = f"; every row is a valid {args.layout} row" if args.layout else ""
        print(f"wrote {count} rows to {args.out}{checked}")

    return PARSER.run(argv, work)  # no log file: `out` is one data file


if __name__ == "__main__":
    sys.exit(main())
