"""Validation during training: the held-out split (`data.val_size`), eval metrics every `task.eval_steps`, the best
checkpoint (`task.save_best` -> best/) and early stopping, for the TRL tasks and forge's PPO."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from forge_trl.commands.compose import compose
from forge_trl.config import DataConfig, to_typed
from forge_trl.data.dataset import prepare_data, split_held_out
from forge_trl.errors import ConfigError
from forge_trl.models.loading import load_for_inference, load_tokenizer, resolve_source
from forge_trl.models.run_info import read_run_info
from forge_trl.train import run
from forge_trl.trainers.callbacks import read_metrics
from tests.injection_support import train_in_process

EVAL_KEYS = ("eval_loss", "eval_accuracy", "eval/score_mean", "eval/kl")


def eval_records(metrics: list[dict]) -> list[dict]:
    return [r for r in metrics if any(key in r for key in EVAL_KEYS)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------- the held-out split
SFT_ROWS = [{"prompt": f"What is {i} plus 1?", "response": str(i + 1)} for i in range(40)]
PAIR_ROWS = [{"prompt": f"What is {i} plus 2?", "chosen": str(i + 2), "rejected": str(i + 3)} for i in range(40)]


def text(value) -> str:
    """A TRL column's text: a plain string, or the content of its last message."""
    return value if isinstance(value, str) else value[-1]["content"]


@pytest.mark.parametrize("layout, rows", [("sft", SFT_ROWS), ("prompted_preference", PAIR_ROWS)])
@pytest.mark.parametrize("val_size, held", [(7, 7), (0.25, 10), (0.01, 1)])
def test_val_size_holds_out_a_fixed_disjoint_split_of_the_requested_size(tmp_path, layout, rows, val_size, held):
    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    data = DataConfig(path=str(write_jsonl(tmp_path / "rows.jsonl", rows)), layout=layout, val_size=val_size)
    first, again = prepare_data(layout, data, tokenizer), prepare_data(layout, data, tokenizer)
    assert first.eval is not None and again.eval is not None

    def prompts(dataset) -> list[str]:
        return [text(row["prompt"]) for row in dataset]

    train, evaluated = prompts(first.train), prompts(first.eval)
    assert len(evaluated) == held and len(train) == len(rows) - held
    assert not set(train) & set(evaluated)  # disjoint
    assert set(train) | set(evaluated) == {row["prompt"] for row in rows}  # together: every row once
    assert (prompts(again.train), prompts(again.eval)) == (train, evaluated)  # the same rows on every run
    if layout == "prompted_preference":  # a pair is held out whole: its chosen and rejected stay with its prompt
        source = {row["prompt"]: (row["chosen"], row["rejected"]) for row in rows}
        assert all((text(r["chosen"]), text(r["rejected"])) == source[text(r["prompt"])] for r in first.eval)
    assert first.stats["eval_rows"] == held and first.stats["val_size"] == val_size


def test_a_tokenized_cache_is_split_alike(tmp_path):
    """A `forge-trl preprocess` cache holds whole examples: val_size holds the requested number out of them."""
    from forge_trl.data.token_cache import build_cache

    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    source = write_jsonl(tmp_path / "rows.jsonl", SFT_ROWS)
    raw = DataConfig(path=str(source), layout="sft", max_length=64)
    build_cache(
        str(source),
        tmp_path / "cache",
        task_name="sft",
        layout="sft",
        data=raw,
        tokenizer=tokenizer,
        tokenizer_source="forge-tiny",
    )
    cached = DataConfig(path=str(tmp_path / "cache"), format="processed", layout="sft", max_length=64, val_size=0.2)
    first, again = prepare_data("sft", cached, tokenizer), prepare_data("sft", cached, tokenizer)
    assert first.eval is not None and len(first.eval) == 8 and len(first.train) == 32
    ids = [tuple(row["input_ids"]) for row in first.train], [tuple(row["input_ids"]) for row in first.eval]
    assert not set(ids[0]) & set(ids[1]) and len(set(ids[0]) | set(ids[1])) == 40
    assert ids == ([tuple(row["input_ids"]) for row in again.train], [tuple(row["input_ids"]) for row in again.eval])


def test_the_split_depends_only_on_the_row_count_and_is_taken_after_max_rows():
    train, held = split_held_out(range(100), 0.1)
    assert (train, held) == split_held_out(range(100), 0.1) and len(held) == 10
    assert sorted(train + held) == list(range(100)) and train == sorted(train)
    with pytest.raises(ConfigError, match=r"data.val_size=100 holds out 100 of the 100 rows"):
        split_held_out(range(100), 100)
    assert len(split_held_out(range(100), 0.001)[1]) == 1  # a fraction rounds up: never an empty eval split


# ------------------------------------------------------------------------------------------- eval during training
@pytest.mark.parametrize(
    "task, data, metric",
    [
        ("sft", "demo_sft", "eval_loss"),
        ("dpo", "demo_preference", "eval_loss"),
        ("rm", "demo_preference", "eval_accuracy"),
    ],
)
def test_eval_metrics_are_logged_every_eval_steps(tmp_path, task, data, metric):
    _, _, metrics = train_in_process(
        tmp_path, f"task={task}", f"data={data}", "data.val_size=6", "task.eval_steps=2", steps=4
    )
    evals = eval_records(metrics)
    assert [r["step"] for r in evals] == [2, 4]
    assert all(isinstance(r.get(metric), float) for r in evals), evals
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4]  # training logs as before
    info = read_run_info(tmp_path / "final")
    assert info.data["eval_rows"] == 6 and info.data["train_rows"] == info.data["rows_read"] - 6
    assert info.metrics[metric] == pytest.approx(evals[-1][metric])  # the last evaluation, for sweeps


class LogitsAtEachEvaluation(TrainerCallback):
    """The model's logits on a fixed input at every evaluation, by step."""

    def __init__(self, input_ids: torch.Tensor):
        self.input_ids = input_ids
        self.by_step: dict[int, torch.Tensor] = {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        training = model.training
        model.eval()
        with torch.no_grad():
            self.by_step[state.global_step] = model(input_ids=self.input_ids).logits.clone()
        model.train(training)


def test_save_best_writes_best_at_the_best_eval_step_with_its_weights_and_it_chains(tmp_path):
    input_ids = torch.tensor([[5, 17, 42, 9, 3]])
    logits = LogitsAtEachEvaluation(input_ids)
    # The eval loss followed upside down (task.greater_is_better=true): it falls as the model trains, so the best
    # evaluation is an early one and best/ must hold that step's weights, not the last.
    run_dir = tmp_path / "sft"
    final, _, metrics = train_in_process(
        run_dir,
        "task=sft",
        "data=demo_sft",
        "data.val_size=8",
        "task.eval_steps=1",
        "task.save_best=true",
        "task.greater_is_better=true",
        "task.learning_rate=0.05",
        "task.lr_scheduler_type=constant",
        "task.warmup_steps=0",
        "precision=fp32",
        steps=4,
        callbacks=(logits,),
    )
    losses = {r["step"]: r["eval_loss"] for r in eval_records(metrics)}
    assert sorted(losses) == [1, 2, 3, 4]
    best_step = max(losses, key=losses.get)
    assert best_step < 4, losses
    best = read_run_info(run_dir / "best")
    assert best.step == best_step and best.metrics["eval_loss"] == pytest.approx(losses[best_step])
    assert best.task == "sft" and best.injection == read_run_info(final).injection  # final/'s format
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == sorted(p.name for p in final.iterdir())
    assert read_run_info(final).metrics["best_step"] == best_step

    model, _, _ = load_for_inference(str(run_dir / "best"), precision="fp32")
    with torch.no_grad():
        reloaded = model(input_ids=input_ids).logits
    torch.testing.assert_close(reloaded, logits.by_step[best_step], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(reloaded, logits.by_step[4], rtol=1e-4, atol=1e-4)  # not the last weights

    best_dir = run_dir / "best"
    chained, _, _ = train_in_process(tmp_path / "chained", "task=sft", f"model.name_or_path={best_dir}", steps=1)
    assert read_run_info(chained).parent == str(best_dir.resolve())


def test_early_stopping_stops_when_the_eval_metric_stops_improving_and_final_is_written(tmp_path, caplog):
    # A learning rate of 0 (TRL's own field; task.learning_rate must be positive) leaves the eval loss exactly equal
    # at every evaluation: the first sets the best, the second does not improve on it, and patience 1 stops there.
    with caplog.at_level(logging.INFO, logger="forge_trl"):
        final, _, metrics = train_in_process(
            tmp_path,
            "task=dpo",
            "data=demo_preference",
            "data.val_size=4",
            "task.eval_steps=2",
            "task.early_stopping_patience=1",
            "task.save_best=true",
            "+task.trl_args.learning_rate=0.0",
            steps=20,
        )
    assert [r["step"] for r in eval_records(metrics)] == [2, 4]
    assert max(r["step"] for r in metrics) == 4
    info = read_run_info(final)
    assert info.step == 4 and info.metrics["stopped_early_at"] == 4
    assert read_run_info(tmp_path / "best").step == 2  # an equal value is no improvement
    stopped = [r.getMessage() for r in caplog.records if "early stopping" in r.getMessage()]
    assert len(stopped) == 1 and "at step 4 of 20" in stopped[0] and "eval_loss" in stopped[0], stopped


def test_a_fresh_run_removes_the_best_an_earlier_run_left(tmp_path):
    stale = tmp_path / "best"
    stale.mkdir()
    (stale / "forge_run.json").write_text("{}", encoding="utf-8")
    train_in_process(tmp_path, "task=sft", "data=demo_sft", steps=1)
    assert not stale.exists()


# ------------------------------------------------------------------------------------------- forge's PPO
@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    final, _, _ = train_in_process(tmp_path_factory.mktemp("rm"), "task=rm", "data=demo_preference", steps=1)
    return final


PPO = (
    "task=ppo",
    "data.val_size=6",
    "task.eval_steps=1",
    "task.per_device_train_batch_size=4",
    "task.per_device_eval_batch_size=4",  # 6 prompts: a full batch and one filled up with repeats
    "task.response_length=3",
    "task.num_ppo_epochs=1",
)


def test_ppo_evaluates_held_out_prompts_and_logs_score_and_kl(reward_model, tmp_path):
    trainers = []
    cfg = compose(
        [
            f"output_dir={tmp_path}",
            "plot=false",
            *PPO,
            f"task.reward_model.checkpoint_path={reward_model}",
            "task.max_steps=2",
            "task.learning_rate=1e-2",
            "task.logging_steps=1",
        ]
    )
    run(cfg, trainer_hook=trainers.append)
    evals = eval_records(read_metrics(tmp_path))
    assert [r["step"] for r in evals] == [1, 2]
    assert all(isinstance(r["eval/score_mean"], float) and isinstance(r["eval/kl"], float) for r in evals)
    assert any(abs(r["eval/kl"]) > 1e-6 for r in evals)  # the policy moved away from the reference
    # Each prompt's response comes from a fixed stream: evaluating the same policy again gives the same numbers.
    again = trainers[0].evaluate()
    for key in ("eval/score_mean", "eval/kl"):
        assert again[key] == pytest.approx(evals[-1][key], rel=1e-5, abs=1e-6), key


def test_ppo_save_best_and_early_stopping_follow_the_eval_score(reward_model, tmp_path):
    # With a learning rate of 0 the policy stays the reference: KL 0 and the same score at every evaluation, which
    # then never improves; patience 1 stops after the second.
    final, _, metrics = train_in_process(
        tmp_path,
        *PPO,
        f"task.reward_model.checkpoint_path={reward_model}",
        "task.save_best=true",
        "task.early_stopping_patience=1",
        "+task.trl_args.learning_rate=0.0",
        steps=6,
    )
    evals = eval_records(metrics)
    assert [r["step"] for r in evals] == [1, 2]
    assert [r["eval/kl"] for r in evals] == [0.0, 0.0]
    assert evals[0]["eval/score_mean"] == evals[1]["eval/score_mean"]
    assert read_run_info(final).metrics["stopped_early_at"] == 2
    best = read_run_info(tmp_path / "best")
    assert best.step == 1 and best.task == "ppo" and best.metrics["eval/score_mean"] == evals[0]["eval/score_mean"]


# ------------------------------------------------------------------------------------------- bad combinations
@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["task.eval_steps=5"], "task.eval_steps: there is no held-out split to evaluate; set data.val_size"),
        (["data.val_size=0.1", "data.eval_path=x.jsonl"], "data.val_size and data.eval_path are both set"),
        (["data.val_size=0"], "data.val_size: expected a row count"),
        (["data.val_size=1.5"], "data.val_size: expected a row count"),
        (["data.val_size=-3"], "data.val_size: expected a row count"),
        (["task.save_best=true", "data.val_size=5"], "task.save_best: follows evaluations during training"),
        (["task.early_stopping_patience=2"], "task.early_stopping_patience: follows evaluations"),
        (
            ["data.val_size=5", "task.eval_steps=1", "task.early_stopping_patience=0"],
            "task.early_stopping_patience: must be a positive number",
        ),
        (["data.val_size=5", "task.eval_steps=0"], "task.eval_steps: must be positive"),
        (["task.early_stopping_threshold=-1"], "task.early_stopping_threshold: must be >= 0"),
    ],
)
def test_bad_combinations_fail_with_one_line_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as error:
        to_typed(compose(["task=sft", *overrides]))
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_a_metric_the_task_does_not_log_fails_at_the_first_evaluation_naming_the_ones_it_does(tmp_path):
    with pytest.raises(ConfigError, match=r"task.metric_for_best=eval_nope is not an eval metric .* eval_loss"):
        train_in_process(
            tmp_path,
            "task=sft",
            "data=demo_sft",
            "data.val_size=4",
            "task.eval_steps=1",
            "task.save_best=true",
            "task.metric_for_best=eval_nope",
            steps=1,
        )
    assert not (tmp_path / "final").exists()


def test_greater_is_better_is_inferred_from_the_metric_name():
    def inferred(task: str, *overrides: str) -> bool:
        return to_typed(compose([f"task={task}", *overrides])).task.metric_greater_is_better

    assert inferred("sft") is False and inferred("dpo") is False  # eval_loss
    assert inferred("rm") is True  # eval_accuracy
    assert inferred("ppo", "task.reward_model.checkpoint_path=x") is True  # eval/score_mean
    assert inferred("ppo", "task.reward_model.checkpoint_path=x", "task.metric_for_best=eval/kl") is False
    assert inferred("sft", "task.metric_for_best=eval_mean_token_accuracy") is True
    assert inferred("sft", "task.greater_is_better=true") is True  # an explicit setting wins


# ------------------------------------------------------------------------------------------- slow: the other tasks
@pytest.mark.slow
@pytest.mark.parametrize(
    "task, overrides, metric",
    [
        ("pretrain", ("data.val_size=8",), "eval_loss"),
        ("orpo", ("data.val_size=4",), "eval_loss"),
        ("kto", ("data.val_size=4",), "eval_loss"),
        ("simpo", ("data.val_size=4",), "eval_loss"),
        (
            "grpo",
            ("data.val_size=4", "task.max_completion_length=4", "task.per_device_train_batch_size=4"),
            "eval_reward",
        ),
        (
            "rloo",
            ("data.val_size=4", "task.max_completion_length=4", "task.per_device_train_batch_size=4"),
            "eval_reward",
        ),
    ],
)
def test_every_task_evaluates_and_keeps_its_best(reward_model, tmp_path, task, overrides, metric):
    rl = ("task.reward_model.checkpoint_path=" + str(reward_model),) if task in ("grpo", "rloo") else ()
    final, _, metrics = train_in_process(
        tmp_path, f"task={task}", *overrides, *rl, "task.eval_steps=1", "task.save_best=true", steps=2
    )
    evals = [r for r in metrics if metric in r]
    assert [r["step"] for r in evals] == [1, 2]
    values = {r["step"]: r[metric] for r in evals}
    better = max if metric == "eval_reward" else min
    best_step = better(values, key=values.get) if values[1] != values[2] else 1
    assert read_run_info(tmp_path / "best").step == best_step
    assert read_run_info(final).step == 2


@pytest.mark.slow
def test_fsdp2_best_equals_one_process_with_double_accumulation(tmp_path):
    """Under FSDP2 (2 CPU processes) every process gathers the weights for best/ and rank 0 writes it: the same
    best/ as one process with twice the accumulation."""
    from tests.launch_support import failure_output, launch, one_process, weight_difference, weights

    settings = ("task=sft", "data.val_size=8", "task.eval_steps=2", "task.save_best=true")
    proc = launch("fsdp2", tmp_path / "two", *settings)
    assert proc.returncode == 0, failure_output(proc)
    one_process(tmp_path / "one", *settings, "task.gradient_accumulation_steps=2")
    two, one = read_run_info(tmp_path / "two" / "best"), read_run_info(tmp_path / "one" / "best")
    assert two.launch == {"processes": 2, "sharded": True} and two.step == one.step
    assert two.metrics["eval_loss"] == pytest.approx(one.metrics["eval_loss"], rel=1e-4)
    assert weight_difference(weights(tmp_path / "two" / "best"), weights(tmp_path / "one" / "best")) <= 1e-3
    losses = [r["eval_loss"] for r in read_metrics(tmp_path / "two") if "eval_loss" in r]
    improvements = sum(loss < min(losses[:i], default=float("inf")) for i, loss in enumerate(losses))
    assert (proc.stdout + proc.stderr).count("wrote best/") == improvements


@pytest.mark.slow
def test_ppo_evaluation_under_fsdp2_equals_one_process(reward_model, tmp_path):
    """2 FSDP2 processes share the held-out prompts (5: the second global batch is filled up with repeats) and log
    the global eval/score_mean and eval/kl, the numbers of one process with the doubled batches."""
    from tests.launch_support import failure_output
    from tests.ppo_support import launch_module

    common = (
        "task=ppo",
        "overwrite=true",
        "plot=false",
        "precision=fp32",
        "injection.dropout=0",
        f"task.reward_model.checkpoint_path={reward_model}",
        "task.response_length=3",
        "task.num_ppo_epochs=1",
        "task.max_steps=2",
        "data.val_size=5",
        "task.eval_steps=1",
        "task.save_best=true",
    )
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    per_process = ("task.per_device_train_batch_size=2", "task.per_device_eval_batch_size=2")
    proc = launch_module("fsdp2", "forge_trl", f"output_dir={two_dir}", *common, *per_process)
    assert proc.returncode == 0, failure_output(proc)
    doubled = ("task.per_device_train_batch_size=4", "task.per_device_eval_batch_size=4", "+task.trl_args.use_cpu=true")
    run(compose([f"output_dir={one_dir}", *common, *doubled]))
    for key in ("eval/score_mean", "eval/kl"):
        two = {r["step"]: r[key] for r in read_metrics(two_dir) if key in r}
        one = {r["step"]: r[key] for r in read_metrics(one_dir) if key in r}
        assert sorted(two) == sorted(one) == [1, 2], (key, two, one)
        assert all(two[s] == pytest.approx(one[s], rel=1e-4, abs=1e-5) for s in one), (key, two, one)
    two_best, one_best = read_run_info(two_dir / "best"), read_run_info(one_dir / "best")
    assert two_best.step == one_best.step and two_best.launch == {"processes": 2, "sharded": True}
