"""scripts/bench_perf.py's bookkeeping: medians after warm-up, token counts, pair ratios, the table; and one tiny
forge-vs-plain-TRL SFT pair for a few steps. Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import bench_perf  # noqa: E402


def test_intervals_drop_the_warmup_steps():
    ends = [0.0, 1.0, 1.5, 2.5, 3.0, 4.0]
    assert bench_perf.median_after_warmup(ends, 2) == [1.0, 0.5, 1.0]
    assert bench_perf.median_after_warmup(ends, 0) == [1.0, 0.5, 1.0, 0.5, 1.0]
    assert bench_perf.median_after_warmup([0.0, 2.0], 5) == [2.0]  # too few steps: the last interval


def test_summary_counts_tokens_of_the_timed_steps_only():
    ends = [0.0, 1.0, 2.0, 2.5, 3.5]
    tokens = [100, 200, 300, 400, 500]
    s = bench_perf.summarize(ends, tokens, warmup=1)
    assert s["step_seconds"] == [1.0, 0.5, 1.0]
    assert s["median_step_s"] == 1.0
    assert s["tokens_timed"] == 300  # the steps ending at 2.0, 2.5 and 3.5
    assert s["tokens_per_s"] == pytest.approx(300 / 2.5)
    assert "tokens_per_s" not in bench_perf.summarize(ends, [], warmup=1)


def test_real_tokens_of_padded_preference_and_padding_free_batches():
    padded = {"input_ids": torch.ones(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    assert bench_perf.count_real_tokens(padded) == 5
    orpo = {"prompt_attention_mask": torch.ones(2, 2), "chosen_attention_mask": torch.tensor([[1, 1, 1]] * 2),
            "rejected_attention_mask": torch.tensor([[1, 1, 0]] * 2), "chosen_input_ids": torch.ones(2, 3)}
    assert bench_perf.count_real_tokens(orpo) == 10  # the prompt mask is inside the chosen/rejected masks
    flat = {"input_ids": torch.ones(1, 37), "position_ids": torch.zeros(1, 37)}
    assert bench_perf.count_real_tokens(flat) == 37


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
        "forge-sft": dict(implementation="forge_trl", median_step_s=0.102, tokens_per_s=1000.0, peak_bytes=3 * 2**30,
                          timed_steps=5, own_cores=1.9, other_cores=0.0),
        "plain-sft": dict(implementation="plain TRL", median_step_s=0.1, tokens_per_s=1020.0, peak_bytes=3 * 2**30,
                          timed_steps=5),
        "forge-dpo": dict(implementation="forge_trl", median_step_s=0.2, peak_bytes=4 * 2**30, timed_steps=5),
        "forge-dpo-split": dict(implementation="forge_trl", median_step_s=0.23, peak_bytes=3.3 * 2**30,
                                timed_steps=5),
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
    results["forge-sft-profiled"] = dict(implementation="forge_trl under cProfile", median_step_s=0.2,
                                         forge_own_s=0.0005)
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
        [sys.executable, str(REPO / "scripts" / "bench_perf.py"), "--size", "tiny", "--cases", "sft,gpu",
         "--steps", "2", "--warmup", "1", "--batch", "2", "--seq-len", "32", "--repeats", "1",
         "--workdir", str(tmp_path), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
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
