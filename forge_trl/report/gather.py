"""Read what runs, pipelines, sweeps and benches wrote under one directory into plain data (no HTML here).

Every reader is lenient: a file that is missing, unreadable or from another version leaves its part of the
report out with a note, never an exception. Only a directory with nothing a forge command writes is an error.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from forge_trl.config.bench import OBJECTIVES
from forge_trl.errors import ConfigError
from forge_trl.models.run_info import RESOLVED_CONFIG_FILE, RUN_INFO_FILE

# The files a report reads, and who writes them. The writers' constants live in modules above this layer (or
# import torch), so the names are repeated here.
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"  # forge_trl/trainers/callbacks.py: one JSON object per logging step
ROUTING_FILE = "routing.jsonl"  # forge_trl/trainers/mixins.py: per-layer expert shares of a routed injection
BENCH_FILE = "bench.json"  # forge_trl/bench/report.py: one metrics row per checkpoint
BENCH_RESULTS_FILE = "bench_results.jsonl"  # forge_trl/bench: one row per (target, prompt[, sample])
FAILED_FILE = "forge_failed.json"  # forge_trl/commands/train.py: the error of a failed run (a sweep job)
SWEEP_OVERRIDES = Path(".hydra") / "overrides.yaml"  # Hydra: a multirun job's overrides
OPTUNA_RESULTS = "optimization_results.yaml"  # hydra-optuna-sweeper: best params and value
DEMO_SUMMARY = "demo_summary.json"  # forge_trl/commands/demo.py: the held-out table of the demo stages
PIPELINE_SUMMARY = "pipeline_summary.json"  # forge_trl/commands/pipeline.py: bench.json plus timings
STAGE_FILE = "pipeline_stage.json"  # forge_trl/commands/pipeline.py: a stage's overrides and seconds
# How deep under the given directory runs and benches are looked for (a pipeline's stages are one level down,
# `forge-trl pipeline out=outputs/x/tiny` under outputs/x two), and what is never searched.
MAX_DEPTH = 3
SKIP_DIRS = {FINAL_DIR, ".hydra", "__pycache__", ".git", "logs", ".venv", "node_modules"}
SKIP_PREFIXES = ("checkpoint-", ".")
# Per-sample rows shown at most (the rest are counted in a note).
MAX_SAMPLES = 5000


@dataclass
class Run:
    """One training run's directory."""

    dir: Path
    name: str  # path relative to the report's directory ('.' is the directory itself)
    info: Optional[dict] = None  # final/forge_run.json
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl rows
    routing: list[dict] = field(default_factory=list)  # routing.jsonl rows
    failed: Optional[str] = None  # forge_failed.json's error
    params: dict[str, str] = field(default_factory=dict)  # a sweep job's overrides
    seconds: Optional[float] = None  # a pipeline stage's training time
    objective: Optional[str] = None  # bench.objective of a sweep job

    @property
    def anchor(self) -> str:
        return "run-" + "".join(c if c.isalnum() else "-" for c in self.name)

    @property
    def task(self) -> str:
        return str((self.info or {}).get("task") or "?")

    @property
    def step(self) -> Optional[int]:
        if self.info and isinstance(self.info.get("step"), int):
            return self.info["step"]
        steps = [r["step"] for r in self.metrics if isinstance(r.get("step"), int)]
        return max(steps) if steps else None

    @property
    def injection(self) -> str:
        """`dense_lora r=16`, `moe_expert_lora r=8 experts=8`, `full`: the injection and its main sizes."""
        settings = (self.info or {}).get("injection") or {}
        if not isinstance(settings, dict) or not settings.get("name"):
            return "?"
        sizes = [f"{k}={settings[k]}" for k in ("r", "num_experts", "top_k") if settings.get(k) is not None]
        return " ".join([str(settings["name"]), *sizes])

    @property
    def final_loss(self) -> Optional[float]:
        """The last logged training loss (forge_run.json's last_loss, else the last `loss` in metrics.jsonl)."""
        value = number(((self.info or {}).get("metrics") or {}).get("last_loss"))
        if value is not None:
            return value
        losses = [v for r in self.metrics if (v := number(r.get("loss"))) is not None]
        return losses[-1] if losses else None

    @property
    def summary_metrics(self) -> dict[str, float]:
        """forge_run.json's metrics (train_loss, last_loss, eval_loss, train_runtime, ...), finite numbers only."""
        metrics = (self.info or {}).get("metrics") or {}
        return {k: v for k, value in metrics.items() if (v := number(value)) is not None}

    @property
    def status(self) -> str:
        if self.failed is not None:
            return "failed"
        return "finished" if self.info is not None else "incomplete"

    def series(self) -> dict[str, tuple[list[float], list[float]]]:
        """metric name -> (steps, values) over metrics.jsonl's logging rows (finite numbers only). The closing row
        of a run (train_runtime, train_loss, ...) is a summary, not a point of a curve."""
        out: dict[str, tuple[list[float], list[float]]] = {}
        for row in self.metrics:
            step = number(row.get("step"))
            if step is None or "train_runtime" in row:
                continue
            for key, raw in row.items():
                value = number(raw)
                if key in ("step", "epoch") or value is None:
                    continue
                xs, ys = out.setdefault(key, ([], []))
                xs.append(step)
                ys.append(value)
        return out

    def final_dir(self) -> Path:
        return self.dir / FINAL_DIR


@dataclass
class Bench:
    """One bench.json (and the bench_results.jsonl next to it)."""

    dir: Path
    name: str
    report: dict
    samples: list[dict] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        rows = self.report.get("checkpoints")
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


@dataclass
class Sweep:
    """A Hydra multirun directory: its jobs are `Report.runs`."""

    objective: Optional[str]
    direction: str  # maximize | minimize
    keys: list[str]  # the swept override keys
    optuna: Optional[dict] = None


@dataclass
class Report:
    root: Path
    kind: str  # run | pipeline | sweep | bench
    runs: list[Run] = field(default_factory=list)
    benches: list[Bench] = field(default_factory=list)
    sweep: Optional[Sweep] = None
    demo: Optional[dict] = None  # demo_summary.json
    timings: dict[str, float] = field(default_factory=dict)  # pipeline_summary.json's train/total seconds
    notes: list[str] = field(default_factory=list)  # files that could not be read

    @property
    def samples(self) -> list[dict]:
        return [s for b in self.benches for s in b.samples]


# ----- reading files ------------------------------------------------------------------------------------------------
def number(value: Any) -> Optional[float]:
    """A finite number as a float; None for anything else (None, NaN, a string, a bool)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path}: unreadable ({type(exc).__name__})")
        return None


def read_jsonl(path: Path, notes: list[str], limit: Optional[int] = None) -> list[dict]:
    """The JSON-object lines of `path`; bad lines are skipped and counted in `notes`, lines past `limit` too."""
    rows: list[dict] = []
    bad = extra = 0
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                if limit is not None and len(rows) >= limit:
                    extra += 1
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad += 1
    except OSError as exc:
        notes.append(f"{path}: unreadable ({type(exc).__name__})")
    if bad:
        notes.append(f"{path}: {bad} line(s) that are not JSON objects skipped")
    if extra:
        notes.append(f"{path}: the first {limit} rows shown, {extra} more left out")
    return rows


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _is_run_dir(path: Path) -> bool:
    return any(
        (path / name).is_file() for name in (METRICS_FILE, ROUTING_FILE, FAILED_FILE, Path(FINAL_DIR) / RUN_INFO_FILE)
    )


def _relative(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return (root.name or root.resolve().name) if rel == "." else rel


def read_run(path: Path, root: Path, notes: list[str]) -> Run:
    run = Run(dir=path, name=_relative(path, root))
    info_file = path / FINAL_DIR / RUN_INFO_FILE
    if info_file.is_file():
        info = read_json(info_file, notes)
        run.info = info if isinstance(info, dict) else None
    if (path / METRICS_FILE).is_file():
        run.metrics = read_jsonl(path / METRICS_FILE, notes)
    if (path / ROUTING_FILE).is_file():
        run.routing = [r for r in read_jsonl(path / ROUTING_FILE, notes) if isinstance(r.get("expert_share"), dict)]
    if (path / FAILED_FILE).is_file():
        failed = read_json(path / FAILED_FILE, notes)
        run.failed = str(failed.get("error", "failed")) if isinstance(failed, dict) else "failed"
    overrides = _read_yaml(path / SWEEP_OVERRIDES) if (path / SWEEP_OVERRIDES).is_file() else None
    if isinstance(overrides, list):
        run.params = dict(str(o).split("=", 1) for o in overrides if "=" in str(o))
    stage = path / STAGE_FILE
    if stage.is_file():
        record = read_json(stage, notes)
        if isinstance(record, dict):
            run.seconds = number(record.get("seconds"))
    run.objective = _objective_of(path)
    return run


def _objective_of(path: Path) -> Optional[str]:
    """bench.objective from the job's resolved config (final/) or Hydra's copy of it (.hydra/config.yaml)."""
    for config in (path / FINAL_DIR / RESOLVED_CONFIG_FILE, path / ".hydra" / "config.yaml"):
        if config.is_file():
            cfg = _read_yaml(config)
            bench = cfg.get("bench") if isinstance(cfg, dict) else None
            if isinstance(bench, dict) and isinstance(bench.get("objective"), str):
                return bench["objective"]
    return None


def read_bench(path: Path, root: Path, notes: list[str]) -> Optional[Bench]:
    report = read_json(path / BENCH_FILE, notes) if (path / BENCH_FILE).is_file() else None
    if report is None and (path / PIPELINE_SUMMARY).is_file():
        report = read_json(path / PIPELINE_SUMMARY, notes)
    samples = (
        read_jsonl(path / BENCH_RESULTS_FILE, notes, limit=MAX_SAMPLES) if (path / BENCH_RESULTS_FILE).is_file() else []
    )
    if not isinstance(report, dict) and not samples:
        return None
    return Bench(
        dir=path, name=_relative(path, root), report=report if isinstance(report, dict) else {}, samples=samples
    )


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(run directories, directories with a bench) under `root`, in a stable order. A run directory's own
    subdirectories are not runs (its final/, checkpoints and Hydra files)."""
    runs: list[Path] = []
    benches: list[Path] = []
    frontier = [root]
    for depth in range(MAX_DEPTH + 1):
        following: list[Path] = []
        for directory in frontier:
            if any((directory / name).is_file() for name in (BENCH_FILE, BENCH_RESULTS_FILE, PIPELINE_SUMMARY)):
                benches.append(directory)
            if _is_run_dir(directory):
                runs.append(directory)
                continue
            if depth == MAX_DEPTH:
                continue
            try:
                children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
            except OSError:
                continue
            following += [p for p in children if p.name not in SKIP_DIRS and not p.name.startswith(SKIP_PREFIXES)]
        frontier = following
    return runs, benches


def _lineage_order(runs: list[Run]) -> list[Run]:
    """Parents before children (a depth-first walk from the roots), siblings by creation time then name."""
    by_final = {resolve_path(r.final_dir()): r for r in runs}
    children: dict[str, list[Run]] = {}
    roots: list[Run] = []
    for run in runs:
        parent = by_final.get(resolve_path((run.info or {}).get("parent")))
        if parent is None or parent is run:
            roots.append(run)
        else:
            children.setdefault(parent.name, []).append(run)

    def key(run: Run):
        return (str((run.info or {}).get("created") or "~"), _natural(run.name))

    ordered: list[Run] = []

    def visit(run: Run) -> None:
        if run in ordered:
            return
        ordered.append(run)
        for child in sorted(children.get(run.name, []), key=key):
            visit(child)

    for run in sorted(roots, key=key):
        visit(run)
    return ordered + [r for r in runs if r not in ordered]


def _natural(name: str) -> tuple:
    """Sweep jobs 0, 1, 2, ..., 10 in numeric order."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def resolve_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        return ""
    try:
        return str(Path(path).resolve())
    except OSError:
        return str(path)


def sweep_of(runs: list[Run], root: Path) -> Optional[Sweep]:
    jobs = [r for r in runs if (r.dir / SWEEP_OVERRIDES).is_file()]
    if not jobs or (len(jobs) < 2 and not (root / "multirun.yaml").is_file()):
        return None
    names = sorted({k for r in jobs for k in r.params})
    varying = [k for k in names if len({r.params.get(k) for r in jobs}) > 1]
    objective = next((r.objective for r in jobs if r.objective), None)
    optuna = _read_yaml(root / OPTUNA_RESULTS) if (root / OPTUNA_RESULTS).is_file() else None
    return Sweep(
        objective=objective,
        direction=OBJECTIVES.get(objective or "", "maximize"),
        keys=varying or names,
        optuna=optuna if isinstance(optuna, dict) else None,
    )


def objective_value(run: Run, benches: list[Bench], objective: Optional[str]) -> Optional[float]:
    """A sweep job's objective: a bench metric from its bench.json, or a loss from its forge_run.json."""
    if objective is None:
        return None
    if objective in ("train_loss", "eval_loss"):
        metrics = (run.info or {}).get("metrics") or {}
        return number(metrics.get(objective, metrics.get("last_loss") if objective == "train_loss" else None))
    for bench in benches:
        if bench.dir == run.dir and bench.rows:
            return number(bench.rows[0].get(objective))
    return None


def gather(directory: str | Path) -> Report:
    """Everything under `directory` that a report shows. A ConfigError when it holds none of it."""
    root = Path(directory)
    if root.name == FINAL_DIR and (root / RUN_INFO_FILE).is_file():
        root = root.parent  # a checkpoint: report its run
    if not root.is_dir():
        raise ConfigError(f"'{directory}' is not a directory; expected a run, pipeline or sweep directory")
    notes: list[str] = []
    run_dirs, bench_dirs = _walk(root)
    runs = _lineage_order([read_run(p, root, notes) for p in run_dirs])
    benches = [b for p in bench_dirs if (b := read_bench(p, root, notes)) is not None]
    demo = read_json(root / DEMO_SUMMARY, notes) if (root / DEMO_SUMMARY).is_file() else None
    if not runs and not benches and not isinstance(demo, dict):
        raise ConfigError(
            f"'{directory}' holds no run, pipeline, sweep or bench files ({METRICS_FILE}, "
            f"{FINAL_DIR}/{RUN_INFO_FILE}, {BENCH_FILE}, {BENCH_RESULTS_FILE}) within {MAX_DEPTH} levels"
        )
    sweep = sweep_of(runs, root)
    if sweep is not None:
        runs.sort(key=lambda r: _natural(r.name))
        kind = "sweep"
    elif run_dirs == [root]:
        kind = "run"
    elif runs:
        kind = "pipeline"
    else:
        kind = "bench"
    timings: dict[str, float] = {}
    summary = read_json(root / PIPELINE_SUMMARY, notes) if (root / PIPELINE_SUMMARY).is_file() else None
    if isinstance(summary, dict):
        timings = {k: v for k in ("train_seconds", "total_seconds") if (v := number(summary.get(k))) is not None}
    elif isinstance(demo, dict):
        timings = {k: v for k in ("train_seconds", "total_seconds") if (v := number(demo.get(k))) is not None}
    return Report(
        root=root,
        kind=kind,
        runs=runs,
        benches=benches,
        sweep=sweep,
        demo=demo if isinstance(demo, dict) else None,
        timings=timings,
        notes=notes,
    )
