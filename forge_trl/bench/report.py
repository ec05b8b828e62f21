"""bench.json, the markdown table on stdout, and the PNG plots (bench_results.jsonl: forge_trl/bench/results.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from forge_trl.files import write_text_atomically

# (key, column title, format): the table's columns in order; a column appears when any row has the metric.
COLUMNS = [
    ("checker_accuracy", "checker acc", "pct"),
    ("format_compliance", "format ok", "pct"),
    ("length_mean", "len mean", "num1"),
    ("length_p90", "len p90", "num1"),
    ("preference_accuracy", "pref acc", "pct"),
    ("rm_accuracy", "RM pair acc", "pct"),
    ("rm_chosen_mean", "RM chosen", "num3"),
    ("rm_rejected_mean", "RM rejected", "num3"),
    ("rm_score", "RM score", "num3"),
    ("rm_score_gain", "RM score gain", "signed3"),
    ("rm_length_corr", "RM~length ρ", "signed3"),
    ("judge_score", "judge 1-10", "num1"),
    ("win_rate", "win rate", "pct"),
    ("tie_share", "ties", "pct"),
]
# Metrics in [0, 1] that the bar chart compares across checkpoints.
RATE_METRICS = ["checker_accuracy", "format_compliance", "preference_accuracy", "rm_accuracy", "win_rate", "tie_share"]


def _fmt(value, style: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if style == "pct":
        return f"{value:.1%}"
    if style == "num1":
        return f"{value:.1f}"
    if style == "signed3":
        return f"{value:+.3f}"
    return f"{value:.3f}"


def markdown_table(
    rows: list[dict], *, first=("label", "checkpoint"), extra: Sequence[tuple[str, str, str]] = ()
) -> str:
    """A markdown table of `rows` over the COLUMNS (and `extra` columns first) that any row has; `n/a` where a row
    lists the metric as not applicable (e.g. log-prob metrics of an API target)."""
    columns = [c for c in [*extra, *COLUMNS] if any(c[0] in row for row in rows)]
    lines = ["| " + " | ".join([first[1], *(c[1] for c in columns)]) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        cells = [str(row.get(first[0], ""))] + [
            "n/a"
            if key in row.get("not_applicable", ())
            else _fmt(row.get(key), style)
            if style
            else str(row.get(key, ""))
            for key, _, style in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(report: dict) -> None:
    held = report["heldout"]
    judges = report.get("judges") or {}
    print(
        f"\nbench: {held['prompts']} held-out prompts ({report['decoding']}), {held['pairs']} preference pairs"
        + (f"; judge {report['judge']} vs baseline {report['baseline']}" if report.get("judge") else "")
        + (f"; pointwise judge {judges['pointwise']}" if judges.get("pointwise") else "")
    )
    print(markdown_table(report["checkpoints"]))
    for row in report["checkpoints"]:
        if row.get("example"):
            print(f"  {row['label']}: {row['example']}")
        problems = [
            f"{row[key]} {what}"
            for key, what in (
                ("api/failed", "requests failed"),
                ("judge/unparsed", "judgements unparsed"),
                ("judge/failed", "judgements failed"),
            )
            if row.get(key)
        ]
        if problems:
            print(f"  {row['label']}: {', '.join(problems)} (left out of its scores; see bench_results.jsonl)")
    if report.get("results"):
        print(f"every response with its metrics and judgements: {report['results']}")


def write_report(report: dict, out_dir: Path) -> Path:
    """bench.json, written atomically (forge_trl.files) so that a crash never leaves half a file."""
    return write_text_atomically(out_dir / "bench.json", json.dumps(report, indent=2))


def write_plots(report: dict, out_dir: Path) -> list[Path]:
    """bench_metrics.png (rate metrics per checkpoint) and bench_scores.png (RM score histograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["checkpoints"]
    written = []
    metrics = [m for m in RATE_METRICS if any(row.get(m) is not None for row in rows)]
    if metrics:
        fig, ax = plt.subplots(figsize=(min(16.0, 4.0 + 1.0 * len(rows)), 4))
        width = 0.8 / len(metrics)
        for j, metric in enumerate(metrics):
            xs = [i + (j - (len(metrics) - 1) / 2) * width for i in range(len(rows))]
            ax.bar(xs, [row.get(metric) or 0.0 for row in rows], width, label=metric.replace("_", " "))
        ax.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of held-out rows")
        ax.set_title("bench: held-out metrics per checkpoint")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        written.append(out_dir / "bench_metrics.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    scored = [row for row in rows if row.get("scores")]
    if scored:
        cols = min(4, len(scored))
        grid_rows = -(-len(scored) // cols)
        fig, axes = plt.subplots(grid_rows, cols, figsize=(4.2 * cols, 3.4 * grid_rows), squeeze=False)
        for ax in axes.flat[len(scored) :]:
            ax.set_visible(False)
        for ax, row in zip(axes.flat, scored):
            for name, values in row["scores"].items():
                ax.hist(values, bins=20, alpha=0.6, label=f"{name} (mean {sum(values) / len(values):.2f})")
            ax.set_title(f"{row['label']}: RM scores", fontsize=10)
            ax.set_xlabel("score")
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(out_dir / "bench_scores.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
