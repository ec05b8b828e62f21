"""Bad input fails before training with one line naming file:line or the key, exit code 2, no traceback and
no final/ left behind."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli

from forge_trl.models.run_info import read_run_info

GOOD_SFT = {"prompt": "What is 1 plus 1?", "response": "2"}


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# name -> (file content or None, extra overrides, fragment the error line must contain)
CASES = {
    "broken_json": (jsonl(GOOD_SFT, '{"prompt": "x", "response": '), ["task=sft"], "data.jsonl:2: invalid JSON"),
    "missing_field": (jsonl(GOOD_SFT, {"prompt": "x"}), ["task=sft"], "data.jsonl:2 field 'response': missing field"),
    "non_string_field": (
        jsonl({"prompt": "x", "response": 7}),
        ["task=sft"],
        "data.jsonl:1 field 'response': expected a string, got int",
    ),
    "empty_file": ("", ["task=sft"], "data.jsonl: no rows"),
    "not_an_object": (jsonl('["x", "y"]'), ["task=sft"], "data.jsonl:1: expected a JSON object"),
    "empty_rejected": (
        jsonl({"prompt": "x", "chosen": "a", "rejected": ""}),
        ["task=dpo"],
        "data.jsonl:1 field 'rejected': is empty",
    ),
    "bad_message_role": (
        jsonl({"messages": [{"role": "bot", "content": "x"}]}),
        ["task=sft"],
        "data.jsonl:1 field 'messages[0]': role 'bot'",
    ),
    "wrong_data_task": (jsonl(GOOD_SFT), ["task=dpo", "data.layout=sft"], "data.layout=sft does not suit task=dpo"),
    "missing_data_path": (None, ["task=sft", "data.path=does/not/exist.jsonl"], "does/not/exist.jsonl: file not found"),
    "unknown_key": (None, ["task=sft", "task.lerning_rate=1e-4"], "unknown config key 'task.lerning_rate'"),
    "wrong_type": (None, ["task=sft", "task.max_steps=many"], "task.max_steps: Value 'many'"),
    "unknown_task": (None, ["task=ppoo"], "unknown task 'ppoo'; available:"),
    "unknown_injection": (None, ["injection=lora_magic"], "unknown injection 'lora_magic'"),
    "negative_lr": (None, ["task=sft", "task.learning_rate=-1e-4"], "task.learning_rate: must be positive"),
    "negative_beta": (None, ["task=dpo", "task.beta=-0.1"], "task.beta: must be positive"),
    "zero_orpo_lambda": (None, ["task=orpo", "task.orpo_lambda=0"], "task.orpo_lambda: must be positive"),
    "missing_model": (None, ["task=sft", "model.name_or_path=./no/such/model"], "'./no/such/model' does not exist"),
    "not_a_model_dir": (None, ["task=sft", "model.name_or_path=."], "is not a model directory (no config.json)"),
    "bad_target_keyword": (
        None,
        ["task=sft", "injection.target_keywords=[nope_proj]"],
        "injection.target_keywords: 'nope_proj' matches no layer",
    ),
    "unknown_trl_arg": (
        None,
        ["task=sft", "+task.trl_args.not_a_field=1"],
        "task.trl_args: SFTConfig has no field 'not_a_field'",
    ),
    "top_k_above_num_experts": (
        None,
        ["task=sft", "injection=moe_expert_lora", "injection.top_k=9"],
        "injection.top_k: must be between 1 and num_experts=8, got 9",
    ),
    "phase_unknown_group": (
        None,
        ["task=sft", "injection.phases=[{step:0,trainable:[routr]}]"],
        "injection.phases[0].trainable: unknown group 'routr'",
    ),
    "phase_group_absent": (
        None,
        ["task=sft", "injection=dense_lora", "injection.phases=[{step:0,trainable:[router]}]"],
        "group 'router' has no parameters with injection=dense_lora",
    ),
    "phase_first_step_not_zero": (
        None,
        ["task=sft", "injection.phases=[{step:3,trainable:[lora]}]"],
        "the first phase must start at step 0",
    ),
    "handoff_bad_range": (
        None,
        ["task=sft", "injection.handoff.lora={start_step:5,end_step:2}"],
        "injection.handoff.lora: expected 0 <= start_step < end_step",
    ),
    "native_moe_on_dense": (
        None,
        ["task=sft", "injection=native_moe_expert_lora"],
        "injection=native_moe_expert_lora needs a native MoE model",
    ),
    "moe_expert_on_moe": (None, ["task=sft", "model=tiny_moe", "injection=moe_expert_lora"], "already has MoE FFNs"),
    "grpo_without_reward_model": (None, ["task=grpo"], "task.reward_model.checkpoint_path: required"),
    "grpo_batch_not_multiple": (
        None,
        ["task=grpo", "task.reward_model.checkpoint_path=x", "task.num_generations=3"],
        "must be a multiple of it (3)",
    ),
    "kto_batch_of_one": (
        None,
        ["task=kto", "task.per_device_train_batch_size=1"],
        "KTO needs at least 2 examples per batch",
    ),
    "resume_without_checkpoints": (None, ["task=sft", "resume=true"], "resume=true: no checkpoint-N directory"),
    "resume_missing_dir": (None, ["task=sft", "resume=./nowhere/checkpoint-3"], "is not a checkpoint directory"),
    "ppo_without_reward_model": (None, ["task=ppo"], "task.reward_model.checkpoint_path: required"),
    "eval_steps_without_split": (None, ["task=sft", "task.eval_steps=5"], "set data.val_size"),
    "val_size_and_eval_path": (
        None,
        ["task=sft", "data.val_size=0.1", "data.eval_path=x.jsonl"],
        "data.val_size and data.eval_path are both set",
    ),
    "all_rows_truncated": (
        jsonl({"prompt": "word " * 200, "response": "2"}),
        ["task=sft", "data.max_length=16"],
        "all 1 rows have an empty response",
    ),
}


# Cases run through the real command line (a fresh `python -m forge_trl` each): one per kind of failure (data file,
# config key, model/injection fit, data after tokenizing). The rest run the same code in this process: the CLI's
# mapping of any ForgeError to one line and exit 2 is the same for all of them, and a fresh process costs ~7 s.
THROUGH_CLI = ("broken_json", "unknown_key", "native_moe_on_dense", "all_rows_truncated")
REPO = Path(__file__).resolve().parents[1]


def _case_args(name: str, case_dir: Path) -> list[str]:
    content, overrides, _ = CASES[name]
    args = [f"output_dir={case_dir / 'run'}", "task.max_steps=2", *overrides]
    if content is not None:
        (case_dir / "data.jsonl").write_text(content, encoding="utf-8")
        args.append(f"data.path={case_dir / 'data.jsonl'}")
    return args


def _case_cwd(name: str, case_dir: Path) -> Path:
    return REPO if name == "not_a_model_dir" else case_dir  # '.' must be a directory without config.json


@pytest.fixture(scope="module")
def case_results(tmp_path_factory) -> dict:
    """The command-line cases, two at a time: each is a fresh `python -m forge_trl` whose time is mostly its
    imports (one core each), so the machine's two cores run them side by side. Returns name -> (dir, result)."""
    dirs = {name: tmp_path_factory.mktemp(name) for name in THROUGH_CLI}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(lambda n: run_cli(*_case_args(n, dirs[n]), cwd=_case_cwd(n, dirs[n])), name)
            for name in THROUGH_CLI
        }
        return {name: (dirs[name], future.result()) for name, future in futures.items()}


@pytest.mark.parametrize("name", THROUGH_CLI)
def test_bad_input_gives_one_line_error_and_exit_2(name, case_results):
    _, _, fragment = CASES[name]
    tmp_path, result = case_results[name]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("forge_trl:")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    assert fragment in error_lines[0], error_lines[0]
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("name", sorted(set(CASES) - set(THROUGH_CLI)))
def test_bad_input_stops_before_training_with_one_line_naming_it(name, tmp_path, monkeypatch):
    from forge_trl.commands.compose import compose, precheck
    from forge_trl.errors import ForgeError
    from forge_trl.train import run

    _, _, fragment = CASES[name]
    args = _case_args(name, tmp_path)
    monkeypatch.chdir(_case_cwd(name, tmp_path))
    with pytest.raises(ForgeError) as error:
        precheck(args)  # what the CLI checks before Hydra starts
        run(compose(args))
    line = error.value.one_line()
    assert fragment in line and "\n" not in line, line
    assert not (tmp_path / "run" / "final").exists()


def test_existing_final_is_not_overwritten(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "marker").write_text("keep me")
    result = run_cli(f"output_dir={tmp_path / 'run'}", "task=sft", "task.max_steps=1")
    assert result.returncode == 2
    assert "already exists; pass overwrite=true" in result.stderr
    assert (final / "marker").read_text() == "keep me"


def test_bom_crlf_and_trailing_blank_line_load(tmp_path):
    rows = jsonl(GOOD_SFT, {"prompt": "What is 2 plus 2?", "response": "4"}).replace("\n", "\r\n")
    (tmp_path / "data.jsonl").write_text("\ufeff" + rows + "\r\n", encoding="utf-8")
    result = run_cli(
        f"output_dir={tmp_path / 'run'}",
        "task=sft",
        "task.max_steps=1",
        f"data.path={tmp_path / 'data.jsonl'}",
        "plot=false",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "final" / "forge_run.json").is_file()


def test_chosen_identical_to_rejected_warns_and_names_the_row(tmp_path):
    rows = [
        {"prompt": "What is 1 plus 1?", "chosen": "2", "rejected": "3"},
        {"prompt": "What is 2 plus 2?", "chosen": "4", "rejected": "4"},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    result = run_cli(
        f"output_dir={tmp_path / 'run'}",
        "task=dpo",
        "task.max_steps=1",
        "plot=false",
        f"data.path={tmp_path / 'pairs.jsonl'}",
        "task.per_device_train_batch_size=2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr  # Hydra's logging writes to stdout
    assert "1 rows have chosen identical to rejected" in output and "pairs.jsonl:2" in output


def test_tokenizer_without_pad_token_is_handled(tmp_path):
    from transformers import AutoTokenizer

    from forge_trl.models.loading import resolve_source

    tiny = resolve_source("forge-tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny.tokenizer_path)
    tokenizer.pad_token = None
    model_dir = tmp_path / "nopad"
    import shutil

    shutil.copytree(tiny.base, model_dir)
    tokenizer.save_pretrained(model_dir)
    assert AutoTokenizer.from_pretrained(model_dir).pad_token is None
    result = run_cli(
        f"output_dir={tmp_path / 'run'}",
        "task=sft",
        "task.max_steps=1",
        "plot=false",
        f"model.name_or_path={model_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tokenizer has no pad token; using its EOS token" in result.stdout + result.stderr


# Huge lines. A row over forge's per-row limit (4 M characters) fails naming file:line, without echoing the line
# and without tokenizing it; a long row under the limit loads and, like every long row, is cut at data.max_length.
HUGE = 8_000_000  # characters


@pytest.mark.parametrize("closed", [True, False], ids=["valid_json", "broken_json"])
def test_huge_line_gives_a_short_one_line_error(tmp_path, closed):
    huge = '{"prompt": "x", "response": "' + "a" * HUGE + ('"}' if closed else "")
    (tmp_path / "data.jsonl").write_text(jsonl(GOOD_SFT) + huge + "\n", encoding="utf-8")
    result = run_cli(
        f"output_dir={tmp_path / 'run'}", "task=sft", "task.max_steps=1", f"data.path={tmp_path / 'data.jsonl'}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("forge_trl:")]
    assert len(error_lines) == 1 and "data.jsonl:2: row is 8.0 M characters, over the 4 M limit" in error_lines[0]
    assert len(error_lines[0]) < 300 + len(str(tmp_path)), error_lines[0][:500]
    assert len(result.stderr) + len(result.stdout) < 20_000  # the line's content is not printed anywhere
    assert not (tmp_path / "run" / "final").exists()


def test_megabyte_line_loads_and_is_cut_at_max_length(tmp_path):
    story = {"prompt": "Tell a long story.", "response": "once upon a time " * 60_000}  # ~1 MB
    (tmp_path / "data.jsonl").write_text(jsonl(GOOD_SFT, story), encoding="utf-8")
    result = run_cli(
        f"output_dir={tmp_path / 'run'}",
        "task=sft",
        "task.max_steps=1",
        "plot=false",
        "task.per_device_train_batch_size=2",
        "data.max_length=64",
        f"data.path={tmp_path / 'data.jsonl'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    info = read_run_info(tmp_path / "run" / "final")
    assert "2 training rows" in result.stdout + result.stderr, info.data
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Both rows in one batch, each at most 64 tokens: the huge one was cut, not dropped and not kept whole.
    assert 0 < max(r.get("num_tokens", 0) for r in metrics) <= 2 * 64
