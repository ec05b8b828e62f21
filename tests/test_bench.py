"""`python -m forge_trl.bench`: each metric on fixtures with known answers, the RM and LLM judges, the outputs
(tests/test_bench_api.py: API targets and the LLM judges in depth)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from injection_support import train_in_process
from openai_stub import StubServer, sections

from forge_trl.bench import metrics as M
from forge_trl.bench.api import ApiError
from forge_trl.bench.judges import LlmJudge
from forge_trl.bench.runner import HeldOut, run_bench
from forge_trl.config.bench import ApiConfig, BenchConfig, JudgeConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----- pure metrics -----------------------------------------------------------------------------------------
def test_checker_and_format_metrics_on_known_responses():
    from forge_trl.data.demo_suite import check_answer

    assert M.checker_accuracy(["7", "7.", "seven", "7, I think"], ["7"] * 4, check_answer) == 0.5
    gens = [
        M.Generation("7", 2, True),
        M.Generation("7 and more", 16, False),
        M.Generation("  ", 1, True),
        M.Generation("blue sky", 3, True),
    ]
    assert M.format_compliance(gens) == 0.5  # unfinished and blank responses fail
    assert M.format_compliance(gens, r"\d+") == 0.25  # and with a pattern only the bare number passes


def test_length_stats_and_correlations_match_hand_computed_values():
    assert M.length_stats(list(range(1, 11))) == {"length_mean": 5.5, "length_median": 5.5, "length_p90": 9.0}
    assert M.length_stats([4, 1, 3]) == {"length_mean": 8 / 3, "length_median": 3.0, "length_p90": 4.0}
    assert M.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert M.pearson([1, 2, 3], [5, 5, 5]) is None  # undefined, not 0
    # Ties share their mean rank: ranks([1, 2, 2, 3]) = [1, 2.5, 2.5, 4].
    assert M.ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    # Spearman of x=[1,2,3,4], y=[10,30,20,40]: ranks [1,2,3,4] vs [1,3,2,4] -> 1 - 6*2/(4*15) = 0.8
    assert M.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)


def test_pair_accuracy_counts_ties_as_misses_and_win_rate_counts_ties_as_half():
    assert M.pair_accuracy([2.0, 1.0, 3.0, 0.5], [1.0, 1.0, 4.0, 0.0]) == 0.5
    assert M.win_rate([1.0, 0.0, 0.5, 1.0]) == 0.625


class _ScriptedModel:
    """Stands in for a causal LM whose generate() appends fixed tokens: 9 is EOS, 0 is padding."""

    device = torch.device("cpu")

    def __init__(self, continuations):
        self.continuations = continuations

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        tails = torch.tensor([c[:max_new_tokens] for c in self.continuations[: len(input_ids)]])
        return torch.cat([input_ids, tails], dim=1)


class _Tokenizer:
    padding_side = "right"
    chat_template = None
    eos_token_id = 9
    pad_token_id = 0

    def __call__(self, texts, **_):
        ids = torch.ones(len(texts), 2, dtype=torch.long)
        return _Batch(input_ids=ids, attention_mask=torch.ones_like(ids))

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


class _Batch(dict):
    def to(self, device):
        return self

    def __getattr__(self, name):
        return self[name]


def test_generation_ends_at_the_first_eos_and_flags_unfinished_responses():
    model = _ScriptedModel([[5, 6, 9, 0], [5, 9, 9, 9], [5, 6, 7, 8]])
    gens = M.generate_responses(model, _Tokenizer(), ["a", "b", "c"], max_new_tokens=4)
    assert [(g.text, g.tokens, g.stopped) for g in gens] == [("5 6", 2, True), ("5", 1, True), ("5 6 7 8", 4, False)]


# ----- judges -----------------------------------------------------------------------------------------------
@pytest.fixture
def judge_server():
    """An OpenAI-compatible judge on localhost (tests/openai_stub.py); `rule(first, second)` returns its reply."""
    servers = []

    def start(rule):
        def script(body):
            shown = sections(body)
            return rule(shown["Answer A"], shown["Answer B"])

        servers.append(StubServer({"judge": script, "judge-7b": script}))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_llm_judge_prefers_the_correct_answer_whichever_position_it_is_shown_in(judge_server, monkeypatch):
    server = judge_server(lambda first, second: "A" if first == "4" else "B")
    monkeypatch.setenv("FORGE_TEST_JUDGE_KEY", "sekret")
    cfg = JudgeConfig(baseline="x", url=server.url, model="judge-7b", api_key_env="FORGE_TEST_JUDGE_KEY")
    judge = LlmJudge(cfg, ApiConfig())
    prompts = ["2+2?"] * 4
    assert [j.verdict for j in judge.compare(prompts, ["4"] * 4, ["5"] * 4)] == ["win"] * 4
    outcomes = [j.outcome for j in judge.compare(prompts, ["5", "4", "5", "4"], ["4", "5", "4", "5"])]
    assert outcomes == [0.0, 1.0, 0.0, 1.0]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sekret"
    assert request["body"]["model"] == "judge-7b" and request["body"]["temperature"] == 0
    # Every prompt is asked in both orders: the target as answer A, then as answer B.
    shown_first = sorted(sections(r["body"])["Answer A"] for r in server.requests[:8])
    assert shown_first == ["4"] * 4 + ["5"] * 4


def test_llm_judge_position_bias_cancels_and_unparsed_verdicts_are_counted(judge_server):
    always_a = judge_server(lambda first, second: "A")
    judge = LlmJudge(JudgeConfig(baseline="x", url=always_a.url), ApiConfig())
    judgements = judge.compare(["p"] * 6, ["x"] * 6, ["y"] * 6)
    assert [j.verdict for j in judgements] == ["tie"] * 6 and M.win_rate([j.outcome for j in judgements]) == 0.5
    mumbling = judge_server(lambda first, second: "hard to say")
    judge = LlmJudge(JudgeConfig(baseline="x", url=mumbling.url), ApiConfig())
    judgements = judge.compare(["p"] * 3, ["x"] * 3, ["y"] * 3)
    assert [j.status for j in judgements] == ["unparsed"] * 3 and all(j.outcome is None for j in judgements)
    assert "hard to say" in judgements[0].rationale


def test_llm_judge_that_cannot_be_reached_is_a_one_line_error(judge_server):
    server = judge_server(lambda first, second: "A")
    url = server.url
    server.close()
    judge = LlmJudge(JudgeConfig(baseline="x", url=url), ApiConfig(timeout_s=5, max_retries=0))
    with pytest.raises(ApiError, match="bench.judge: cannot reach http://127.0.0.1"):
        judge.compare(["p"], ["x"], ["y"])


# ----- end to end on trained checkpoints --------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A briefly trained SFT policy and a reward model on top of it."""
    root = tmp_path_factory.mktemp("bench")
    sft, _, _ = train_in_process(root / "sft", "task=sft", "data=demo_sft", "data.max_rows=32", steps=3)
    rm, _, _ = train_in_process(
        root / "rm", "task=rm", "data=demo_preference", "data.max_rows=32", f"model.name_or_path={sft}", steps=3
    )
    return {"sft": sft, "rm": rm}


def _symmetric_heldout(tmp_path: Path) -> HeldOut:
    """Each pair appears with chosen and rejected swapped, so any scorer without ties gets exactly 50%."""
    pairs = []
    for prompt, a, b in [("Give the opposite of hot.", "cold", "warm, I think"), ("What is 2 plus 3?", "5", "6")]:
        pairs += [{"prompt": prompt, "chosen": a, "rejected": b}, {"prompt": prompt, "chosen": b, "rejected": a}]
    return HeldOut(
        ["What is 2 plus 3?", "Give the opposite of hot."],
        ["5", "cold"],
        pairs,
        lambda response, answer: response.strip() == answer,
    )


def test_symmetric_pairs_give_exactly_half_for_policy_and_reward_model(checkpoints, tmp_path):
    cfg = BenchConfig(max_new_tokens=6, plots=False)
    report = run_bench(
        [str(checkpoints["sft"]), str(checkpoints["rm"])], cfg, tmp_path, heldout=_symmetric_heldout(tmp_path)
    )
    policy, rm = report["checkpoints"]
    assert policy["kind"] == "policy" and rm["kind"] == "reward model"
    assert policy["preference_accuracy"] == 0.5
    assert rm["rm_accuracy"] == 0.5
    assert rm["rm_chosen_mean"] == pytest.approx(rm["rm_rejected_mean"], abs=1e-6)
    assert sorted(rm["scores"]["chosen"]) == pytest.approx(sorted(rm["scores"]["rejected"]), abs=1e-6)


def test_bench_cli_writes_table_json_and_plots_with_rm_scores_and_win_rate(checkpoints, tmp_path, judge_server):
    # The judge prefers the shorter response, so the win-rate is known from the responses in bench.json.
    server = judge_server(lambda first, second: "A" if len(first) <= len(second) else "B")
    out = tmp_path / "bench"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forge_trl.bench",
            "forge-tiny",
            str(checkpoints["sft"]),
            str(checkpoints["rm"]),
            f"bench.reward_model={checkpoints['rm']}",
            "bench.judge.baseline=forge-tiny",
            f"bench.judge.url={server.url}",
            "bench.max_rows=6",
            "max_new_tokens=8",
            f"bench.out={out}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| checkpoint |" in result.stdout and "| sft |" in result.stdout and "| rm |" in result.stdout
    report = json.loads((out / "bench.json").read_text())
    base, sft, rm = report["checkpoints"]
    assert report["heldout"]["prompts"] == 6 and report["judge"] == f"llm:judge@{server.url}"
    assert "win_rate" not in base  # the baseline is not judged against itself
    assert 0.0 <= sft["win_rate"] <= 1.0 and len(server.requests) == 2 * 6  # both orders
    assert sft["win_share"] + sft["tie_share"] + sft["loss_share"] == pytest.approx(1.0)
    records = [json.loads(line) for line in (out / "bench_results.jsonl").read_text().splitlines()]
    assert [r["target"] for r in records] == ["forge-tiny"] * 6 + ["sft"] * 6  # no lines for a reward model
    assert all(r["judges"]["pairwise"]["verdict"] in ("win", "tie", "loss") for r in records[6:])
    for row in (base, sft):
        assert 0.0 <= row["checker_accuracy"] <= 1.0 and 0.0 <= row["format_compliance"] <= 1.0
        assert len(row["scores"]["rm"]) == 6 and row["rm_score"] == pytest.approx(sum(row["scores"]["rm"]) / 6)
        assert row["length_p90"] <= 8
    assert 0.0 <= rm["rm_accuracy"] <= 1.0
    for name in ("bench_metrics.png", "bench_scores.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_rm_judge_skips_the_baseline_itself_and_counts_wins_by_rm_score(checkpoints, tmp_path):
    from forge_trl.bench.runner import Bench

    # The baseline under another path (a symlink) is the baseline: it is not judged against itself.
    link = tmp_path / "same"
    link.symlink_to(checkpoints["sft"], target_is_directory=True)
    cfg = BenchConfig(
        max_new_tokens=6, plots=False, judge=JudgeConfig(baseline=str(link), reward_model=str(checkpoints["rm"]))
    )
    heldout = _symmetric_heldout(tmp_path)
    assert "win_rate" not in run_bench([str(checkpoints["sft"])], cfg, tmp_path, heldout=heldout)["checkpoints"][0]
    # Against another baseline, the win-rate is the share of prompts where the RM scores the target higher.
    cfg.judge.baseline = "forge-tiny"
    bench = Bench(cfg, heldout)
    row = bench.evaluate(str(checkpoints["sft"]))
    rm, tokenizer = bench.judge.model, bench.judge.tokenizer
    ours = M.reward_scores(rm, tokenizer, heldout.prompts, [g.text for g in bench.responses(str(checkpoints["sft"]))])
    theirs = M.reward_scores(rm, tokenizer, heldout.prompts, [g.text for g in bench.responses("forge-tiny")])
    expected = [1.0 if a > b else 0.0 if a < b else 0.5 for a, b in zip(ours, theirs)]
    assert row["win_rate"] == pytest.approx(M.win_rate(expected))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["forge-tiny", "bench.max_rowz=3"], "unknown key 'bench.max_rowz'; did you mean 'bench.max_rows'?"),
        (["forge-tiny", "max_rows=many"], "bench.max_rows: expected an integer, got 'many'"),
        (["forge-tiny", "bench.temperature=-1"], "bench.temperature: must be positive"),
        (["bench.max_rows=3"], "no checkpoint given"),
        (["forge-tiny", "bench.judge.baseline=forge-tiny"], "no judge: set bench.judge.reward_model"),
        (["forge-tiny", "bench.format_regex='([0-9]'"], "bench.format_regex: '([0-9]' is not a valid regular"),
    ],
)
def test_bad_bench_arguments_fail_on_one_line_with_exit_2(args, expected):
    result = subprocess.run(
        [sys.executable, "-m", "forge_trl.bench", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-1000:]
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_a_prompts_file_without_prompts_names_the_line(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"question": "no prompt here"}\n')
    result = subprocess.run(
        [sys.executable, "-m", "forge_trl.bench", "forge-tiny", f"bench.prompts={bad}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"{bad}:2 field 'prompt'" in result.stderr
