"""Evaluate checkpoints on held-out data: one metrics row per checkpoint, then bench.json, a table and plots.

What is measured depends on the checkpoint's head (read from its forge_run.json):
- a policy (causal LM, or a plain model directory / hub id, or an API target from `bench.targets`, asked through
  forge_trl/bench/api.py): checker accuracy (rows with an `answer`), format compliance, response length,
  preference accuracy (mean per-token logp chosen > rejected; it needs the weights, so it is not applicable to an
  API target), the RM score of its responses and that score's correlation with length (when a reward model is
  known), a 1-10 judge score and win/tie/loss rates against a baseline's responses (when judges are configured;
  forge_trl/bench/judges.py);
- a reward model (`task=rm`): pair accuracy, chosen/rejected score distributions, and the correlation of score
  with response length (a reward-hacking check: a length-loving RM teaches PPO to ramble).

RL checkpoints (PPO, GRPO, RLOO) are also scored by the reward model they were trained against, next to the
policy they started from, so `rm_score_gain` says whether the RL stage did what it is for.

Every response, with its per-sample metrics and judgements, goes to bench_results.jsonl next to bench.json
(forge_trl/bench/results.py documents its schema).
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
    """Evaluates checkpoints one at a time (one model in memory, plus the reward model and judge), and API targets."""

    def __init__(self, cfg: BenchConfig, heldout: HeldOut | None = None, out_dir: str | Path | None = None):
        from forge_trl.bench.api import ChatEndpoint
        from forge_trl.bench.judges import make_judges

        self.cfg = cfg
        self.heldout = heldout or load_heldout(cfg)
        self._reward_models: dict[str, tuple] = {}
        self._responses: dict[str, list[M.Generation]] = {}
        self._unreported_lengths: set[str] = set()  # API targets whose server did not count tokens
        # The per-sample records of the last evaluate() (bench_results.jsonl; forge_trl/bench/results.py).
        self.last_records: list[dict] = []
        # Made up front so that a missing API key or a misconfigured judge fails before any checkpoint is evaluated.
        self.targets = {
            t.label: ChatEndpoint(t.base_url, t.model, t.api_key_env, cfg.api, where=f"bench target '{t.label}'")
            for t in cfg.targets
        }
        self.judges = make_judges(cfg.judge, cfg.api, out_dir)

    @property
    def judge(self):
        """The pairwise judge (win-rate against bench.judge.baseline), or None."""
        return self.judges.pairwise

    def close(self) -> None:
        self.judges.close()

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

    def _key(self, name: str) -> str:
        """One key per target: `api:<name>` for an API target, the resolved path for a directory, else the name."""
        if name in self.targets:
            return f"api:{name}"
        return str(Path(name).resolve()) if Path(name).exists() else name

    def label_of(self, name: str) -> str:
        return name if name in self.targets else checkpoint_label(name)

    def responses(self, path: str, model=None, tokenizer=None) -> list[M.Generation]:
        """The responses of a checkpoint (or API target name) to the held-out prompts (cached: baselines and parents
        are reused)."""
        key = self._key(path)
        if key not in self._responses and path in self.targets and model is None:
            self._responses[key] = self._api_responses(key, self.targets[path])
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

    def _api_responses(self, key: str, endpoint) -> list[M.Generation]:
        """The endpoint's replies to the held-out prompts, as chat messages (system turn included): greedy
        (temperature 0) unless bench.temperature is set, at most bench.max_new_tokens each. A request that failed
        after its retries is an empty, flagged response; all of them failing is an ApiError."""
        from forge_trl.bench.api import ApiError, chat_messages, run_concurrently

        temperature = self.cfg.temperature if self.cfg.temperature is not None else 0.0
        log.info("bench: asking %s (%d requests)", endpoint.name, len(self.sampled_prompts()))
        replies = run_concurrently(
            lambda row: endpoint.complete(
                chat_messages(row), max_tokens=self.cfg.max_new_tokens, temperature=temperature
            ),
            self.sampled_prompts(),
            self.cfg.api.max_concurrency,
        )
        failed = [r for r in replies if r.error is not None]
        if failed and len(failed) == len(replies):
            raise ApiError(
                f"{endpoint.where}: every request to {endpoint.base_url} failed; the first: {failed[0].error}"
            )
        if failed:
            log.warning(
                "%s: %d of %d requests failed (left out of its metrics); the first: %s",
                endpoint.where,
                len(failed),
                len(replies),
                failed[0].error,
            )
        if any(r.error is None and r.tokens is None for r in replies):
            self._unreported_lengths.add(key)
        return [
            M.Generation(r.text, r.tokens or 0, r.finish_reason not in ("length", "content_filter"), r.error)
            if r.error is None
            else M.Generation("", 0, False, r.error)
            for r in replies
        ]

    def rm_scores(self, rm_path: str, responses: list[M.Generation]) -> list[float]:
        rm, rm_tokenizer = self.reward_model(rm_path)
        return M.reward_scores(rm, rm_tokenizer, self.sampled_prompts(), [g.text for g in responses])

    # ----- one target ------------------------------------------------------------------------------------
    def evaluate(self, path: str) -> dict:
        """The metrics row of a checkpoint or API target (by its name); its per-sample records go to
        `last_records`."""
        self.last_records = []
        if path in self.targets:
            return self._evaluate_api(path)
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
        preference = M.preference_accuracy(model, tokenizer, self.heldout.pairs) if self.heldout.pairs else None
        del model
        gc.collect()
        rm_path = self.cfg.reward_model or info.training_reward_model
        parent = info.parent if info.training_reward_model else None
        result = self._score_responses(path, gens, rm_path=rm_path, parent=parent)
        if preference is not None:
            result["preference_accuracy"] = preference
        return result

    def _evaluate_api(self, name: str) -> dict:
        """An API target: the same prompts and metrics as a policy, except those that need the weights
        (preference accuracy: log-probs), which are reported as not applicable."""
        endpoint = self.targets[name]
        row: dict = {"label": name, "path": endpoint.base_url, "kind": "api", "task": None, "model": endpoint.model}
        gens = self.responses(name)
        row.update(self._score_responses(name, gens, rm_path=self.cfg.reward_model, parent=None))
        not_applicable = ["preference_accuracy"] if self.heldout.pairs else []
        if self._key(name) in self._unreported_lengths:
            not_applicable += ["length_mean", "length_median", "length_p90"]
        for key in not_applicable:
            row[key] = None
        row["not_applicable"] = not_applicable
        return row

    def _score_responses(self, path: str, gens: list[M.Generation], *, rm_path: str | None, parent: str | None) -> dict:
        """Everything measured on a policy's responses: checkers, format, length, RM score, judges; and their
        per-sample records. Responses whose API request failed are left out (and counted as `api/failed`)."""
        from forge_trl.bench.judges import Judgement, RewardModelJudge, pairwise_summary, pointwise_summary
        from forge_trl.bench.results import sample_records

        cfg, heldout = self.cfg, self.heldout
        n = cfg.samples_per_prompt
        prompts = self.sampled_prompts()
        answers = [a for a in heldout.answers for _ in range(n)]
        ok = [g.error is None for g in gens]
        kept = [g for g, k in zip(gens, ok) if k]

        def per_sample(values) -> list:
            return [v if k else None for v, k in zip(values, ok)]

        # The checkers score the answer; a reasoning block before it is not part of it (bench.strip_reasoning).
        answered = [replace(g, text=M.strip_reasoning(g.text)) for g in gens] if cfg.strip_reasoning else list(gens)
        formats = [float(f) for f in M.format_checks(answered, cfg.format_regex)]
        samples: dict[str, list] = {
            "format_compliance": per_sample(formats),
            "length": per_sample([g.tokens for g in gens]),
        }
        result: dict = {
            "format_compliance": sum(f for f, k in zip(formats, ok) if k) / max(len(kept), 1),
            **M.length_stats([g.tokens for g in kept]),
        }
        if len(kept) < len(gens):
            result["api/failed"] = len(gens) - len(kept)
        if self._key(path) in self._unreported_lengths:
            samples["length"] = [None] * len(gens)
        if heldout.check is not None:
            checks = [
                float(bool(heldout.check(g.text, a))) if a is not None and k else None
                for g, a, k in zip(answered, answers, ok)
            ]
            samples["checker_accuracy"] = checks
            checked = [c for c in checks if c is not None]
            result["checker_accuracy"] = sum(checked) / max(len(checked), 1)

        if rm_path:
            scores = self.rm_scores(rm_path, gens)
            kept_scores = [s for s, k in zip(scores, ok) if k]
            samples["rm_score"] = per_sample(scores)
            result.update(
                rm_score=sum(kept_scores) / max(len(kept_scores), 1),
                rm_length_corr=M.spearman(kept_scores, [g.tokens for g in kept]),
                scores={"rm": kept_scores},
            )
            if parent:
                parent_scores = self.rm_scores(rm_path, self.responses(parent))
                result["rm_score_gain"] = result["rm_score"] - sum(parent_scores) / len(parent_scores)

        def judged(kind, run, valid: list[bool], why: str) -> list[Judgement]:
            """`run(indices)` on the valid responses; a failed judgement for the others."""
            indices = [i for i, v in enumerate(valid) if v]
            done = iter(run(indices) if indices else [])
            return [next(done) if v else Judgement(kind, rationale=why, status="failed") for v in valid]

        judgements: dict[str, list[Judgement]] = {}
        pointwise, pairwise, baseline = self.judges.pointwise, self.judges.pairwise, cfg.judge.baseline
        texts = [g.text for g in answered]
        if pointwise is not None:
            kind = "pointwise"
            judgements[kind] = judged(
                kind,
                lambda idx: pointwise.score(
                    [prompts[i] for i in idx], [texts[i] for i in idx], [answers[i] for i in idx]
                ),
                ok,
                "no response to judge: the target's request failed",
            )
            result.update(pointwise_summary(judgements[kind]))
        # (a pairwise judge exists only when a baseline is set; see make_judges)
        if pairwise is not None and baseline is not None and self._key(baseline) != self._key(path):
            kind = "pairwise"
            base = self.responses(baseline)
            raw = isinstance(pairwise, RewardModelJudge)  # an RM scores whole responses, as it was trained
            ours = [g.text for g in gens] if raw else texts
            theirs = [g.text if raw or not cfg.strip_reasoning else M.strip_reasoning(g.text) for g in base]
            judgements[kind] = judged(
                kind,
                lambda idx: pairwise.compare(
                    [prompts[i] for i in idx],
                    [ours[i] for i in idx],
                    [theirs[i] for i in idx],
                    [answers[i] for i in idx],
                ),
                [k and b.error is None for k, b in zip(ok, base)],
                "no pair to judge: the target's or the baseline's request failed",
            )
            result.update(pairwise_summary(judgements[kind]))
        if judgements:
            every = [j for js in judgements.values() for j in js]
            result["judge/unparsed"] = sum(j.status == "unparsed" for j in every)
            result["judge/failed"] = sum(j.status == "failed" for j in every)

        first = heldout_text(heldout.prompts[0]) if heldout.prompts else ""
        result["example"] = f"{first} -> {gens[0].text!r}" if gens else ""
        self.last_records = sample_records(
            self.label_of(path),
            heldout.prompts,
            n,
            heldout.answers,
            gens,
            samples,
            judgements,
            baseline=self.label_of(baseline) if baseline is not None else None,
        )
        return result


def run_bench(
    checkpoints: list[str],
    cfg: BenchConfig,
    out_dir: str | Path,
    *,
    labels: list[str] | None = None,
    heldout: HeldOut | None = None,
) -> dict:
    """Evaluate every checkpoint, then every API target (bench.targets); write bench.json, bench_results.jsonl
    (and plots), print the table; returns the report."""
    from forge_trl.bench.report import print_table, write_plots, write_report
    from forge_trl.bench.results import write_results

    random.seed(cfg.seed)
    out = Path(out_dir)
    bench = Bench(cfg, heldout, out if cfg.judge.cache else None)
    rows, records = [], []
    try:
        names = [*checkpoints, *bench.targets]
        for i, path in enumerate(names):
            log.info("bench: %s (%d/%d)", path, i + 1, len(names))
            row = bench.evaluate(path)
            if labels and i < len(labels):
                row["label"] = labels[i]
            rows.append(row)
            records.append(bench.last_records)
    finally:
        bench.close()
    _unique_labels(rows)
    for row, row_records in zip(rows, records):
        for record in row_records:
            record["target"] = row["label"]
    pointwise, pairwise = bench.judges.pointwise, bench.judges.pairwise
    report = {
        "heldout": {"prompts": len(bench.heldout.prompts), "pairs": len(bench.heldout.pairs), **bench.heldout.sources},
        "decoding": "greedy" if cfg.temperature is None else f"sampled at T={cfg.temperature}",
        "reward_model": cfg.reward_model,
        "judge": getattr(pairwise, "name", None),
        "judges": {"pointwise": getattr(pointwise, "name", None), "pairwise": getattr(pairwise, "name", None)},
        "rubric": cfg.judge.criteria if cfg.judge.url else None,
        "baseline": cfg.judge.baseline,
        "checkpoints": rows,
    }
    report["results"] = str(write_results([r for rs in records for r in rs], out))
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
