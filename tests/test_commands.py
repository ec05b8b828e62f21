"""`forge-trl <subcommand>`: every subcommand's --help, did-you-mean errors, the training help, and what a run
prints on the terminal versus its log file. Help and errors are checked in-process (a subprocess pays ~5 s of
imports); the few subprocess tests check what only a fresh process shows."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from typing import List, Literal, Optional

import pytest
from conftest import REPO

from forge_trl.commands import SUBCOMMANDS, main, run_subcommand
from forge_trl.commands.args import KeyValueParser, passthrough, positional, show_value
from forge_trl.commands.console import is_quiet
from forge_trl.errors import EXIT_USER_ERROR, ConfigError


def call(name: str, argv: list[str]) -> int:
    """A subcommand's exit status, in-process (argparse's --help and errors exit instead of returning)."""
    try:
        return run_subcommand(name, argv)
    except SystemExit as exc:
        return exc.code


def parser_of(name: str) -> KeyValueParser | None:
    return getattr(importlib.import_module(SUBCOMMANDS[name].module), "PARSER", None)


def misspell(word: str) -> str:
    return word[:-2] + word[-1] if len(word) > 3 else word + "x"


# --- every subcommand ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_subcommand_answers_help_with_its_keys_and_defaults(name, capsys):
    assert call(name, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "example:" in out
    parser = parser_of(name)
    for key in parser.keys if parser else []:
        if key.positional:
            assert f"<{key.positional}>" in out
        elif not key.passthrough:
            row = next(line for line in out.splitlines() if line.strip().startswith(f"{key.name}="))
            assert show_value(key.default) in row, (key.name, row)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_a_misspelt_option_gets_did_you_mean_and_exit_2(name, capsys):
    assert call(name, ["--hepl"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown option '--hepl'; did you mean '--help'?" in err[0], err


def named_keys(name: str) -> list[str]:
    parser = parser_of(name)
    return [k.name for k in parser.keys if not k.positional and not k.passthrough] if parser else []


@pytest.mark.parametrize("name", sorted(n for n in SUBCOMMANDS if named_keys(n)))
def test_a_misspelt_key_gets_did_you_mean_and_exit_2(name, capsys):
    key = named_keys(name)[0]
    assert call(name, [f"{misspell(key)}=1"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"forge_trl: config error: unknown key '{misspell(key)}'; did you mean '{key}'?"]


def test_forge_trl_help_lists_the_subcommands_one_line_each(capsys):
    assert main(["--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in SUBCOMMANDS:
        assert sum(line.split()[:1] == [name] for line in lines) == 1, name
    assert main(["trian"]) == EXIT_USER_ERROR
    assert "unknown subcommand 'trian'; did you mean 'train'?" in capsys.readouterr().err


def test_bench_help_in_a_fresh_process_is_help_not_a_checkpoint():
    done = subprocess.run(
        [sys.executable, "-m", "forge_trl.bench", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bench.max_new_tokens=" in done.stdout and "<checkpoint>" in done.stdout and not done.stderr


# --- training --------------------------------------------------------------------------------------------------------


def test_train_help_lists_every_group_option_and_the_composed_keys(capsys):
    from forge_trl.tasks import TASKS

    assert call("train", ["task=dpo", "--help"]) == 0
    out = capsys.readouterr().out
    groups = {
        line.split()[0]: line
        for line in out.splitlines()
        if line.startswith("  ") and line.split()[0] in ("model", "injection", "task", "data")
    }
    assert set(groups) == {"model", "injection", "task", "data"}
    task_options = [o.strip().rstrip("*") for o in groups["task"].split(None, 1)[1].split(",")]
    assert set(TASKS.names()) <= set(task_options) and "dpo*" in groups["task"]
    assert not any("accelerate" in line or "_schema" in line for line in groups.values())
    assert "tiny" in groups["model"] and "demo" in groups["data"]
    keys = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "." in line.split()[0]}
    assert keys["task.beta"].split()[1] == "0.1" and "task.loss_type" in keys  # DPO's keys, with defaults
    assert "output_dir" in out and "python -m forge_trl task=" in out and "--hydra-help" in out


def test_python_m_forge_trl_help_is_the_training_help(capsys):
    assert main(["--help"], bare_help="train") == 0
    assert "config groups" in capsys.readouterr().out


def test_misspelt_training_key_and_group_option_get_did_you_mean():
    from forge_trl.commands.compose import compose

    with pytest.raises(ConfigError, match=r"unknown task 'dpoo'; available: .*; did you mean 'dpo'\?$"):
        compose(["task=dpoo"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'bench.judge.ulr'; did you mean 'bench.judge.url'\?$"):
        compose(["bench.judge.ulr=x"])


def test_misspelt_training_key_fails_on_one_line_with_exit_2(tmp_path, capsys):
    assert call("train", ["task=dpo", "task.bta=0.1", f"output_dir={tmp_path / 'run'}"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.strip().splitlines() == [
        "forge_trl: config error: unknown config key 'task.bta'; did you mean 'task.beta'?"
    ]
    assert not (tmp_path / "run").exists()


def test_a_training_run_keeps_dependency_notices_in_its_log_file(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "forge_trl", "task=sft", "task.max_steps=2", f"output_dir={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert "gemm_4bit_forward" not in terminal and "FutureWarning" not in terminal
    assert f"wrote {out / 'final'}" in terminal  # forge's own lines stay
    log = (out / "forge.log").read_text()
    assert f"wrote {out / 'final'}" in log
    if "gemm_4bit_forward" not in log:  # bitsandbytes emits the line only on some machines: not on this one?
        probe = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True)
        assert "gemm_4bit_forward" not in probe.stderr + probe.stdout


def _record(name: str, message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


@pytest.mark.parametrize(
    "name, message, quiet",
    [
        (
            "bitsandbytes.backends.cpu.ops",
            "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'",
            True,
        ),
        (
            "trl.experimental.orpo.orpo_trainer",
            "[RANK 0] ... set `remove_unused_columns=False` in your TrainingArguments",
            True,
        ),
        (
            "py.warnings",
            "/x/site-packages/transformers/training_args.py:1541: FutureWarning: `a` is deprecated\n",
            True,
        ),
        ("py.warnings", "/x/site-packages/peft/tuners.py:10: DeprecationWarning: old\n", True),
        ("py.warnings", "/x/site-packages/peft/tuners.py:10: UserWarning: check your data\n", False),
        ("py.warnings", f"{REPO / 'forge_trl' / 'train.py'}:3: FutureWarning: forge's own\n", False),
        ("forge_trl", "kernels-community and remove_unused_columns, from forge", False),
        ("bitsandbytes", "some other bitsandbytes warning", False),
    ],
)
def test_which_records_stay_off_the_terminal(name, message, quiet):
    assert is_quiet(_record(name, message)) is quiet


# --- the parser ------------------------------------------------------------------------------------------------------


@dataclass
class Judge:
    # Where to ask.
    url: Optional[str] = None


@dataclass
class Example:
    """An example command."""

    # Inputs.
    items: List[str] = field(metadata=positional("item"))
    # How many.
    count: int = 3
    rate: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    tags: List[str] = field(default_factory=list)
    judge: Judge = field(default_factory=Judge)
    overrides: List[str] = field(default_factory=list, metadata=passthrough("<run key>=<value>", lambda: ["task"]))


PARSER = KeyValueParser(Example, "example", example="forge-trl example x count=2")


def test_parser_types_lists_quotes_nesting_and_passthrough():
    args = PARSER.parse(
        [
            "x",
            "y",
            "count=2",
            "rate=1e-3",
            "flag=TRUE",
            "mode=b",
            "tags=p,q",
            "tags=r",
            "judge.url='http://h:1/v1'",
            "task.beta=0.1",
            "+task.trl_args.optim=sgd",
        ]
    )
    assert args == Example(
        items=["x", "y"],
        count=2,
        rate=1e-3,
        flag=True,
        mode="b",
        tags=["p", "q", "r"],
        judge=Judge("http://h:1/v1"),
        overrides=["task.beta=0.1", "+task.trl_args.optim=sgd"],
    )
    assert PARSER.parse(["x", "judge.url=null"]).judge.url is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["x", "count=many"], "count: expected an integer, got 'many'"),
        (["x", "flag=maybe"], "flag: expected true|false, got 'maybe'"),
        (["x", "mode=c"], "mode: expected a|b, got 'c'"),
        (["x", "cuont=2"], "unknown key 'cuont'; did you mean 'count'?"),
        (["x", "judge.ulr=2"], "unknown key 'judge.ulr'; did you mean 'judge.url'?"),
        (["x", "tsk.beta=1"], "unknown key 'tsk.beta'; did you mean 'task.beta'?"),
        (["x", "--cout=2"], "unknown option '--cout'; did you mean 'count'?"),
        (["count=2"], "no item given"),
    ],
)
def test_parser_errors_name_the_key(argv, message):
    with pytest.raises(ConfigError) as info:
        PARSER.parse(argv)
    assert str(info.value).startswith(message), str(info.value)


def test_parser_help_shows_each_key_default_and_comment():
    text = PARSER.help()
    assert text.startswith("usage: forge-trl example <item> [<item> ...] [key=value ...] [<run key>=<value> ...]")
    assert "An example command." in text and "forge-trl example x count=2" in text
    rows = {
        line.split()[0]: line.split(None, 2)[1:]
        for line in text.splitlines()
        if line.split()[:1] and line.split()[0].endswith("=")
    }
    assert rows["count="] == ["3", "How many."] and rows["judge.url="] == ["null", "Where to ask."]
    assert rows["mode="][0] == "a" and "One of: a|b." in rows["mode="][1] and rows["flag="] == ["false"]
