"""`forge-trl report`: one self-contained HTML page of a run, pipeline or sweep, checked in a real headless browser
(Debian's chromium, driven by Playwright; `make browser` installs it) and as text."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from injection_support import train_in_process

from forge_trl.commands import report as report_command
from forge_trl.report import render_report, write_report
from forge_trl.report.sections import fmt_metric

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


# ----- a headless browser -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make browser` installs it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


class Opened:
    """A report open in a page, with everything its console and script said."""

    def __init__(self, browser, path: Path):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def text(self, selector: str = "body") -> str:
        return self.page.inner_text(selector)

    def visible_rows(self) -> int:
        return self.page.locator("#samples-table tbody tr:visible").count()

    def assert_clean(self) -> None:
        problems = [text for kind, text in self.console if kind in ("error", "warning")]
        assert not problems and not self.errors, (problems, self.errors)
        assert all(url.startswith(("file:", "data:", "about:")) for url in self.requests), self.requests

    def sizes(self, selector: str) -> list[tuple[float, float]]:
        return [
            (box["width"], box["height"]) for e in self.page.query_selector_all(selector) if (box := e.bounding_box())
        ]


# ----- a real chained run -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """SFT with a routed injection (routing.jsonl), then DPO from its final/, benched after training."""
    root = tmp_path_factory.mktemp("report") / "chain"
    sft, _, _ = train_in_process(
        root / "sft", "task=sft", "data=demo_sft", "data.max_rows=16", "injection=moe_expert_lora", steps=3
    )
    train_in_process(
        root / "sft-dpo",
        "task=dpo",
        "data=demo_preference",
        "data.max_rows=16",
        f"model.name_or_path={sft}",
        "bench.enabled=true",
        "bench.max_rows=3",
        "bench.max_new_tokens=4",
        "bench.plots=false",
        steps=3,
    )
    results = root / "sft-dpo" / "bench_results.jsonl"
    if not results.is_file():  # a bench that predates bench_results.jsonl: rows in its format
        label = json.loads((root / "sft-dpo" / "bench.json").read_text())["checkpoints"][0]["label"]
        answers = [
            ("Give the opposite of hot.", "cold", "cold"),
            ("What is 2 plus 3?", "5", "7"),
            ("Name it.", "a", "b"),
        ]
        rows = [
            {"target": label, "index": i, "sample": 0, "prompt": p, "system": None, "reference": a, "response": r,
             "metrics": {"checker_accuracy": float(a == r), "format_compliance": 1.0, "length": 2}, "judges": {}}
            for i, (p, a, r) in enumerate(answers)
        ]  # fmt: skip
        results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_report_of_a_chained_run_shows_its_numbers_in_a_browser(chain, browser):
    html = write_report(chain)
    assert html == chain / "report.html"
    opened = Opened(browser, html)
    opened.assert_clean()
    text = opened.text()

    # The lineage: forge-tiny -> sft -> sft-dpo, with each stage's final loss from its forge_run.json.
    stages = opened.text("#stages-table")
    for stage in ("sft", "sft-dpo"):
        info = json.loads((chain / stage / "final" / "forge_run.json").read_text())
        assert f"{stage}\t{info['task']}\t" in stages
        assert fmt_metric("loss", info["metrics"]["last_loss"]) in stages
    assert "moe_expert_lora" in stages and "forge-tiny" in opened.text("#lineage")
    assert opened.page.locator("svg.lineage g.node").count() == 3  # the base model and the two stages
    assert all(w > 100 and h > 40 for w, h in opened.sizes("svg.lineage"))

    # The bench table: every metric of bench.json, formatted as the table formats it.
    bench = json.loads((chain / "sft-dpo" / "bench.json").read_text())["checkpoints"][0]
    table = opened.text("#bench-table")
    for key in ("preference_accuracy", "checker_accuracy", "format_compliance", "length_mean"):
        assert fmt_metric(key, bench[key]) in table, key

    # Curves: one card per stage, charts drawn with a non-zero size; the pointer reads values off a chart.
    curves = opened.page.locator("#curves svg.line-chart")
    assert curves.count() >= 4
    assert all(w > 200 and h > 100 for w, h in opened.sizes("#curves svg.line-chart"))
    first = opened.page.locator("#curves svg.line-chart").first
    width, height = opened.sizes("#curves svg.line-chart")[0]
    first.hover(position={"x": width * 0.6, "y": height * 0.5})
    assert re.search(r"step \d+", opened.text(".tip"))

    # Routing heatmaps of the routed injection (both stages carry it: DPO inherits the checkpoint's injection).
    assert "Routing" in text and opened.page.locator("#routing svg.heatmap").count() >= 2
    assert all(w > 50 and h > 50 for w, h in opened.sizes("#routing svg.heatmap"))

    # The sample browser: the text filter shows exactly the rows that contain the text.
    rows = _samples(chain / "sft-dpo" / "bench_results.jsonl")
    assert opened.visible_rows() == len(rows)
    query = rows[0]["prompt"]
    expected = sum(query.lower() in f"{r['prompt']} {r['response']} {r.get('reference') or ''}".lower() for r in rows)
    opened.page.fill("#filter-search", query)
    assert 0 < opened.visible_rows() == expected < len(rows)
    assert opened.text("#samples-count") == f"showing {expected} of {len(rows)}"
    opened.page.fill("#filter-search", "")
    opened.page.select_option("#filter-metric", "format_compliance")
    opened.page.select_option("#filter-outcome", "fail")
    assert opened.visible_rows() == sum(r["metrics"].get("format_compliance") == 0 for r in rows)
    opened.assert_clean()


# ----- synthetic directories: a bench with hostile text, a sweep, a bare run ----------------------------------------
def _bench_dir(root: Path) -> Path:
    """A bench of two checkpoints and a reward model with RM scores, and per-sample rows, one of them hostile."""
    root.mkdir(parents=True)
    checkpoints = [
        {"label": "sft", "path": "x/sft/final", "kind": "policy", "task": "sft", "checker_accuracy": 0.25,
         "format_compliance": 0.5, "rm_score": 0.125, "scores": {"rm": [0.1, 0.2, 0.05, 0.15]}, "example": HOSTILE},
        {"label": "ppo", "path": "x/ppo/final", "kind": "policy", "task": "ppo", "checker_accuracy": 0.75,
         "format_compliance": 1.0, "rm_score": 0.5, "rm_score_gain": 0.375, "scores": {"rm": [0.4, 0.6, 0.5, 0.5]}},
        {"label": "rm", "path": "x/rm/final", "kind": "reward model", "task": "rm", "rm_accuracy": 0.875,
         "scores": {"chosen": [1.0, 0.8, 0.9], "rejected": [0.1, 0.3, 0.2]}},
    ]  # fmt: skip
    (root / "bench.json").write_text(json.dumps({"heldout": {"prompts": 4, "pairs": 3}, "checkpoints": checkpoints}))
    rows = []
    for target, passed in (("sft", [1, 0, 0, 0]), ("ppo", [1, 1, 1, 0])):
        for i, ok in enumerate(passed):
            rows.append(
                {
                    "target": target,
                    "index": i,
                    "sample": 0,
                    "prompt": f"question {i} <b>bold?</b>",
                    "system": "Answer briefly." if i == 0 else None,
                    "reference": str(i),
                    "response": HOSTILE if (target, i) == ("sft", 3) else f"answer {i} from {target}",
                    "metrics": {"checker_accuracy": float(ok), "format_compliance": 1.0, "length": 3 + i},
                    "judges": {
                        "pairwise": {"verdict": "win" if ok else "loss", "rationale": "<i>why</i>", "status": "ok"}
                    },
                }
            )
    (root / "bench_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    return root


def test_hostile_text_stays_text_and_samples_filter_by_target_and_outcome(tmp_path, browser):
    out = write_report(_bench_dir(tmp_path / "bench"), tmp_path / "page.html")
    html = out.read_text()
    assert HOSTILE not in html and "&lt;script&gt;window.__pwned" in html
    assert "<script>" in html and html.count("<script>") == 1  # the page's own script only
    opened = Opened(browser, out)
    opened.assert_clean()
    assert opened.page.evaluate("window.__pwned") is None
    assert HOSTILE in opened.text("#samples-table")  # shown as text
    assert "1 line(s) that are not JSON objects skipped" in opened.page.text_content("body")

    assert opened.visible_rows() == 8
    opened.page.select_option("#filter-target", "ppo")
    assert opened.visible_rows() == 4
    opened.page.select_option("#filter-metric", "checker_accuracy")
    opened.page.select_option("#filter-outcome", "pass")
    assert opened.visible_rows() == 3
    opened.page.select_option("#filter-target", "")
    opened.page.select_option("#filter-metric", "judge pairwise")
    opened.page.select_option("#filter-outcome", "loss")
    assert opened.visible_rows() == 4

    # RM score histograms: each policy's responses, the reward model's chosen vs rejected.
    assert opened.page.locator("#rm-scores svg.histogram").count() == 3
    assert "chosen: n=3, mean 0.9" in opened.text("#rm-scores")
    table = opened.text("#bench-table")
    assert "87.5%" in table and "+0.375" in table and "75.0%" in table
    opened.assert_clean()


def test_the_sample_browser_shows_fifty_rows_at_a_time(tmp_path, browser):
    (tmp_path / "bench").mkdir()
    rows = [
        {"target": "sft", "prompt": f"p{i}", "response": "r", "metrics": {"format_compliance": i % 2}}
        for i in range(120)
    ]
    (tmp_path / "bench" / "bench_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opened = Opened(browser, write_report(tmp_path / "bench"))
    assert opened.visible_rows() == 50 and opened.text("#samples-count") == "showing 50 of 120 (120 match)"
    opened.page.click("#samples-more")
    opened.page.click("#samples-more")
    assert opened.visible_rows() == 120 and opened.page.locator("#samples-more").is_hidden()
    opened.page.select_option("#filter-outcome", "pass")
    assert opened.visible_rows() == 50 and opened.text("#samples-count") == "showing 50 of 120 (60 match)"
    opened.assert_clean()


def _sweep_dir(root: Path) -> Path:
    """Four jobs of a beta sweep (forge's multirun layout); job 2 failed."""
    for job, beta, accuracy in (("0", "0.05", 0.5), ("1", "0.1", 0.75), ("2", "-1", None), ("3", "0.3", 0.625)):
        run = root / job
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- task=dpo\n- task.beta={beta}\n")
        if accuracy is None:
            (run / "forge_failed.json").write_text(json.dumps({"error": "task.beta: must be positive"}))
            continue
        (run / "final").mkdir()
        metrics = {"last_loss": 0.69 - accuracy / 10, "train_loss": 0.7}
        info = {"task": "dpo", "injection": {"name": "dense_lora", "r": 16}, "step": 4, "parent": None,
                "base_model": "forge-tiny", "metrics": metrics}  # fmt: skip
        (run / "final" / "forge_run.json").write_text(json.dumps(info))
        (run / "final" / "resolved_config.yaml").write_text("bench:\n  objective: preference_accuracy\n")
        (run / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 0.7 - s * accuracy / 40}) + "\n" for s in range(1, 5))
        )
        bench = {"checkpoints": [{"label": job, "kind": "policy", "preference_accuracy": accuracy}]}
        (run / "bench.json").write_text(json.dumps(bench))
    (root / "multirun.yaml").write_text("{}\n")
    return root


def test_a_sweep_report_plots_the_objective_per_trial_and_per_parameter(tmp_path):
    html = render_report(_sweep_dir(tmp_path / "sweep"))
    sweep = html[html.index('<section id="sweep">') : html.index("</section>", html.index('<section id="sweep">'))]
    assert "4 jobs, 3 finished, 1 failed" in sweep and "preference_accuracy" in sweep
    assert re.search(r'best job\s*<a href="#run-1">1</a>\s*with 75.0%', sweep)
    assert "preference_accuracy per trial" in sweep and "task.beta vs preference_accuracy" in sweep
    assert "failed: task.beta: must be positive" in sweep and "loss of every job" in sweep
    assert sweep.count('class="best-point"') == 2  # the best job, ringed in both plots


def test_sections_without_their_files_are_left_out_with_a_note(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": NaN}\n{"step": 3, "loss": 1.5}\n')
    html = render_report(run)
    assert 'id="curves"' in html and "one training run" in html
    for absent in ("Routing heatmaps: no routing.jsonl", "Bench table: no bench.json", "Samples: no bench_results"):
        assert absent in html
    for section in ('id="routing"', 'id="samples"', 'id="bench"', 'id="sweep"'):
        assert section not in html


def test_report_command_arguments_and_a_directory_with_nothing_to_show(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert report_command.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{tmp_path / 'empty'}' holds no run, pipeline, sweep or bench files" in err
    assert report_command.main(["dir=" + str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert report_command.main(["--help"]) == 0 and "forge-trl report <dir>" in capsys.readouterr().out
    assert report_command.main(["sweep=1"]) == 2 and "unknown key 'sweep'" in capsys.readouterr().err

    sweep = _sweep_dir(tmp_path / "sweep")
    assert report_command.main([f"dir={sweep}", f"out={tmp_path / 'x' / 'sweep.html'}"]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'x' / 'sweep.html'}"
    assert report_command.main([str(sweep / "1" / "final")]) == 0  # a checkpoint: the report of its run
    assert (sweep / "1" / "report.html").is_file()


def test_demo_ends_by_printing_where_its_report_is(tmp_path, capsys, monkeypatch):
    from forge_trl.commands import demo

    stage = ("sft", ["task=sft", "data=demo_sft", "data.max_rows=8", "task.max_steps=2", "plot=false"])
    monkeypatch.setattr(demo, "demo_stages", lambda: [stage])
    demo.main(["--out", str(tmp_path / "demo"), "--eval-limit", "2"])
    assert capsys.readouterr().out.rstrip().endswith(f"report: {tmp_path / 'demo' / 'report.html'}")
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Held-out evaluation of the demo stages" in html and 'id="run-sft"' in html
