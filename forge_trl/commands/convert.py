"""`python -m forge_trl.convert input=<jsonl or dataset dir> out=<file.jsonl> map=<from>:<to>,... [layout=...]`.

Renames fields so that rows in someone else's layout become one of forge's raw layouts (forge_trl/data/formats.py),
and writes them as JSONL:

    python -m forge_trl.convert input=qa.jsonl out=sft.jsonl map=question:prompt,answer:response layout=sft

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
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from forge_trl.data.formats import LAYOUTS, to_trl_columns
from forge_trl.data.rows import Row, read_rows
from forge_trl.errors import ConfigError, DataError, run_command

log = logging.getLogger("forge_trl")

USAGE = ("usage: python -m forge_trl.convert input=<file.jsonl|dataset dir> out=<file.jsonl> "
         "[map=<from>:<to>,...] [layout=" + "|".join(LAYOUTS) + "] [split=<name>] [drop_unmapped=true] "
         "[overwrite=true]")
KEYS = ("input", "out", "map", "layout", "split", "drop_unmapped", "overwrite")
BOOLEAN_KEYS = ("drop_unmapped", "overwrite")
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
    input: str
    out: str
    mappings: list[FieldMapping]
    layout: str | None = None
    split: str | None = None
    drop_unmapped: bool = False
    overwrite: bool = False


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


def parse_args(argv: list[str]) -> ConvertArgs:
    values: dict[str, str] = {}
    map_specs: list[str] = []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unexpected argument '{item}'; {USAGE}")
        if key == "map":
            map_specs.append(value)
        else:
            values[key] = value
    missing = next((k for k in ("input", "out") if not values.get(k)), None)
    if missing:
        raise ConfigError(f"missing {missing}=...; {USAGE}")
    for key in BOOLEAN_KEYS:
        if values.get(key, "false").lower() not in ("true", "false"):
            raise ConfigError(f"{key}: expected true|false, got '{values[key]}'")
    layout = values.get("layout") or None
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {'|'.join(LAYOUTS)}, got '{layout}'")
    return ConvertArgs(
        input=values["input"], out=values["out"], mappings=parse_mappings(map_specs), layout=layout,
        split=values.get("split") or None,
        drop_unmapped=values.get("drop_unmapped", "false").lower() == "true",
        overwrite=values.get("overwrite", "false").lower() == "true",
    )


def read_input(path: str, split: str | None) -> list[Row]:
    """Rows of a JSONL file, or of one split of a `save_to_disk` directory, each tagged with file:line (row)."""
    source = Path(path).expanduser()
    if not source.is_dir():
        if split is not None:
            raise ConfigError(f"split={split}: {source} is a JSONL file, which has no splits")
        return read_rows(source)
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(source))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"not a dataset directory ({str(exc).splitlines()[0]}); expected a JSONL file or a "
                        "directory written by save_to_disk", path=str(source)) from None
    if isinstance(dataset, DatasetDict):
        names = list(dataset)
        chosen = split or ("train" if "train" in names else names[0] if len(names) == 1 else None)
        if chosen not in names:
            raise ConfigError(f"split={split or '?'}: {source} has splits {', '.join(names)}; pick one with split=")
        dataset = dataset[chosen]
    elif split is not None:
        raise ConfigError(f"split={split}: {source} holds a single dataset without splits; leave split out")
    rows = [Row(dict(item), str(source), index + 1) for index, item in enumerate(dataset)]
    if not rows:
        raise DataError("no rows", path=str(source))
    return rows


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
                path=row.path, line=row.line, field=mapping.source,
            )
        if mapping.target in out:
            raise DataError(f"the row already has a field '{mapping.target}' that map {mapping} would overwrite; "
                            "map it elsewhere too or pass drop_unmapped=true",
                            path=row.path, line=row.line, field=mapping.target)
        out[mapping.target] = row.data[mapping.source]
    return out


def _bare_message(exc: DataError) -> str:
    """The message of a DataError without its 'file:line field' prefix (rebuilt the way DataError builds it)."""
    prefix = str(DataError("", path=exc.path, line=exc.line, field=exc.field))
    text = str(exc)
    return text[len(prefix):] if text.startswith(prefix) else text


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
    rows = read_input(args.input, args.split)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
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
        os.replace(staging, out)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")

    def work() -> None:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        count = convert(args)
        checked = f"; every row is a valid {args.layout} row" if args.layout else ""
        print(f"wrote {count} rows to {args.out}{checked}")

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
