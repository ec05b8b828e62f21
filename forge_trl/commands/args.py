"""One `key=value` parser for every subcommand that takes key=value arguments (pipeline, bench, export, convert,
preprocess, sweep-report).

A subcommand declares its arguments once, as a dataclass. Each field is a key: its annotation is the type, its
default the default (a field without one is required), the comment block above it the help line. A nested dataclass
field gives dotted keys (`bench.judge.url`); `__post_init__` checks values, as in the config schemas.

    @dataclass
    class ExportArgs:
        \"\"\"Export a forge checkpoint as a standard Hugging Face model directory.\"\"\"

        # A forge checkpoint: a run's final/ directory.
        checkpoint: str
        # Replace an existing `out`.
        overwrite: bool = False

    PARSER = KeyValueParser(ExportArgs, "export", example="forge-trl export checkpoint=outputs/dpo/final")

    def main(argv=None) -> int:
        return PARSER.run(argv, lambda args: export_checkpoint(args.checkpoint, overwrite=args.overwrite))

Types: `str`, `int`, `float`, `bool` (true|false), `Literal[...]` (one of), `Optional[...]` (`null` or empty: None),
`list[str]` (repeated and/or comma-separated). Quotes around a value are removed (`x='[0-9]+'`). A field with
`metadata=positional(...)` takes the arguments without `=`; one with `metadata=passthrough(...)` collects the
`key=value` arguments whose first part names a key of a training run (pipeline and preprocess hand them on).

`-h`/`--help` prints every key with its default and help and an example. An unknown key or option is a ConfigError
("unknown key 'x'; did you mean 'y'?"), printed as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Iterable, Literal, Union

from forge_trl.errors import EXIT_USER_ERROR, ConfigError, did_you_mean, run_command

HELP_FLAGS = ("-h", "--help")
REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()


def positional(metavar: str) -> dict:
    """Field metadata: the arguments without `=` fill this field (`str`: exactly one, `list[str]`: any number)."""
    return {"positional": metavar}


def passthrough(metavar: str, roots: Callable[[], Iterable[str]]) -> dict:
    """Field metadata (a `list[str]` field): `key=value` arguments whose first part is in `roots()` are collected
    here unparsed, for another parser (a training run's Hydra overrides)."""
    return {"passthrough": metavar, "roots": roots}


def run_config_roots() -> list[str]:
    """The top-level keys and groups of a training run's config (forge_trl.config.ForgeConfig)."""
    from forge_trl.config import ForgeConfig

    return [f.name for f in dataclasses.fields(ForgeConfig)]


def wants_help(argv: list[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


@dataclass(frozen=True)
class Key:
    """One declared argument."""

    name: str  # dotted for a nested dataclass field
    type: Any
    default: Any  # REQUIRED when the key has none
    help: str
    positional: str | None = None  # metavar of a positional field
    passthrough: dict | None = None  # metadata of a passthrough field

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.type) in (list, typing.List)


def declared_keys(schema: type, prefix: str = "") -> list[Key]:
    """The keys of a dataclass, nested dataclasses flattened into dotted names, in declaration order."""
    hints = typing.get_type_hints(schema)
    comments = field_comments(schema)
    keys = []
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            keys += declared_keys(kind, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        keys.append(
            Key(
                prefix + f.name,
                kind,
                default,
                f.metadata.get("help") or comments.get(f.name, ""),
                f.metadata.get("positional"),
                dict(f.metadata) if "passthrough" in f.metadata else None,
            )
        )
    return keys


def field_comments(schema: type) -> dict[str, str]:
    """Field name -> the comment block right above the field in the class body (base classes included), the way
    forge's config schemas document their keys."""
    comments: dict[str, str] = {}
    for klass in reversed(schema.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        lines = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1 :]
        body = next((line for line in lines if line.strip()), "")
        indent = len(body) - len(body.lstrip())
        block: list[str] = []
        for line in lines:
            text = line.strip()
            if not text or len(line) - len(line.lstrip()) != indent:
                block = []
                continue
            if text.startswith("#"):
                block.append(text.lstrip("#").strip())
                continue
            match = re.match(r"(\w+)\s*:", text)
            if match and block:
                comments[match[1]] = " ".join(block)
            block = []
    return comments


def first_sentence(text: str) -> str:
    return re.split(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.;])\s", text, maxsplit=1)[0] if text else ""


def show_value(value: Any) -> str:
    """A default as a user would type it."""
    if value is REQUIRED:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show_value(v)}" for k, v in value.items()) + "}"
    if value == "":
        return "''"
    return str(value)


def format_rows(rows: list[tuple[str, str, str]], value_width: int = 24) -> list[str]:
    """`name  value  help` lines, in columns."""
    if not rows:
        return []
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), value_width)
    return [f"  {name:<{name_width}}  {value:<{value_width}}  {text}".rstrip() for name, value, text in rows]


def schema_summary(schema: type) -> str:
    doc = schema.__dict__.get("__doc__") or ""
    return "" if doc.startswith(f"{schema.__name__}(") else inspect.cleandoc(doc)


class KeyValueParser:
    """The parser of one subcommand, from the dataclass that declares its keys."""

    def __init__(self, schema: type, command: str, *, example: str, optional_prefix: str | None = None):
        self.schema = schema
        self.command = command
        self.example = example
        self.optional_prefix = optional_prefix  # e.g. "bench.": `max_rows=3` means `bench.max_rows=3`

    @cached_property
    def keys(self) -> list[Key]:
        return declared_keys(self.schema)

    @cached_property
    def _named(self) -> dict[str, Key]:
        return {k.name: k for k in self.keys if not k.positional and not k.passthrough}

    @property
    def _positional(self) -> Key | None:
        return next((k for k in self.keys if k.positional), None)

    @property
    def _passthrough(self) -> tuple[Key, dict] | None:
        """The field that collects other parsers' arguments, with its `passthrough()` metadata; None without one."""
        return next(((k, k.passthrough) for k in self.keys if k.passthrough), None)

    # --- help ---------------------------------------------------------------------------------------------------

    def usage(self) -> str:
        parts = [f"forge-trl {self.command}"]
        if (key := self._positional) is not None:
            parts.append(f"<{key.positional}>" + (f" [<{key.positional}> ...]" if key.is_list else ""))
        parts += [f"{k.name}=..." for k in self._named.values() if k.required]
        if any(not k.required for k in self._named.values()):
            parts.append("[key=value ...]")
        if (found := self._passthrough) is not None:
            parts.append(f"[{found[1]['passthrough']} ...]")
        return " ".join(parts)

    def help(self) -> str:
        lines = [f"usage: {self.usage()}", ""]
        if summary := schema_summary(self.schema):
            lines += [summary, ""]
        rows = []
        for key in sorted(self.keys, key=lambda k: (not k.positional, bool(k.passthrough))):
            if key.positional:
                rows.append((f"<{key.positional}>", "(required)" if key.required else "", key.help))
            elif key.passthrough:
                rows.append((f"{key.passthrough['passthrough']}", "", key.help))
            else:
                options = choices(key.type)
                text = f"{key.help} One of: {'|'.join(options)}." if options else key.help
                rows.append((f"{key.name}=", show_value(key.default), text.strip()))
        prefix = f" (the `{self.optional_prefix}` prefix is optional)" if self.optional_prefix else ""
        lines += [f"arguments, with their defaults{prefix}:", *format_rows(rows), "", "example:", f"  {self.example}"]
        return "\n".join(lines)

    # --- parsing ------------------------------------------------------------------------------------------------

    def parse(self, argv: list[str]):
        """The schema instance the arguments describe; a ConfigError names the first bad one."""
        values: dict[str, Any] = {}
        free: list[str] = []
        collected: list[str] = []
        for item in argv:
            if item.startswith("-"):
                raise ConfigError(self._unknown_option(item))
            name, sep, raw = item.partition("=")
            if not sep:
                if self._positional is None:
                    raise ConfigError(
                        f"unexpected argument '{item}'; expected key=value (see forge-trl {self.command} --help)"
                    )
                free.append(item)
                continue
            key = self._resolve(name)
            if key is None:
                if self._passes(name):
                    collected.append(item)
                    continue
                raise ConfigError(self._unknown_key(name))
            value = convert(key.name, key.type, _unquote(raw))
            if key.is_list:
                values.setdefault(key.name, []).extend(value)
            else:
                values[key.name] = value
        if (key := self._positional) is not None:
            if key.is_list:
                values[key.name] = free
            elif len(free) > 1:
                raise ConfigError(f"expected one <{key.positional}>, got {len(free)}: {' '.join(free)}")
            elif free:
                values[key.name] = free[0]
            if key.required and not free:
                raise ConfigError(f"no {key.positional} given; usage: {self.usage()}")
        if (found := self._passthrough) is not None:
            values[found[0].name] = collected
        missing = next((k for k in self._named.values() if k.required and k.name not in values), None)
        if missing is not None:
            what = f" ({first_sentence(missing.help)})" if missing.help else ""
            raise ConfigError(f"missing {missing.name}=...{what}; usage: {self.usage()}")
        return _build(self.schema, values)

    def _resolve(self, name: str) -> Key | None:
        if name in self._named:
            return self._named[name]
        if self.optional_prefix and self.optional_prefix + name in self._named:
            return self._named[self.optional_prefix + name]
        return None

    def _passes(self, name: str) -> bool:
        found = self._passthrough
        return found is not None and name.lstrip("+~").split(".", 1)[0] in found[1]["roots"]()

    def _candidates(self) -> list[str]:
        names = list(self._named)
        if self.optional_prefix:
            names += [n.removeprefix(self.optional_prefix) for n in names if n.startswith(self.optional_prefix)]
        return names

    def _unknown_key(self, name: str) -> str:
        candidates = self._candidates()
        suggestion = did_you_mean(name, candidates)
        if not suggestion and (found := self._passthrough) is not None:  # a misspelt group or run key: `tsk.beta`
            head, dot, rest = name.lstrip("+~").partition(".")
            roots = [*found[1]["roots"](), *{c.split(".", 1)[0] for c in candidates}]
            close = difflib.get_close_matches(head, roots, n=1)
            suggestion = f"; did you mean '{close[0]}{dot}{rest}'?" if close else ""
        if not suggestion:
            suggestion = (
                f"; expected one of: {', '.join(candidates)}"
                if len(candidates) <= 12
                else f" (see forge-trl {self.command} --help)"
            )
        return f"unknown key '{name}'{suggestion}"

    def _unknown_option(self, item: str) -> str:
        option = item.split("=", 1)[0]
        suggestion = did_you_mean(option, HELP_FLAGS) or did_you_mean(option.lstrip("-"), self._candidates())
        return f"unknown option '{option}'{suggestion or f'; options: --help (see forge-trl {self.command} --help)'}"

    # --- a command's main ---------------------------------------------------------------------------------------

    def run(self, argv: list[str] | None, work: Callable[[Any], object], *, keeps_log: bool = False) -> int:
        """A subcommand's `main`: help for -h/--help (before anything heavy is imported), else the logging set-up,
        the parse and `work(args)`; a ForgeError becomes one line and exit status 2. `keeps_log`: the work
        attaches a log file (`console.log_to_file`) once it knows its output directory."""
        from forge_trl.commands.console import close_log_file, setup_logging

        argv = list(sys.argv[1:] if argv is None else argv)
        if wants_help(argv):
            print(self.help())
            return 0
        setup_logging(pending=keeps_log)
        try:
            return run_command(lambda: work(self.parse(argv)))
        finally:
            close_log_file()


class FlagParser(argparse.ArgumentParser):
    """argparse for a subcommand whose arguments are true flags (`forge-trl demo --out DIR`), with the same
    conduct as KeyValueParser: --help shows every default and an example; a bad argument is one ConfigError line
    ("unknown option '--lmit'; did you mean '--limit'?") and exit status 2."""

    def __init__(self, command: str, *, example: str, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsAndExampleFormatter)
        super().__init__(prog=f"forge-trl {command}", epilog=f"example:\n  {example}", **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            option = unknown[0].split("=", 1)[0]
            flags = [s for action in self._actions for s in action.option_strings]
            self.error(
                f"unknown option '{option}'{did_you_mean(option, flags)}"
                if option.startswith("-")
                else f"unexpected argument '{option}' (see {self.prog} --help)"
            )
        return parsed

    def error(self, message: str):
        print(ConfigError(message).one_line(), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


class _DefaultsAndExampleFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each help line; the description and the example line as written."""


def choices(kind: Any) -> tuple[str, ...]:
    """The values a `Literal[...]` (or `Optional[Literal[...]]`) type allows; () for any other type."""
    if typing.get_origin(kind) is Union:
        return next((c for p in typing.get_args(kind) if (c := choices(p))), ())
    return tuple(map(str, typing.get_args(kind))) if typing.get_origin(kind) is Literal else ()


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def convert(name: str, kind: Any, text: str) -> Any:
    """`text` as a value of type `kind`; a ConfigError names the key."""
    origin, params = typing.get_origin(kind), typing.get_args(kind)
    if origin is Union:  # Optional[...]
        if text == "" or text.lower() == "null":
            return None
        return convert(name, next(p for p in params if p is not type(None)), text)
    if origin is Literal:
        if text not in params:
            raise ConfigError(
                f"{name}: expected {'|'.join(map(str, params))}, got '{text}'{did_you_mean(text, params)}"
            )
        return text
    if origin in (list, typing.List):
        item = params[0] if params else str
        return [convert(name, item, part.strip()) for part in text.split(",") if part.strip()]
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ConfigError(f"{name}: expected true|false, got '{text}'")
        return text.lower() == "true"
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got '{text}'") from None
    if kind is str:
        return text
    raise TypeError(f"key {name}: unsupported type {kind!r}")


def _build(schema: type, values: dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, name + ".")
        elif name in values:
            kwargs[f.name] = values[name]
    return schema(**kwargs)
