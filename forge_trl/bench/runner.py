"""Evaluate checkpoints on held-out data: one metrics row per checkpoint, then bench.json, a table and plots.

What is measured depends on the checkpoint's head (read from its forge_run.json):
- a policy (causal LM, or a plain model directory / hub id): checker accuracy (rows with an `answer`), format
  compliance, response length, preference accuracy (mean per-token logp chosen > rejected), the RM score of
  its responses and that score's correlation with length (when a reward model is known), and win-rate against
  a baseline's responses (when a judge is configured);
- a reward model (`task=rm`): pair accuracy, chosen/rejected score distributions, and the correlation of score
  with response length (a reward-hacking check: a length-loving RM teaches PPO to ramble).

RL checkpoints (PPO, GRPO, RLOO) are also scored by the reward model they were trained against, next to the
policy they started from, so `rm_score_gain` says whether the RL stage did what it is for.
"""

from __future__ import annotations

import gc
import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from forge_trl.bench import metrics as M
from forge_trl.config.bench import BenchConfig
from forge_trl.data.prompts import heldout_text, set_chat_template_kwargs
from forge_trl.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class HeldOut:
    prompts: Sequence[dict | str]  # held-out rows ({prompt, [system]}, rendered as training rendered them) or bare text
    answers: list[Optional[str]]
    pairs: list[dict]
    check: Optional[Callable[[str, str], bool]]
    sources: dict = field(default_factory=dict)


def _read(path: str, required: tuple[str, ...], layout: str, limit: int | None) -> list[dict]:
    from forge_trl.data.formats import to_trl_columns
    from forge_trl.data.rows import read_rows

    rows = read_rows(path)
    for row in rows:
        for name in required:
            if not isinstance(row.data.get(name), str):
                raise DataError(f"bench rows need a string '{name}'", path=row.path, line=row.line, field=name)
        to_trl_columns(row, layout, chat=True)  # a bad `system` field fails here, naming file:line
    data = [row.data for row in rows]
    return data[:limit] if limit else data


def load_heldout(cfg: BenchConfig) -> HeldOut:
    """The held-out prompts and pairs: the configured files, or the demo suite's held-out split."""
    from forge_trl.data.demo_suite import check_answer, ensure_demo_suite

    demo = ensure_demo_suite() if cfg.prompts is None or cfg.pairs is None else {}
    prompts_path = cfg.prompts or str(demo["sft_heldout"])
    pairs_path = cfg.pairs or str(demo["preference_heldout"])
    prompt_rows = _read(prompts_path, ("prompt",), "prompt_only", cfg.max_rows)
    pairs = _read(pairs_path, ("prompt", "chosen", "rejected"), "prompted_preference", cfg.max_rows)
    answers = [row.get("answer") if isinstance(row.get("answer"), str) else None for row in prompt_rows]
    # The checker wants the bare answer (case, whitespace and trailing punctuation aside); rows without an
    # `answer` field are not checked.
    check = check_answer if any(a is not None for a in answers) else None
    return HeldOut(prompt_rows, answers, pairs, check, {"prompts_file": prompts_path, "pairs_file": pairs_path})


def checkpoint_label(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.name == "final" and p.parent.name else p.name or str(path)


@dataclass
class CheckpointInfo:
    path: str
    head: str
    task: Optional[str]
    parent: Optional[str]
    training_reward_model: Optional[str]


def describe_checkpoint(path: str) -> CheckpointInfo:
    """What kind of checkpoint `path` is, from its forge_run.json (no weights loaded)."""
    from forge_trl.injection.base import HEAD_CAUSAL_LM, HEAD_SEQ_CLS
    from forge_trl.models.loading import resolve_source

    info = resolve_source(path).run_info
    if info is None:  # a plain model directory or hub id: a policy
        return CheckpointInfo(path, HEAD_CAUSAL_LM, None, None, None)
    head = HEAD_SEQ_CLS if info.head == HEAD_SEQ_CLS else HEAD_CAUSAL_LM
    return CheckpointInfo(path, head, info.task, info.parent, info.reward_model)


class Bench:
    """Evaluates checkpoints one at a time (one model in memory, plus the reward model and judge)."""

    def __init__(self, cfg: BenchConfig, heldout: HeldOut | None = None):
        self.cfg = cfg
        self.heldout = heldout or load_heldout(cfg)
        self._reward_models: dict[str, tuple] = {}
        self._responses: dict[str, list[M.Generation]] = {}
        from forge_trl.bench.judges import make_judge

        # Made up front so that a misconfigured judge fails before any checkpoint is evaluated.
        self.judge = make_judge(cfg.judge)

    # ----- shared resources, loaded once per bench ------------------------------------------------------
    def bind_template_kwargs(self, tokenizer, run_info) -> None:
        """Render for this checkpoint with `bench.chat_template_kwargs`, or else the `data.chat_template_kwargs` it
        was trained with (recorded in its forge_run.json)."""
        kwargs = self.cfg.chat_template_kwargs
        if kwargs is None:
            kwargs = run_info.data.get("chat_template_kwargs") if run_info is not None else None
        set_chat_template_kwargs(tokenizer, kwargs)

    def reward_model(self, path: str):
        if path not in self._reward_models:
            from forge_trl.models.loading import resolve_source
            from forge_trl.rl.reward import load_reward_model

            rm, tokenizer = load_reward_model(path)
            self.bind_template_kwargs(tokenizer, resolve_source(path).run_info)
            self._reward_models[path] = (rm, tokenizer)
        return self._reward_models[path]

    def sampled_prompts(self) -> list[dict | str]:
        return [p for p in self.heldout.prompts for _ in range(self.cfg.samples_per_prompt)]

    def responses(self, path: str, model=None, tokenizer=None) -> list[M.Generation]:
        """The checkpoint's responses to the held-out prompts (cached: baselines and parents are reused)."""
        key = str(Path(path).resolve()) if Path(path).exists() else path
        if key not in self._responses:
            import torch

            from forge_trl.models.loading import load_for_inference

            if model is None:
                model, tokenizer, run_info = load_for_inference(path)
                self.bind_template_kwargs(tokenizer, run_info)
            torch.manual_seed(self.cfg.seed)
            self._responses[key] = M.generate_responses(
                model,
                tokenizer,
                self.sampled_prompts(),
                max_new_tokens=self.cfg.max_new_tokens,
                temperature=self.cfg.temperature,
                progress=True,
            )
        return self._responses[key]

    def rm_scores(self, rm_path: str, responses: list[M.Generation]) -> list[float]:
        rm, rm_tokenizer = self.reward_model(rm_path)
        return M.reward_scores(rm, rm_tokenizer, self.sampled_prompts(), [g.text for g in responses])

    # ----- one checkpoint --------------------------------------------------------------------------------
    def evaluate(self, path: str) -> dict:
        info = describe_checkpoint(path)
        row = {
            "label": checkpoint_label(path),
            "path": str(path),
            "kind": "reward model" if info.head != "causal_lm" else "policy",
            "task": info.task,
        }
        if info.head != "causal_lm":
            row.update(self._evaluate_reward_model(path))
        else:
            row.update(self._evaluate_policy(path, info))
        gc.collect()
        return row

    def _evaluate_reward_model(self, path: str) -> dict:
        pairs = self.heldout.pairs
        rm, tokenizer = self.reward_model(path)
        prompts = pairs  # whole rows: a `system` field is part of the prompt
        chosen = M.reward_scores(rm, tokenizer, prompts, [p["chosen"] for p in pairs])
        rejected = M.reward_scores(rm, tokenizer, prompts, [p["rejected"] for p in pairs])
        lengths = [
            len(tokenizer(p[k], add_special_tokens=False)["input_ids"]) for k in ("chosen", "rejected") for p in pairs
        ]
        self._reward_models.pop(path, None)  # an RM under evaluation is not kept around as a scorer
        return {
            "rm_accuracy": M.pair_accuracy(chosen, rejected),
            "rm_chosen_mean": sum(chosen) / max(len(chosen), 1),
            "rm_rejected_mean": sum(rejected) / max(len(rejected), 1),
            "rm_length_corr": M.spearman(chosen + rejected, lengths),
            "scores": {"chosen": chosen, "rejected": rejected},
        }

    def _evaluate_policy(self, path: str, info: CheckpointInfo) -> dict:
        from forge_trl.models.loading import load_for_inference

        model, tokenizer, run_info = load_for_inference(path)
        self.bind_template_kwargs(tokenizer, run_info)
        gens = self.responses(path, model, tokenizer)
        heldout = self.heldout
        # The checkers score the answer; a reasoning block before it is not part of it (bench.strip_reasoning).
        answered = [replace(g, text=M.strip_reasoning(g.text)) for g in gens] if self.cfg.strip_reasoning else gens
        result: dict = {
            "format_compliance": M.format_compliance(answered, self.cfg.format_regex),
            **M.length_stats([g.tokens for g in gens]),
        }
        if heldout.check is not None:
            answers = [a for a in heldout.answers for _ in range(self.cfg.samples_per_prompt)]
            checked = [(g.text, a) for g, a in zip(answered, answers) if a is not None]
            result["checker_accuracy"] = M.checker_accuracy(
                [r for r, _ in checked], [a for _, a in checked], heldout.check
            )
        if heldout.pairs:
            result["preference_accuracy"] = M.preference_accuracy(model, tokenizer, heldout.pairs)
        del model
        gc.collect()

        rm_path = self.cfg.reward_model or info.training_reward_model
        if rm_path:
            scores = self.rm_scores(rm_path, gens)
            result.update(
                rm_score=sum(scores) / len(scores),
                rm_length_corr=M.spearman(scores, [g.tokens for g in gens]),
                scores={"rm": scores},
            )
            if info.training_reward_model and info.parent:
                parent_scores = self.rm_scores(rm_path, self.responses(info.parent))
                result["rm_score_gain"] = result["rm_score"] - sum(parent_scores) / len(parent_scores)
        judge, baseline = self.judge, self.cfg.judge.baseline
        # (a judge exists only when a baseline is set; see make_judge)
        if judge is not None and baseline is not None and Path(baseline).resolve() != Path(path).resolve():
            outcomes = judge.compare(
                self.sampled_prompts(), [g.text for g in gens], [g.text for g in self.responses(baseline)]
            )
            result["win_rate"] = M.win_rate(outcomes)
        first = heldout_text(self.heldout.prompts[0]) if self.heldout.prompts else ""
        result["example"] = f"{first} -> {gens[0].text!r}" if gens else ""
        return result


def run_bench(
    checkpoints: list[str],
    cfg: BenchConfig,
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    heldout: HeldOut | None = None,
) -> dict:
    """Evaluate every checkpoint, write bench.json (and plots), print the table; returns the report."""
    from forge_trl.bench.report import print_table, write_plots, write_report

    random.seed(cfg.seed)
    bench = Bench(cfg, heldout)
    rows = []
    for i, path in enumerate(checkpoints):
        log.info("bench: %s (%d/%d)", path, i + 1, len(checkpoints))
        row = bench.evaluate(path)
        if labels:
            row["label"] = labels[i]
        rows.append(row)
    _unique_labels(rows)
    report = {
        "heldout": {"prompts": len(bench.heldout.prompts), "pairs": len(bench.heldout.pairs), **bench.heldout.sources},
        "decoding": "greedy" if cfg.temperature is None else f"sampled at T={cfg.temperature}",
        "reward_model": cfg.reward_model,
        "judge": getattr(bench.judge, "name", None),
        "baseline": cfg.judge.baseline,
        "checkpoints": rows,
    }
    out = Path(out_dir)
    write_report(report, out)
    if cfg.plots:
        report["plots"] = [str(p) for p in write_plots(report, out)]
    print_table(report)
    return report


def _unique_labels(rows: list[dict]) -> None:
    seen: dict[str, int] = {}
    for row in rows:
        n = seen.get(row["label"], 0)
        seen[row["label"]] = n + 1
        if n:
            row["label"] = f"{row['label']}#{n + 1}"


def in_multirun() -> bool:
    """True inside a Hydra multirun job (`python -m forge_trl -m ...`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def bench_after_training(cfg: BenchConfig) -> bool:
    """`bench.enabled`, or in a sweep when it is left null (each job's bench feeds the sweep report)."""
    return cfg.enabled if cfg.enabled is not None else in_multirun()


def objective_value(output_dir: str | Path, objective: str) -> float:
    """The sweep objective of a finished run: a bench metric from bench.json, or a loss from forge_run.json."""
    out = Path(output_dir)
    if objective in ("train_loss", "eval_loss"):
        from forge_trl.models.run_info import read_run_info

        info = read_run_info(out / "final")
        metrics = info.metrics if info else {}
        value = metrics.get(objective, metrics.get("last_loss") if objective == "train_loss" else None)
    else:
        import json

        report = out / "bench.json"
        rows = json.loads(report.read_text())["checkpoints"] if report.is_file() else []
        value = rows[0].get(objective) if rows else None
    return float("nan") if value is None else float(value)
