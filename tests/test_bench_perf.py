"""The benchmarks package: bench_perf's bookkeeping (intervals after warm-up, token counts, pair ratios, the
table, through benchmarks/harness.py), the harness's child runner and markdown table, the package's import rules;
and one tiny forge-vs-plain-TRL SFT pair for a few steps. Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_perf, harness

REPO = Path(__file__).resolve().parent.parent


def test_intervals_drop_the_warmup_steps():
    ends = [0.0, 1.0, 1.5, 2.5, 3.0, 4.0]
    assert harness.intervals_after_warmup(ends, 2) == [1.0, 0.5, 1.0]
    assert harness.intervals_after_warmup(ends, 0) == [1.0, 0.5, 1.0, 0.5, 1.0]
    assert harness.intervals_after_warmup([0.0, 2.0], 5) == [2.0]  # too few steps: the last interval


def test_summary_counts_tokens_of_the_timed_steps_only():
    ends = [0.0, 1.0, 2.0, 2.5, 3.5]
    tokens = [100, 200, 300, 400, 500]
    s = harness.summarize(ends, tokens, warmup=1)
    assert s["step_seconds"] == [1.0, 0.5, 1.0]
    assert s["median_step_s"] == 1.0
    assert s["tokens_timed"] == 300  # the steps ending at 2.0, 2.5 and 3.5
    assert s["tokens_per_s"] == pytest.approx(300 / 2.5)
    assert "tokens_per_s" not in harness.summarize(ends, [], warmup=1)


def test_real_tokens_of_padded_preference_and_padding_free_batches():
    padded = {"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    assert harness.count_real_tokens(padded) == 5
    orpo = {
        "prompt_attention_mask": torch.ones(2, 2),
        "chosen_attention_mask": torch.tensor([[1, 1, 1]] * 2),
        "rejected_attention_mask": torch.tensor([[1, 1, 0]] * 2),
        "chosen_input_ids": torch.ones(2, 3),
    }
    assert harness.count_real_tokens(orpo) == 10  # the prompt mask is inside the chosen/rejected masks
    flat = {"input_ids": torch.ones(1, 37), "position_ids": torch.zeros(1, 37)}
    assert harness.count_real_tokens(flat) == 37


def test_forge_own_work_counts_callback_hooks_in_full_and_other_forge_code_by_self_time():
    class Stats:  # the shape of pstats.Stats.stats: (file, line, name) -> (calls, calls, self, cumulative, callers)
        stats = {
            ("/x/forge_trl/callbacks.py", 1, "on_step_end"): (10, 10, 0.001, 0.05, {}),
            ("/x/forge_trl/tasks/base.py", 2, "compute_loss"): (10, 10, 0.002, 3.0, {}),
            ("/x/trl/trainer/dpo_trainer.py", 3, "compute_loss"): (10, 10, 0.5, 2.9, {}),
        }

    assert bench_perf.forge_own_seconds(Stats(), steps=10) == pytest.approx((0.05 + 0.002) / 10)


def test_ratios_verdicts_and_table():
    results = {
        "forge-sft": dict(
            implementation="forge_trl",
            median_step_s=0.102,
            tokens_per_s=1000.0,
            peak_bytes=3 * 2**30,
            timed_steps=5,
            own_cores=1.9,
            other_cores=0.0,
        ),
        "plain-sft": dict(
            implementation="plain TRL", median_step_s=0.1, tokens_per_s=1020.0, peak_bytes=3 * 2**30, timed_steps=5
        ),
        "forge-dpo": dict(implementation="forge_trl", median_step_s=0.2, peak_bytes=4 * 2**30, timed_steps=5),
        "forge-dpo-split": dict(implementation="forge_trl", median_step_s=0.23, peak_bytes=3.3 * 2**30, timed_steps=5),
        "forge-ppo": dict(error="see log"),
    }
    rows = bench_perf.compute_ratios(["sft", "memory", "orpo"], results)
    by_label = {r["label"]: r for r in rows}
    sft = by_label["forge / plain TRL step time, SFT"]
    assert sft["value"] == pytest.approx(1.02) and sft["result"] == "met"
    dpo = by_label["peak memory DPO / SFT (forge, TRL's one-batch step)"]
    assert dpo["value"] == pytest.approx(4 / 3) and dpo["result"] == "(info)"
    split = by_label["peak memory DPO split_pairs / SFT (forge)"]
    assert split["value"] == pytest.approx(1.1) and split["result"] == "met"
    assert by_label["step time DPO split_pairs / DPO (forge)"]["value"] == pytest.approx(1.15)
    assert by_label["peak memory PPO / SFT (forge, shared base)"]["result"] == "n/a"  # failed run: no ratio
    assert not any(r["case"] == "orpo" for r in rows)  # runs absent: no row
    assert bench_perf.verdict(1.6, 1.5, "min") == "met" and bench_perf.verdict(2.0, None, None) == "(info)"
    assert bench_perf.verdict(1.05, 1.03, "max", noise=0.08) == "MISSED, within the ±8% process-to-process spread"
    assert bench_perf.verdict(1.05, 1.03, "max", noise=0.02) == "MISSED"
    assert bench_perf.process_spread({"process_medians_s": [0.09, 0.1, 0.11]}) == pytest.approx(0.1)
    results["forge-sft-profiled"] = dict(
        implementation="forge_trl under cProfile", median_step_s=0.2, forge_own_s=0.0005
    )
    own = {r["label"]: r for r in bench_perf.compute_ratios(["sft"], results)}
    assert own["(plain TRL step + forge's own work) / plain TRL step, SFT"]["value"] == pytest.approx(1.005)
    tiny = {r["label"]: r for r in bench_perf.compute_ratios(["memory"], results, "tiny")}
    # torch's own memory dominates the tiny model's peak
    assert tiny["peak memory DPO split_pairs / SFT (forge)"]["result"] == "(not judged on tiny)"
    table = bench_perf.format_tables(results, rows, "peak RSS")
    assert "| forge-sft | forge_trl | 102.0 ms | 5 | 1,000 | 3,072 MiB | 1.90 / 0.00 |" in table
    assert "| forge-ppo | ? | failed: see log |" in table
    assert "| forge / plain TRL step time, SFT | 1.02x | ≤ 1.03x | met |" in table


@pytest.mark.slow
def test_one_tiny_pair_runs_end_to_end(tmp_path, forge_cache):
    out = tmp_path / "perf.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_perf",
            "--size",
            "tiny",
            "--cases",
            "sft,gpu",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch",
            "2",
            "--seq-len",
            "32",
            "--repeats",
            "1",
            "--workdir",
            str(tmp_path),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("forge-sft", "plain-sft"):
        run = report["results"][key]
        assert run["timed_steps"] == 2 and run["median_step_s"] > 0 and run["peak_bytes"] > 0
        assert run["tokens_timed"] == 2 * 2 * 32  # every row is cut to exactly --seq-len tokens
    assert "forge / plain TRL step time, SFT" in proc.stdout
    if not torch.cuda.is_available():
        assert "gpu: skipped" in proc.stdout


def test_step_timer_gives_each_step_the_batches_it_trained_on():
    timer = harness.step_timer()
    timer.samples = [(1.0, 0.0, 0.0), (2.0, 1.0, 0.5), (3.0, 2.0, 1.0)]
    timer.batch_tokens = [10, 20, 30, 40]  # the data loader collates one batch ahead of the steps
    assert timer.tokens_at_end() == [10, 30, 60]
    summary = timer.summary(warmup=0)
    assert summary["tokens_timed"] == 50 and summary["timed_steps"] == 2
    assert summary["own_cores"] == pytest.approx(0.5) and summary["other_cores"] == pytest.approx(0.5)


def test_counting_collator_counts_real_tokens_and_keeps_the_collators_attributes():
    class Collator:
        pad_to_multiple_of = 8

        def __call__(self, features):
            return {"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}

    class Trainer:
        data_collator = Collator()

    timer, trainer = harness.step_timer(), Trainer()
    harness.count_batch_tokens(trainer, timer)
    trainer.data_collator([{}, {}])
    assert timer.batch_tokens == [3] and trainer.data_collator.pad_to_multiple_of == 8


def test_run_logged_reports_the_childs_peak_rss_and_its_failure(tmp_path):
    done = harness.run_logged(
        [sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])"],
        tmp_path / "ok.log",
        "alloc",
    )
    assert done.peak_rss >= 300 * 2**20 and done.wall_s > 0
    with pytest.raises(harness.RunFailed, match="exit 3.*\n.*boom"):
        harness.run_logged(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "bad.log", "bad"
        )


def test_markdown_table():
    table = harness.markdown_table(("a", "b"), [(1, "x"), ("2", None)])
    assert table == "| a | b |\n|---|---|\n| 1 | x |\n| 2 | None |"


def test_defaults_come_from_forge_schemas():
    from benchmarks import bench_ppo
    from forge_trl.rl.ppo_settings import PPOSettings
    from forge_trl.tasks.dpo import DPOTaskConfig
    from forge_trl.tasks.orpo import ORPOTaskConfig
    from forge_trl.tasks.ppo import PPOTaskConfig

    assert bench_perf.plain_task_args("dpo")["beta"] == DPOTaskConfig().beta
    assert bench_perf.plain_task_args("orpo") == {"beta": ORPOTaskConfig().orpo_lambda}
    assert bench_perf.task_learning_rate("dpo") == DPOTaskConfig().learning_rate
    ppo = bench_ppo.ppo_settings()
    assert ppo["kl_coef"] == PPOSettings().kl_coef and ppo["num_ppo_epochs"] == PPOSettings().num_ppo_epochs
    assert ppo["learning_rate"] == harness.schema_default(PPOTaskConfig, "learning_rate")


def test_forge_trl_never_imports_benchmarks_and_benchmarks_never_touch_sys_path():
    import re

    imports = re.compile(r"^\s*(from|import)\s+benchmarks\b", re.MULTILINE)
    assert not [p for p in (REPO / "forge_trl").rglob("*.py") if imports.search(p.read_text(encoding="utf-8"))]
    assert not [p for p in (REPO / "benchmarks").rglob("*.py") if "sys.path" in p.read_text(encoding="utf-8")]
    plain = (REPO / "benchmarks" / "plain_trl.py").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+forge_trl\b", plain, re.MULTILINE)  # the plain side stays plain


def test_naive_expert_loop_computes_what_moe_expert_lora_computes(forge_cache):
    from benchmarks import bench_injections
    from forge_trl.config import ModelConfig
    from forge_trl.injection import get_injection
    from forge_trl.models.loading import load_injected, load_tokenizer, resolve_source

    source = resolve_source("forge-tiny")
    settings = {"name": "moe_expert_lora", "num_experts": 4, "top_k": 2, "r": 4}
    model = load_injected(
        source,
        get_injection("moe_expert_lora").from_settings(settings),
        "causal_lm",
        ModelConfig(dtype="float32"),
        "fp32",
        load_tokenizer(source.tokenizer_path),
    )
    model.eval()
    for name, p in model.named_parameters():
        if "lora_" in name and "_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # experts differ from the base FFN
    batch = bench_injections.random_batch(source, 2, 16)
    with torch.no_grad():
        fused = model(batch).logits
        assert bench_injections.use_naive_expert_loop(model) > 0
        naive = model(batch).logits
    torch.testing.assert_close(naive, fused, rtol=1e-4, atol=1e-4)
