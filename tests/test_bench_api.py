"""The bench against API models and LLM judges, all on 127.0.0.1 (tests/openai_stub.py): API targets in the table
and in bench_results.jsonl, pointwise and pairwise judges, retries, timeouts, junk replies, the judge cache, and the
one-line errors for an unusable endpoint."""

from __future__ import annotations

import json
import re

import pytest
from openai_stub import Answer, StubServer, closed_port_url, failing, sections

from forge_trl.bench.api import ApiError
from forge_trl.bench.judges import parse_choice, parse_score
from forge_trl.bench.results import RESULTS_FILE, read_results
from forge_trl.bench.runner import HeldOut, run_bench
from forge_trl.commands.bench import bench_config
from forge_trl.commands.bench import main as bench_main
from forge_trl.config.bench import ApiConfig, ApiTarget, BenchConfig, JudgeConfig
from forge_trl.errors import ConfigError

ROWS = [
    {"prompt": "What is 2 plus 3?", "system": "Answer with the number only.", "answer": "5"},
    {"prompt": "Give the opposite of hot.", "answer": "cold"},
    {"prompt": "Name the capital of France.", "answer": "Paris"},
]
# The stub target: right on the first two prompts, wrong on the third.
TARGET_REPLIES = {"What is 2 plus 3?": "5", "Give the opposite of hot.": "cold", "Name the capital of France.": "Lyon"}
QUICK = ApiConfig(max_concurrency=4, timeout_s=0.5, max_retries=1)


def heldout(pairs: bool = True) -> HeldOut:
    from forge_trl.data.demo_suite import check_answer

    pair_rows = [{"prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "6"}] if pairs else []
    return HeldOut(ROWS, [r["answer"] for r in ROWS], pair_rows, check_answer, {})


def target_script(body: dict) -> str:
    return TARGET_REPLIES[body["messages"][-1]["content"]]


def grading_judge(body: dict) -> str:
    """Pointwise: 9 for an answer equal to the reference, 2 otherwise. Pairwise: the answer equal to the reference."""
    parts = sections(body)
    if "Answer" in parts:
        right = parts["Answer"] == parts.get("Reference answer")
        return f"{'Matches' if right else 'Does not match'} the reference.\nScore: {9 if right else 2}"
    a_right = parts["Answer A"] == parts.get("Reference answer")
    return f"Answer {'A' if a_right else 'B'} matches the reference.\nVerdict: {'A' if a_right else 'B'}"


@pytest.fixture
def stub():
    servers: list[StubServer] = []

    def start(**routes):
        servers.append(StubServer(routes))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def config(server, *, judge: dict | None = None, **kwargs) -> BenchConfig:
    target = ApiTarget(base_url=server.url, model="target", name="served")
    judge_cfg = JudgeConfig(url=server.url, **judge) if judge is not None else JudgeConfig()
    return BenchConfig(targets=[target], api=QUICK, judge=judge_cfg, plots=False, max_new_tokens=8, **kwargs)


# ----- API targets ------------------------------------------------------------------------------------------
def test_an_api_target_is_asked_the_rendered_prompts_and_lands_in_the_table_and_results(stub, tmp_path, capsys):
    server = stub(target=target_script, judge=grading_judge)
    report = run_bench([], config(server, judge={"pointwise": True}), tmp_path, heldout=heldout())
    (row,) = report["checkpoints"]
    assert row["label"] == "served" and row["kind"] == "api" and row["path"] == server.url
    assert row["checker_accuracy"] == pytest.approx(2 / 3) and row["format_compliance"] == 1.0
    assert row["length_mean"] == 1.0  # the server's completion_tokens
    # Log-prob metrics need the weights: not applicable, shown as n/a.
    assert row["preference_accuracy"] is None and row["not_applicable"] == ["preference_accuracy"]
    assert row["judge_score"] == pytest.approx((9 + 9 + 2) / 3) and row["judge/unparsed"] == 0
    table = capsys.readouterr().out
    assert "| served |" in table and "n/a" in table and "judge 1-10" in table

    # The prompts as chat messages, system turn included; greedy, within the response budget.
    asked = [r["body"] for r in server.requests if r["body"]["model"] == "target"]
    first = next(b for b in asked if b["messages"][-1]["content"] == "What is 2 plus 3?")
    assert first["messages"] == [
        {"role": "system", "content": "Answer with the number only."},
        {"role": "user", "content": "What is 2 plus 3?"},
    ]
    assert first["temperature"] == 0 and first["max_tokens"] == 8

    records = read_results(tmp_path / RESULTS_FILE)
    assert report["results"] == str(tmp_path / RESULTS_FILE) and len(records) == 3
    assert set(records[0]) >= {"target", "prompt", "system", "reference", "response", "metrics", "judges"}
    assert [r["response"] for r in records] == ["5", "cold", "Lyon"]
    assert records[0]["system"] == "Answer with the number only." and records[1]["system"] is None
    assert [r["metrics"]["checker_accuracy"] for r in records] == [1.0, 1.0, 0.0]
    assert records[2]["judges"]["pointwise"] == {
        "score": 2.0,
        "rationale": "Does not match the reference.\nScore: 2",
        "status": "ok",
    }
    assert json.loads((tmp_path / "bench.json").read_text())["checkpoints"][0]["judge_score"] == row["judge_score"]


def test_a_local_checkpoint_and_an_api_target_share_one_table_and_the_api_one_can_be_the_baseline(stub, tmp_path):
    server = stub(target=target_script, judge=grading_judge)
    cfg = config(server, judge={"baseline": "served"})
    report = run_bench(["forge-tiny"], cfg, tmp_path, heldout=heldout(pairs=False))
    local, served = report["checkpoints"]
    assert local["kind"] == "policy" and served["kind"] == "api"
    # The judge prefers whichever answer matches the reference, in both orders: the untrained model loses (or ties
    # where both are wrong), and the baseline is not judged against itself.
    assert local["loss_share"] + local["tie_share"] == 1.0 and "win_rate" not in served
    records = read_results(tmp_path / RESULTS_FILE)
    assert [r["target"] for r in records] == ["forge-tiny"] * 3 + ["served"] * 3
    assert records[0]["judges"]["pairwise"]["baseline"] == "served"
    assert records[0]["judges"]["pairwise"]["verdict"] == "loss"  # the baseline's "5" is right


def test_a_failing_target_request_is_left_out_and_counted_but_all_failing_is_an_error(stub, tmp_path):
    def flaky(body):
        return Answer(status=500) if "France" in body["messages"][-1]["content"] else target_script(body)

    server = stub(target=flaky)
    (row,) = run_bench([], config(server), tmp_path, heldout=heldout())["checkpoints"]
    assert row["api/failed"] == 1 and row["checker_accuracy"] == 1.0  # over the two answers that came back
    records = read_results(tmp_path / RESULTS_FILE)
    assert (
        records[2]["response"] == "" and "HTTP 500" in records[2]["error"] and records[2]["metrics"]["length"] is None
    )
    assert server.count("target") == 2 + 2  # the failing prompt was tried twice (max_retries=1)

    down = stub(target=lambda body: Answer(status=503))
    with pytest.raises(ApiError, match=r"bench target 'served': every request to http://127.0.0.1:\d+/v1 failed"):
        run_bench([], config(down), tmp_path, heldout=heldout())


def test_sampled_decoding_asks_each_prompt_once_per_sample_at_the_temperature(stub, tmp_path):
    server = stub(target=target_script)
    cfg = config(server, temperature=0.7, samples_per_prompt=2)
    (row,) = run_bench([], cfg, tmp_path, heldout=heldout(pairs=False))["checkpoints"]
    asked = [r["body"] for r in server.requests]
    assert len(asked) == 6 and {b["temperature"] for b in asked} == {0.7}
    records = read_results(tmp_path / RESULTS_FILE)
    assert [(r["index"], r["sample"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert row["not_applicable"] == []  # no pairs: nothing log-prob based was asked for


# ----- judges -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, score",
    [
        ("Score: 7", 7.0),
        ("7/10", 7.0),
        ("**8**", 8.0),
        ("Rating: 9 out of 10", 9.0),
        ("**Score:** 8", 8.0),
        ("Good answer. [[6]]", 6.0),
        ("8", 8.0),
        ("Score: 10", 10.0),
        ("Score: 7.5", 7.5),
        ("It would be 9/10 if shorter.\nScore: 6", 6.0),  # the explicit label wins over a fraction
        ("Score: 4. On reflection, Score: 5", 5.0),  # the last one
        ("Scores go from 1 to 10; this answer: Score: 3", 3.0),
        ("Score: 0", None),  # outside 1-10
        ("Score: 11/10", None),
        ("A fine answer.", None),
        ("", None),
    ],
)
def test_pointwise_scores_are_parsed_robustly(reply, score):
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    "reply, choice",
    [
        ("A", "A"),
        ("b.", "B"),
        ("Verdict: A", "A"),
        ("**Verdict:** B", "B"),
        ("Answer A is wrong.\nVerdict: B", "B"),
        ("Verdict: tie", "tie"),
        ("The verdict is a tie", "tie"),
        ("[[B]]", "B"),
        ("Answer A is better.", "A"),
        ("A good answer is short; answer B is.", "B"),  # an article is not a verdict
        ("Answer A is fine but answer B is better", None),  # both mentioned, no verdict
        ("hard to say", None),
        ("", None),
    ],
)
def test_pairwise_verdicts_are_parsed_robustly(reply, choice):
    assert parse_choice(reply) == choice


def test_pairwise_asks_both_orders_so_a_position_biased_judge_ties_every_prompt(stub, tmp_path):
    server = stub(target=target_script, base=lambda body: "7", judge=lambda body: "A looks better.\nVerdict: A")
    cfg = config(server, judge={"baseline": "base"})
    cfg.targets.append(ApiTarget(base_url=server.url, model="base"))
    served, base = run_bench([], cfg, tmp_path, heldout=heldout(pairs=False))["checkpoints"]
    assert served["win_rate"] == 0.5 and served["tie_share"] == 1.0 and served["win_share"] == 0.0
    assert "win_rate" not in base
    judge_asks = [sections(r["body"]) for r in server.requests if r["body"]["model"] == "judge"]
    assert len(judge_asks) == 2 * len(ROWS)  # each prompt in both orders
    for prompt in TARGET_REPLIES:
        shown = sorted((s["Answer A"], s["Answer B"]) for s in judge_asks if s["User request"] == prompt)
        assert shown == sorted([(TARGET_REPLIES[prompt], "7"), ("7", TARGET_REPLIES[prompt])])
    record = read_results(tmp_path / RESULTS_FILE)[0]["judges"]["pairwise"]
    assert record["verdict"] == "tie" and "target as A: A looks better." in record["rationale"]

    # A judge that sees quality wins where the target is right and loses where it is wrong, in both orders.
    fair = stub(target=target_script, base=lambda body: "7", judge=grading_judge)
    cfg = config(fair, judge={"baseline": "base"})
    cfg.targets.append(ApiTarget(base_url=fair.url, model="base"))
    served = run_bench([], cfg, tmp_path / "fair", heldout=heldout(pairs=False))["checkpoints"][0]
    # (On the third prompt both answers are wrong: the judge picks B in both orders, so the orders disagree: a tie.)
    assert (served["win_share"], served["tie_share"], served["loss_share"]) == (2 / 3, 1 / 3, 0.0)
    assert served["win_rate"] == pytest.approx(5 / 6)


def test_a_judge_answering_500_twice_is_retried_until_it_answers(stub, tmp_path):
    server = stub(target=target_script, judge=failing(2, grading_judge))
    cfg = config(server, judge={"pointwise": True})
    cfg.api = ApiConfig(max_concurrency=1, timeout_s=0.5, max_retries=2)
    (row,) = run_bench([], cfg, tmp_path, heldout=heldout(pairs=False))["checkpoints"]
    assert server.count("judge") == 2 + 3  # two 500s, then one request per prompt
    assert row["judge/failed"] == 0 and row["judge_score"] == pytest.approx(20 / 3)


def test_a_judge_that_times_out_counts_as_failed_and_the_bench_completes(stub, tmp_path):
    server = stub(target=target_script, judge=lambda body: Answer("Score: 9", sleep=1.5))
    (row,) = run_bench([], config(server, judge={"pointwise": True}), tmp_path, heldout=heldout())["checkpoints"]
    assert row["judge/failed"] == 3 and row["judge_score"] is None and row["checker_accuracy"] == pytest.approx(2 / 3)
    record = read_results(tmp_path / RESULTS_FILE)[0]["judges"]["pointwise"]
    assert record["status"] == "failed" and record["score"] is None
    assert record["rationale"] == "no answer within 0.5 s (after 2 tries)"


@pytest.mark.parametrize(
    "reply, status",
    [
        (Answer("I cannot decide, both are fine."), "unparsed"),
        (Answer(""), "unparsed"),
        (Answer(raw=b"<html>Bad gateway</html>"), "failed"),
        (Answer(status=500), "failed"),
    ],
    ids=["prose", "empty", "not-json", "500-after-retries"],
)
def test_a_judge_returning_junk_never_stops_the_bench(stub, tmp_path, reply, status):
    server = stub(target=target_script, judge=lambda body: reply)
    cfg = config(server, judge={"pointwise": True, "baseline": "served"})
    cfg.targets.append(ApiTarget(base_url=server.url, model="target", name="again"))
    served, again = run_bench([], cfg, tmp_path, heldout=heldout())["checkpoints"]
    assert again[f"judge/{status}"] == 3 + 3  # three pointwise and three pairwise judgements
    assert again["judge_score"] is None and again["win_rate"] is None
    assert served[f"judge/{status}"] == 3 and served["checker_accuracy"] == again["checker_accuracy"]
    assert {r["judges"]["pointwise"]["status"] for r in read_results(tmp_path / RESULTS_FILE)} == {status}


def test_judge_replies_are_cached_so_a_rerun_sends_no_judge_requests(stub, tmp_path):
    server = stub(target=target_script, base=lambda body: "7", judge=grading_judge)
    cfg = config(server, judge={"pointwise": True, "baseline": "base"})
    cfg.targets.append(ApiTarget(base_url=server.url, model="base"))
    first = run_bench([], cfg, tmp_path, heldout=heldout())["checkpoints"]
    asked = server.count("judge")
    assert asked == 3 * 2 + 3 * 2  # pointwise for both targets, pairwise in both orders for one
    second = run_bench([], cfg, tmp_path, heldout=heldout())["checkpoints"]
    assert server.count("judge") == asked  # nothing asked again
    assert [r["judge_score"] for r in second] == [r["judge_score"] for r in first]
    assert second[0]["win_rate"] == first[0]["win_rate"]
    # Another rubric is another question.
    cfg.judge.rubric = "Prefer answers in French."
    run_bench([], cfg, tmp_path, heldout=heldout())
    assert server.count("judge") == 2 * asked


# ----- unusable endpoints: one line, exit 2 -----------------------------------------------------------------
def write_prompts(tmp_path) -> list[str]:
    prompts, pairs = tmp_path / "prompts.jsonl", tmp_path / "pairs.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pairs.write_text(json.dumps({"prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "6"}) + "\n")
    return [f"bench.prompts={prompts}", f"bench.pairs={pairs}", f"bench.out={tmp_path / 'out'}", "plots=false"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    print(err)
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_a_missing_key_variable_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FORGE_TEST_NO_SUCH_KEY", raising=False)
    target = "bench.targets=[{base_url:http://127.0.0.1:9/v1,model:gpt-x,api_key_env:FORGE_TEST_NO_SUCH_KEY}]"
    assert bench_main([target, *write_prompts(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith("forge_trl: api error: bench target 'gpt-x': ") and "FORGE_TEST_NO_SUCH_KEY" in line
    judge = [
        "bench.judge.url=http://127.0.0.1:9/v1",
        "bench.judge.pointwise=true",
        "judge.api_key_env=FORGE_TEST_NO_SUCH_KEY",
    ]
    assert bench_main(["forge-tiny", *judge, *write_prompts(tmp_path)]) == 2
    assert "api error: bench.judge: api_key_env for http://127.0.0.1:9/v1 names" in one_error_line(capsys)


def test_an_unreachable_endpoint_is_one_line_naming_it_with_exit_2(tmp_path, capsys):
    url = closed_port_url()
    args = [f"bench.targets=[{{base_url:'{url}',model:m}}]", "api.max_retries=1", "api.timeout_s=0.5"]
    assert bench_main([*args, *write_prompts(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"forge_trl: api error: bench target 'm': cannot reach {url} (")


def test_a_wrong_model_name_is_one_line_with_the_servers_404(stub, tmp_path, capsys):
    server = stub(target=target_script)
    assert (
        bench_main([f"bench.targets=[{{base_url:'{server.url}',model:no-such-model}}]", *write_prompts(tmp_path)]) == 2
    )
    line = one_error_line(capsys)
    assert f"bench target 'no-such-model': {server.url} answered 404 Not Found for model 'no-such-model'" in line
    assert "The model 'no-such-model' does not exist" in line


def test_a_key_is_sent_as_a_bearer_token_only_from_the_named_variable(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_TEST_KEY", "sekret")
    server = stub(target=target_script)
    cfg = config(server)
    cfg.targets[0].api_key_env = "FORGE_TEST_KEY"
    run_bench([], cfg, tmp_path, heldout=heldout())
    assert {r["auth"] for r in server.requests} == {"Bearer sekret"}


@pytest.mark.parametrize(
    "arg, message",
    [
        (
            "targets={baseurl:'http://h/v1',model:m}",
            "bench.targets[0]: unknown key 'baseurl'; did you mean 'base_url'?",
        ),
        ("targets=[{base_url:'http://h/v1'}]", "bench.targets[0].model: required"),
        ("targets=[{base_url:h,model:m}]", "bench.targets[0].base_url: expected an http(s) URL"),
        ("targets=[{base_url:'http://h/v1',model:m},{base_url:'http://i/v1',model:m}]", "two targets are named 'm'"),
        ("targets=missing.yaml", "bench.targets: no such file 'missing.yaml'"),
        ("judge.pointwise=true", "bench.judge.pointwise: needs an LLM judge"),
        ("api.timeout_s=0", "bench.api.timeout_s: must be positive"),
    ],
)
def test_bad_target_and_api_keys_are_config_errors(arg, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        bench_config([arg])


def test_targets_from_a_yaml_file_and_repeated_keys_add_up(tmp_path):
    listed = tmp_path / "targets.yaml"
    listed.write_text("- {base_url: 'https://api.openai.com/v1', model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}\n")
    cfg = bench_config([f"bench.targets={listed}", "targets={base_url:'http://localhost:11434/v1',model:llama3.2}"])
    assert [(t.label, t.api_key_env) for t in cfg.targets] == [("gpt-4o-mini", "OPENAI_API_KEY"), ("llama3.2", None)]
