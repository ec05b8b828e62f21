"""`forge-trl sweep-report <multirun dir>` (also `python -m forge_trl.sweep_report`):
one table of a sweep's hyperparameters against its metrics.

Each job directory of a Hydra multirun (`python -m forge_trl -m task=dpo task.beta=0.05,0.1,0.3`) holds its
overrides (`.hydra/overrides.yaml`), its checkpoint's forge_run.json (training metrics), its bench.json (held-out
metrics) or forge_failed.json (the error of a failed job). The report lists every job, failed ones included, and
saves sweep_report.md, sweep_report.json and sweep_report.png (each metric against the swept value) in the
sweep directory.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from forge_trl.commands.args import KeyValueParser, positional
from forge_trl.errors import ConfigError

# Held-out metrics a sweep report shows, when the jobs have them (the bench's rates and scores).
METRICS = [
    "checker_accuracy",
    "format_compliance",
    "preference_accuracy",
    "rm_accuracy",
    "rm_score",
    "rm_score_gain",
    "win_rate",
]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def read_job(job: Path) -> dict:
    from forge_trl.commands.train import FAILED_MARKER
    from forge_trl.models.run_info import read_run_info

    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    row: dict = {"job": job.name, "params": dict(o.split("=", 1) for o in overrides if "=" in o)}
    if (job / FAILED_MARKER).is_file():
        row.update(status="failed", error=json.loads((job / FAILED_MARKER).read_text())["error"])
        return row
    info = read_run_info(job / "final")
    if info is None:
        row["status"] = "incomplete"  # killed, or still running
        return row
    row["status"] = "ok"
    metrics = info.metrics
    row["train_loss"] = metrics.get("last_loss", metrics.get("train_loss"))
    if "eval_loss" in metrics:
        row["eval_loss"] = metrics["eval_loss"]
    bench = job / "bench.json"
    if bench.is_file():
        checkpoint = json.loads(bench.read_text())["checkpoints"][0]
        row.update({m: checkpoint[m] for m in METRICS if checkpoint.get(m) is not None})
    return row


def swept_keys(rows: list[dict]) -> list[str]:
    """Override keys whose value differs between jobs (all of them when only one job ran)."""
    keys = sorted({k for row in rows for k in row["params"]})
    varying = [k for k in keys if len({row["params"].get(k) for row in rows}) > 1]
    return varying or keys


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(rows: list[dict], keys: list[str]) -> str:
    metrics = [m for m in ["train_loss", "eval_loss", *METRICS] if any(m in row for row in rows)]
    lines = ["| job | " + " | ".join([*keys, "status", *metrics]) + " |", "|" + "---|" * (len(keys) + len(metrics) + 2)]
    for row in rows:
        status = row["status"] if row["status"] != "failed" else f"failed: {row['error']}"
        cells = [row["job"], *(row["params"].get(k, "") for k in keys), status, *(_cell(row.get(m)) for m in metrics)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], keys: list[str], target: Path) -> Path | None:
    """Each metric against the swept value (one numeric key), or per job otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [row for row in rows if row["status"] == "ok"]
    metrics = [m for m in ["train_loss", *METRICS] if any(row.get(m) is not None for row in done)]
    if not done or not metrics:
        return None
    numeric = len(keys) == 1 and all(_number(row["params"].get(keys[0])) is not None for row in done)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        points = [(row, row.get(metric)) for row in done if row.get(metric) is not None]
        if numeric:
            points.sort(key=lambda p: _number(p[0]["params"][keys[0]]))
            ax.plot([_number(r["params"][keys[0]]) for r, _ in points], [v for _, v in points], marker="o")
            ax.set_xlabel(keys[0])
            if all(_number(r["params"][keys[0]]) > 0 for r, _ in points) and len(points) > 2:
                ax.set_xscale("log")
        else:
            ax.bar([r["job"] for r, _ in points], [v for _, v in points])
            ax.set_xlabel("job")
        ax.set_title(metric.replace("_", " "), fontsize=10)
    fig.suptitle(f"sweep over {', '.join(keys)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def report(sweep_dir: str | Path) -> dict:
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ConfigError(f"'{sweep_dir}' is not a directory; expected a Hydra multirun directory")
    jobs = _job_dirs(root)
    if not jobs:
        raise ConfigError(
            f"'{sweep_dir}' has no job directories with .hydra/overrides.yaml; expected the "
            "directory a `python -m forge_trl -m ...` sweep wrote (hydra.sweep.dir)"
        )
    rows = [read_job(job) for job in jobs]
    keys = swept_keys(rows)
    table = render(rows, keys)
    best = None
    optuna_file = root / "optimization_results.yaml"
    if optuna_file.is_file():
        best = yaml.safe_load(optuna_file.read_text(encoding="utf-8"))
    (root / "sweep_report.md").write_text(table + "\n", encoding="utf-8")
    png = plot(rows, keys, root / "sweep_report.png")
    result = {"sweep_dir": str(root), "swept": keys, "jobs": rows, "plot": str(png) if png else None, "optuna": best}
    (root / "sweep_report.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    failed = sum(row["status"] == "failed" for row in rows)
    print(f"sweep {root}: {len(rows)} jobs, {len(rows) - failed} finished, {failed} failed\n")
    print(table)
    if best:
        print(f"\nOptuna best: {best.get('best_params')} -> {best.get('best_value')}")
    if png:
        print(f"\nplot: {png}")
    return result


@dataclass
class SweepReportArgs:
    """One table of a sweep's hyperparameters against its metrics (train loss, bench), failed jobs included;
    writes sweep_report.md, sweep_report.json and sweep_report.png into the sweep directory."""

    # The directory a sweep (`forge-trl train -m ...`) wrote: hydra.sweep.dir.
    sweep_dir: str = field(metadata=positional("sweep dir"))


PARSER = KeyValueParser(SweepReportArgs, "sweep-report", example="forge-trl sweep-report outputs/beta_sweep")


def main(argv: list[str] | None = None) -> int:
    return PARSER.run(argv, lambda args: report(args.sweep_dir))  # its outputs are the report files


if __name__ == "__main__":
    sys.exit(main())
