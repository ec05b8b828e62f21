"""The report's sections as plain data and chart markup, from a gathered `Report` (the page template lays them out).

A section whose data are absent is None here, and the page names it in its list of what is not shown and why.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from markupsafe import Markup

from forge_trl.report import charts
from forge_trl.report.charts import Node, Series
from forge_trl.report.gather import Report, Run, number, objective_value, resolve_path

# Curves shown first for each run, in this order, when it logged them; the others are one click away.
KEY_CURVES = [
    "loss",
    "eval_loss",
    "rewards/accuracies",
    "rewards/margins",
    "accuracy",
    "margin",
    "objective/scores",
    "objective/rlhf_reward",
    "objective/kl",
    "reward",
    "kl",
    "moe/aux_loss",
    "grad_norm",
    "learning_rate",
]
KEY_CURVES_SHOWN = 6
# Run cards (curves, routing) unfolded at first; a directory of many runs shows the others folded.
CARDS_OPEN = 12
# Last logged values worth a place in the lineage (besides the loss): what each task optimises.
STAGE_METRICS = ["rewards/accuracies", "rewards/margins", "accuracy", "objective/scores", "objective/kl", "reward"]
# Bench metrics first in the bench table (others follow in file order); rows' keys that are not metrics.
BENCH_FIRST = [
    "checker_accuracy",
    "format_compliance",
    "preference_accuracy",
    "rm_accuracy",
    "rm_score",
    "rm_score_gain",
    "win_rate",
]
NOT_METRICS = {"label", "path", "kind", "task", "example", "scores", "stage"}
RATES = {"answer_first", "accuracy", "rewards/accuracies", "win_rate", "format_compliance"}
# Routing: heatmaps of at most this many steps (evenly picked) and layers shown before a "more" fold.
ROUTING_STEPS = 80
ROUTING_LAYERS_SHOWN = 4
# A heatmap's cells get hover titles up to this many cells (more would make the page heavy).
CELL_TITLES = 4000


def fmt_metric(key: str, value: Any) -> str:
    """A metric for a table cell: rates as percentages, gains and correlations signed, others 4 digits."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–" if value is None or isinstance(value, (int, float)) else str(value)
    name = key.rsplit("/", 1)[-1]
    if key in RATES or name.endswith(("_accuracy", "_rate", "_compliance")):
        return f"{value:.1%}"
    if name.endswith(("_gain", "_corr")):
        return f"{value:+.3f}"
    if isinstance(value, int):
        return str(value)
    return charts.fmt(value)


def title(key: str) -> str:
    return key.replace("_", " ")


# ----- lineage ------------------------------------------------------------------------------------------------------
@dataclass
class StageRow:
    run: Run
    parent: str  # the parent's name, or the base model / outside checkpoint
    parent_href: Optional[str]
    metrics: list[tuple[str, str]]  # (name, formatted last value) of the stage's task metrics


def _last(run: Run, series: dict, key: str) -> Optional[float]:
    if key in series and series[key][1]:
        return series[key][1][-1]
    return None


def lineage(report: Report) -> Optional[dict]:
    runs = [r for r in report.runs if r.info is not None or r.failed is not None or r.metrics]
    if not runs:
        return None
    by_final = {resolve_path(r.final_dir()): r for r in runs}
    nodes: dict[str, Node] = {}
    parent: dict[str, str] = {}
    reward: dict[str, str] = {}
    rows = []
    for run in runs:
        info = run.info or {}
        series = run.series()
        metrics = [(k, fmt_metric(k, v)) for k in STAGE_METRICS if (v := _last(run, series, k)) is not None][:2]
        loss = run.final_loss
        if run.info is None:
            lines = [run.status, run.failed or ""]
        else:
            step = f"step {run.step}" if run.step is not None else run.status
            lines = [
                f"{run.task} · {run.injection.split()[0]}",
                " · ".join([step] + ([f"loss {charts.fmt(loss)}"] if loss is not None else [])),
            ]
        nodes[run.name] = Node(run.name, run.name, lines, href=run.anchor, failed=run.failed is not None)
        source = info.get("parent") or info.get("base_model")
        parent_name, parent_href = "", None
        if isinstance(source, str) and source:
            found = by_final.get(resolve_path(source))
            if found is not None and found is not run:
                parent[run.name] = found.name
                parent_name, parent_href = found.name, found.anchor
            else:
                key = "base:" + source
                external = _short_path(source)
                nodes.setdefault(
                    key,
                    Node(
                        key,
                        external,
                        ["base model" if not info.get("parent") else "outside this directory"],
                        external=True,
                    ),
                )
                parent[run.name] = key
                parent_name = source
        rm = info.get("reward_model")
        if isinstance(rm, str) and (found := by_final.get(resolve_path(rm))) is not None:
            reward[run.name] = found.name
        rows.append(StageRow(run, parent_name, parent_href, metrics))
    ordered = [n for key, n in nodes.items() if key.startswith("base:")] + [nodes[r.name] for r in runs]
    return {"graph": charts.lineage_graph(ordered, parent, reward), "rows": rows}


def _short_path(path: str) -> str:
    """`outputs/x/sft` for `/abs/outputs/x/sft/final`: the checkpoint's run, its last two parts."""
    parts = [p for p in re.split(r"[\\/]", path) if p]
    if parts and parts[-1] == "final":
        parts = parts[:-1]
    return "/".join(parts[-2:]) if len(parts) > 1 else (parts[0] if parts else path)


# ----- curves ------------------------------------------------------------------------------------------------------
@dataclass
class RunCurves:
    run: Run
    key: list[Markup]
    more: list[Markup]
    summary: list[tuple[str, str]]


def curves(report: Report) -> list[RunCurves]:
    out = []
    for i, run in enumerate(report.runs):
        series = run.series()
        if not series:
            continue
        names = [k for k in KEY_CURVES if k in series][:KEY_CURVES_SHOWN]
        names += [k for k in series if k not in names and k in KEY_CURVES and len(names) < KEY_CURVES_SHOWN]
        rest = sorted(k for k in series if k not in names)
        drawn = {k: charts.line_chart(k, [Series(k, *series[k], color=charts.color(i))]) for k in [*names, *rest]}
        summary = [(k, fmt_metric(k, v)) for k, v in run.summary_metrics.items() if k not in ("total_flos", "epoch")]
        out.append(RunCurves(run, [drawn[n] for n in names], [drawn[n] for n in rest], summary))
    return out


def loss_overlay(runs: list[Run], key: str = "loss") -> Markup:
    """One chart with `key` of every run (a sweep's jobs)."""
    lines = []
    for i, run in enumerate(runs):
        series = run.series()
        if key in series:
            lines.append(Series(run.name, *series[key], color=charts.color(i)))
    return charts.line_chart(f"{key} of every job", lines) if lines else Markup("")


# ----- routing -----------------------------------------------------------------------------------------------------
@dataclass
class RunRouting:
    run: Run
    summary: Markup  # layer x expert at the last logged step
    imbalance: Markup  # largest expert share per layer over steps
    layers: list[Markup]  # expert x step per layer
    scale: Markup
    steps: int
    experts: int


def _layer_label(name: str) -> str:
    found = re.search(r"layers?\.(\d+)", name)
    return found[1] if found else name


def routing(report: Report) -> list[RunRouting]:
    return [found for run in report.runs if (found := run_routing(run)) is not None]


def run_routing(run: Run) -> Optional[RunRouting]:
    """The heatmaps of one run's routing.jsonl: {"step", "expert_share": {layer: [share per expert]}} per log."""
    records = [r for r in run.routing if isinstance(r.get("expert_share"), dict)]
    layers = list(dict.fromkeys(str(k) for r in records for k in r["expert_share"]))
    experts = max((len(v) for r in records for v in r["expert_share"].values() if isinstance(v, list)), default=0)
    if not records or not layers or not experts:
        return None
    # share[i][j][e]: record i, layer j, expert e (missing or non-finite values are 0).
    share = [[_shares(r["expert_share"].get(layer), experts) for layer in layers] for r in records]
    vmax = max(v for per_record in share for per_layer in per_record for v in per_layer) or 1.0
    labels = [_layer_label(layer) for layer in layers]
    steps = [float(s) if (s := number(r.get("step"))) is not None else float(i) for i, r in enumerate(records)]
    summary = charts.heatmap(
        f"expert share at step {charts.fmt(steps[-1])}",
        labels,
        [str(e) for e in range(experts)],
        share[-1],
        vmax=vmax,
        x_label="expert",
        y_label="layer",
        cell_titles=len(layers) * experts <= CELL_TITLES,
    )
    imbalance = charts.line_chart(
        "largest expert share per layer",
        [
            Series(f"layer {label}", steps, [max(per_record[j]) for per_record in share], charts.color(j))
            for j, label in enumerate(labels[:10])
        ],
        caption=f"uniform routing: {1 / experts:.3f}" + (" (first 10 layers)" if len(layers) > 10 else ""),
    )
    picks = sorted({round(i * (len(records) - 1) / (ROUTING_STEPS - 1)) for i in range(ROUTING_STEPS)})
    if len(records) <= ROUTING_STEPS:
        picks = list(range(len(records)))
    per_layer = []
    if len(picks) > 1:
        for j, label in enumerate(labels):
            per_layer.append(
                charts.heatmap(
                    f"layer {label}: expert share over steps",
                    [str(e) for e in range(experts)],
                    [charts.fmt(steps[i]) for i in picks],
                    [[share[i][j][e] for i in picks] for e in range(experts)],
                    vmax=vmax,
                    x_label="step",
                    y_label="expert",
                    cell_titles=experts * len(picks) <= CELL_TITLES,
                )
            )
    return RunRouting(run, summary, imbalance, per_layer, charts.color_scale(vmax, 1 / experts), len(records), experts)


def _shares(values: Any, experts: int) -> list[float]:
    shares = [v if (v := number(x)) is not None else 0.0 for x in values] if isinstance(values, list) else []
    return shares + [0.0] * (experts - len(shares))


# ----- bench --------------------------------------------------------------------------------------------------------
@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    first: list[str] = field(default_factory=list)  # the first column's links (anchors), '' for none


def bench_table(report: Report) -> Optional[dict]:
    benches = [b for b in report.benches if b.rows]
    if not benches:
        return None
    several = len(benches) > 1
    rows = [(b, row) for b in benches for row in b.rows]
    keys = [k for k in BENCH_FIRST if any(k in row for _, row in rows)]
    keys += list(
        dict.fromkeys(
            k
            for _, row in rows
            for k, v in row.items()
            if k not in keys and k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)
        )
    )
    columns = (["bench"] if several else []) + ["checkpoint", "kind", "task", *map(title, keys)]
    body = []
    for bench, row in rows:
        cells = [bench.name] if several else []
        cells += [str(row.get("label", "")), str(row.get("kind") or ""), str(row.get("task") or "")]
        body.append(cells + [fmt_metric(k, row.get(k)) for k in keys])
    examples = [
        (str(row.get("label", "")), str(row["example"])) for _, row in rows if isinstance(row.get("example"), str)
    ]
    sources = []
    for bench in benches:
        held = _dict(bench.report.get("heldout"))
        parts = [f"{held[k]} {k}" for k in ("prompts", "pairs") if isinstance(held.get(k), int)]
        if bench.report.get("decoding"):
            parts.append(f"decoding {bench.report['decoding']}")
        for key in ("reward_model", "judge", "baseline"):
            if bench.report.get(key):
                parts.append(f"{key.replace('_', ' ')} {bench.report[key]}")
        if parts:
            sources.append((bench.name, ", ".join(map(str, parts))))
    return {"table": Table(columns, body), "examples": examples, "sources": sources}


def demo_table(report: Report) -> Optional[Table]:
    stages = (report.demo or {}).get("stages")
    if not isinstance(stages, list) or not stages:
        return None
    stages = [s for s in stages if isinstance(s, dict)]
    keys = list(
        dict.fromkeys(k for s in stages for k, v in s.items() if k not in NOT_METRICS and isinstance(v, (int, float)))
    )
    rows = [
        [str(s.get("stage", "")), *(fmt_metric(k, s.get(k)) for k in keys), str(s.get("example", ""))] for s in stages
    ]
    return Table(["stage", *map(title, keys), "example"], rows)


def rm_histograms(report: Report) -> list[Markup]:
    """Per checkpoint: the RM scores of its responses (a policy) or of the chosen and rejected answers (a reward
    model), from bench.json; else the per-sample `rm_score` metric of bench_results.jsonl."""
    out = []
    for bench in report.benches:
        for row in bench.rows:
            scores = row.get("scores")
            if not isinstance(scores, dict):
                continue
            groups = {
                str(name): [float(v) for v in values if isinstance(v, (int, float))]
                for name, values in scores.items()
                if isinstance(values, list)
            }
            label = str(row.get("label", "?"))
            kind = "chosen vs rejected" if "chosen" in groups else "responses"
            out.append(charts.histogram(f"{label}: RM scores of {kind}", groups))
    if out:
        return [c for c in out if c]
    by_target: dict[str, list[float]] = {}
    for sample in report.samples:
        metrics = sample.get("metrics")
        value = metrics.get("rm_score") if isinstance(metrics, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            by_target.setdefault(str(sample.get("target", "?")), []).append(float(value))
    return [c for t, vs in by_target.items() if (c := charts.histogram(f"{t}: RM scores of responses", {"rm": vs}))]


# ----- per-sample browser -------------------------------------------------------------------------------------------
@dataclass
class Sample:
    target: str
    where: str  # prompt index and sample number, when given
    prompt: str
    system: str
    reference: str
    response: str
    error: str
    metrics: list[tuple[str, str, str]]  # (name, shown value, pass | fail | '')
    judges: list[tuple[str, str, str]]  # (name, score or verdict (and status), rationale)
    outcomes: dict[str, str]  # pass/fail metric or judge -> pass | fail | win | tie | loss


# Per-sample metrics that are counts or scores, never pass/fail, even when every value is 0 or 1.
NOT_PASS_FAIL = ("length", "rm_score")


def _binary(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    return None


def samples(report: Report) -> Optional[dict]:
    """The per-sample rows of bench_results.jsonl (forge_trl/bench/results.py describes a row) for the browser."""
    raw = report.samples
    if not raw:
        return None
    names = list(dict.fromkeys(k for s in raw if isinstance(s.get("metrics"), dict) for k in s["metrics"]))
    binary = [
        n
        for n in names
        if not n.endswith(NOT_PASS_FAIL)
        and all(
            _binary(s["metrics"][n]) is not None or s["metrics"][n] is None
            for s in raw
            if isinstance(s.get("metrics"), dict) and n in s["metrics"]
        )
    ]
    rows = []
    verdict_judges: list[str] = []
    outcome_values: list[str] = []
    for s in raw:
        metrics = _dict(s.get("metrics"))
        shown, outcomes = [], {}
        for name, value in metrics.items():
            outcome = _binary(value) if name in binary else None
            state = "" if outcome is None else ("pass" if outcome else "fail")
            if state:
                outcomes[str(name)] = state
            mark = {1: "✓", 0: "✗"}.get(outcome) if outcome is not None else None
            shown.append((str(name), mark or fmt_metric(name, value), state))
        judges = []
        for name, verdict in _dict(s.get("judges")).items():
            if not isinstance(verdict, dict):
                judges.append((str(name), str(verdict), ""))
                continue
            value = verdict.get("score", verdict.get("verdict"))
            text = (
                fmt_metric("score", value)
                if isinstance(value, (int, float))
                else str(value if value is not None else "")
            )
            if isinstance(verdict.get("verdict"), str):
                key = f"judge {name}"
                outcomes[key] = verdict["verdict"]
                verdict_judges.append(key)
            status = verdict.get("status")
            if isinstance(status, str) and status != "ok":
                text = f"{text} ({status})".strip()
            if verdict.get("baseline"):
                text += f" vs {verdict['baseline']}"
            judges.append((str(name), text, str(verdict.get("rationale") or "")))
        outcome_values += outcomes.values()
        where = [f"prompt {s['index']}" if isinstance(s.get("index"), int) else ""]
        if isinstance(s.get("sample"), int) and s["sample"]:
            where.append(f"sample {s['sample']}")
        rows.append(
            Sample(
                target=str(s.get("target", "")),
                where=", ".join(w for w in where if w),
                prompt=_text(s.get("prompt")),
                system=_text(s.get("system")),
                reference=_text(s.get("reference")),
                response=_text(s.get("response")),
                error=_text(s.get("error")),
                metrics=shown,
                judges=judges,
                outcomes=outcomes,
            )
        )
    order = ["pass", "fail", "win", "tie", "loss"]
    values = sorted(set(outcome_values), key=lambda v: (order.index(v) if v in order else len(order), v))
    return {
        "rows": rows,
        "targets": list(dict.fromkeys(r.target for r in rows)),
        "filters": binary + list(dict.fromkeys(verdict_judges)),
        "judged": any(r.judges for r in rows),
        "outcomes": values,
    }


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # chat messages
        return "\n".join(
            f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in value
        )
    return str(value)


# ----- sweep --------------------------------------------------------------------------------------------------------
def sweep(report: Report) -> Optional[dict]:
    """The jobs' table, the objective per trial (with the best so far) and against each swept parameter, and every
    job's loss in one chart."""
    spec = report.sweep
    if spec is None:
        return None
    jobs = report.runs
    objective, direction, note = spec.objective or "train_loss", spec.direction, ""
    values = {r.name: objective_value(r, report.benches, objective) for r in jobs}
    if not any(v is not None for v in values.values()) and objective != "train_loss":
        note = f"no job has a value of {objective}; the objective shown is the training loss"
        objective, direction = "train_loss", "minimize"
        values = {r.name: objective_value(r, report.benches, objective) for r in jobs}
    done = [(r, v) for r in jobs if (v := values[r.name]) is not None]
    better = max if direction == "maximize" else min
    best = better(done, key=lambda pair: pair[1])[0].name if done else None
    bench_keys = [k for k in BENCH_FIRST if k != objective and any(k in row for b in report.benches for row in b.rows)]
    rows = []
    for run in jobs:
        bench_row = next((b.rows[0] for b in report.benches if b.dir == run.dir and b.rows), {})
        rows.append(
            [
                run.name,
                *(run.params.get(k, "") for k in spec.keys),
                run.status if run.failed is None else f"failed: {run.failed}",
                fmt_metric(objective, values[run.name]),
                fmt_metric("loss", run.final_loss),
                *(fmt_metric(k, bench_row.get(k)) for k in bench_keys),
            ]
        )
    table = Table(
        ["job", *spec.keys, "status", f"{objective} ({direction})", "last loss", *map(title, bench_keys)],
        rows,
        first=[r.anchor for r in jobs],
    )
    plots: list[Markup] = []
    if done:
        trials = sorted((_trial_number(r.name, i), v, r.name) for i, (r, v) in enumerate(done))
        running: list[float] = []
        for _, v, _ in trials:
            running.append(v if not running else better(running[-1], v))
        plots.append(
            charts.scatter(
                f"{objective} per trial",
                trials,
                x_label="trial (job)",
                y_label=objective,
                best_line=running,
                highlight=best,
            )
        )
    for key in spec.keys:
        points = [(str(r.params[key]), v, f"job {r.name}") for r, v in done if key in r.params]
        if not points:
            continue
        numbers = [_number(p) for p, _, _ in points]
        numeric = [(n, v, label) for n, (_, v, label) in zip(numbers, points) if n is not None]
        categories = None
        if len(numeric) < len(points):
            categories = list(dict.fromkeys(p for p, _, _ in points))
            numeric = [(float(categories.index(p)), v, label) for p, v, label in points]
        plots.append(
            charts.scatter(
                f"{key} vs {objective}",
                numeric,
                x_label=key,
                y_label=objective,
                categories=categories,
                highlight=f"job {best}",
            )
        )
    overlay = loss_overlay(jobs)
    if overlay:
        plots.append(overlay)
    failed = sum(r.failed is not None for r in jobs)
    return {
        "objective": objective,
        "direction": direction,
        "best": best,
        "best_anchor": next((r.anchor for r in jobs if r.name == best), ""),
        "best_value": fmt_metric(objective, values.get(best)) if best else None,
        "table": table,
        "plots": [p for p in plots if p],
        "optuna": spec.optuna,
        "note": note,
        "counts": (len(jobs), len(jobs) - failed, failed),
    }


def _trial_number(name: str, index: int) -> float:
    return float(name) if name.isdigit() else float(index)


def _number(text: Any) -> Optional[float]:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


# ----- the whole page -----------------------------------------------------------------------------------------------
def build(report: Report) -> dict:
    """The template's context: each section's data, None where its files are absent, and the notes saying so."""
    sections: dict[str, Any] = {
        "sweep": sweep(report),
        "lineage": lineage(report),
        "curves": curves(report),
        "routing": routing(report),
        "bench": bench_table(report),
        "demo": demo_table(report),
        "rm": rm_histograms(report),
        "samples": samples(report),
    }
    absent = []
    if not sections["lineage"]:
        absent.append("Lineage: no run with final/forge_run.json")
    if not sections["curves"]:
        absent.append("Curves: no metrics.jsonl")
    if not sections["routing"]:
        absent.append("Routing heatmaps: no routing.jsonl (written by routed injections such as moe_expert_lora)")
    if not sections["bench"] and not sections["demo"]:
        absent.append("Bench table: no bench.json (run `forge-trl bench` or train with bench.enabled=true)")
    if not sections["rm"]:
        absent.append("RM score histograms: the bench scored no responses with a reward model")
    if not sections["samples"]:
        absent.append("Samples: no bench_results.jsonl")
    if report.kind == "sweep" and not sections["sweep"]:
        absent.append("Sweep plots: no finished jobs")
    return {"sections": sections, "absent": absent, "bench_examples_limit": 20}
