"""forge_trl's performance in one command: each stage against plain TRL, memory ratios between stages, forge PPO
against TRL 0.29.1, packing, MoE-LoRA cost and (on a GPU) Liger and gradient checkpointing.

    FORGE_TRL_CACHE=/tmp/fcache python -m benchmarks.bench_perf --size tiny
    python -m benchmarks.bench_perf --size qwen3-0.6b --cases sft,dpo,memory --wait-idle --json perf.json
    python -m benchmarks.bench_perf --size qwen3-1.7b --cases sft,dpo,gpu     # on a CUDA machine (bf16)

Cases (`--cases`, comma-separated; default all):

- `sft`, `dpo`, `orpo`, `rm`: forge_trl (`python -m forge_trl task=...` in-process) against a plain TRL + PEFT
  script doing the same thing (benchmarks/plain_trl.py): same model directory, the same JSONL rows, batch,
  sequence length, LoRA (forge's default dense_lora: r=16, alpha 32, dropout 0.05 on the seven projections),
  precision, optimizer settings and the task's own settings (forge's schema defaults, given to TRL). Ratio: forge
  step time / plain step time (target <= 1.03). Because step times differ by up to ~10% from one process to the
  next on a VM, a third run profiles forge's training loop (cProfile) and measures forge's own work per step
  directly: its callback hooks in full plus the self time of its trainer mixins. The second ratio is
  (plain step + that work) / plain step.
- `memory`: peak memory of forge DPO (batch pairs; TRL's one-batch step, and `task.split_pairs=true`) and forge
  PPO (batch prompts, policy, reference, reward and value sharing one base) over forge SFT (batch examples) on the
  same model (targets: 1.15x for DPO with split_pairs, 1.5x for PPO), plus split_pairs' step-time cost. Only
  meaningful where weights dominate the process: use qwen3-0.6b or larger.
- `ppo`: forge PPO against TRL 0.29.1's PPOTrainer, through benchmarks/bench_ppo.py's own preparation and
  measurement (its `tiny` and `qwen3-0.6b` cases; targets: >= 1.5x episodes/s, <= 0.6x peak memory).
- `packing`: forge SFT on the variable-length demo rows, padded against packed (TRL's best-fit-decreasing packing;
  forge_trl/trainers/packing.py keeps the packed rows two-dimensional unless the attention has a variable-length
  kernel; attention never crosses a sequence boundary either way). Tokens/s counts real (non-pad) tokens. Target
  >= 1.5x.
- `moe`: `moe_expert_lora` (8 experts, top-2) against `dense_lora`, and against a naive per-expert loop, with
  benchmarks/bench_injections.py's step (forward + backward + AdamW on random tokens). Target <= 2x dense.
- `gpu` (CUDA only, skipped on CPU): forge SFT with Liger kernels on/off (`use_liger_kernel`, skipped when
  liger-kernel is not installed), gradient checkpointing on/off, and 4-bit QLoRA.

Sizes (`--size`): `tiny` (the embedded forge-tiny), `qwen3-0.6b` (random-init Qwen3-0.6B architecture: hidden
1024, 28 layers, 16/8 heads, FFN 3072, head_dim 128, Qwen3's real 151,936-token vocabulary so that logits cost
what they cost users; token ids come from the tiny tokenizer), `qwen3-1.7b` (GPU only: hidden 2048, FFN 6144).
fp32 on CPU, bf16 on CUDA.

Method (benchmarks/harness.py): every measured run is its own subprocess (`--child`), so each peak memory is that
run's alone: peak RSS (the child's `ru_maxrss`, its high-water mark including model loading) on CPU,
`torch.cuda.max_memory_allocated` on CUDA. Step time is the median interval between consecutive `on_step_end`
callbacks after `--warmup` steps (an interval covers data loading, forward, backward, optimizer, callbacks and
logging); tokens/s is the real tokens of the timed steps (attention-mask sums of each collated batch, counted by
a wrapper around the trainer's data collator, forge's through `forge_trl.train.run(trainer_hook=...)`; all tokens
of a padding-free batch) over their summed time. Ratios are taken pair by pair within the same invocation. With
`--wait-idle` each run first waits for the machine to be quiet and is repeated (`--retries`) when other processes
used more than 0.25 cores while it was timed (as bench_ppo's runs are); without it the table says how busy the
machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import bench_ppo, harness
from benchmarks.harness import MIB, log

MODULE = "benchmarks.bench_perf"
ALL_CASES = ("sft", "dpo", "orpo", "rm", "memory", "ppo", "packing", "moe", "gpu")
TRAINING_TASKS = ("sft", "dpo", "orpo", "rm")
LAYOUTS = {"sft": "sft", "dpo": "prompted_preference", "orpo": "prompted_preference", "rm": "prompted_preference"}
QWEN3_VOCAB = 151_936
ARCHS = {
    "qwen3-0.6b": dict(bench_ppo.QWEN3_0_6B),
    "qwen3-1.7b": dict(bench_ppo.QWEN3_0_6B, hidden_size=2048, intermediate_size=6144),
}
# Per size: batch (examples, pairs or prompts per step), sequence length, timed steps, warm-up steps, processes
# per side of a speed comparison.
SIZE_DEFAULTS = {
    "tiny": dict(batch=8, seq_len=128, steps=20, warmup=3, repeats=5),
    "qwen3-0.6b": dict(batch=2, seq_len=128, steps=3, warmup=1, repeats=1),
    "qwen3-1.7b": dict(batch=8, seq_len=512, steps=10, warmup=3, repeats=1),
}
OVERHEAD_TARGET = 1.03


def overhead_pairs(task: str) -> list[tuple]:
    """forge against plain TRL for one training task: the A/B step time, and the plain step plus forge's own
    profiled work per step."""
    name = task.upper()
    return [
        (f"forge / plain TRL step time, {name}", f"forge-{task}", f"plain-{task}", "step", OVERHEAD_TARGET, "max"),
        (
            f"(plain TRL step + forge's own work) / plain TRL step, {name}",
            f"forge-{task}-profiled",
            f"plain-{task}",
            "own",
            OVERHEAD_TARGET,
            "max",
        ),
    ]


# (label, numerator run, denominator run, metric, target, "max"|"min") per case; metric "step" compares median
# step time, "tps" tokens/s, "peak" peak memory, "own" the plain step plus forge's profiled own work.
PAIRS = {
    **{task: overhead_pairs(task) for task in TRAINING_TASKS},
    "memory": [
        ("peak memory DPO / SFT (forge, TRL's one-batch step)", "forge-dpo", "forge-sft", "peak", None, None),
        ("peak memory DPO split_pairs / SFT (forge)", "forge-dpo-split", "forge-sft", "peak", 1.15, "max"),
        ("step time DPO split_pairs / DPO (forge)", "forge-dpo-split", "forge-dpo", "step", None, None),
        ("peak memory ORPO split_pairs / ORPO (forge)", "forge-orpo-split", "forge-orpo", "peak", None, None),
        ("peak memory PPO / SFT (forge, shared base)", "forge-ppo", "forge-sft", "peak", 1.5, "max"),
    ],
    "ppo": [
        ("forge PPO / TRL 0.29.1 episodes/s", "ppo-forge", "ppo-trl", "tps", 1.5, "min"),
        ("forge PPO / TRL 0.29.1 peak memory", "ppo-forge", "ppo-trl", "peak", 0.6, "max"),
    ],
    "packing": [("packed / padded real tokens/s (SFT)", "forge-sft-packed", "forge-sft-padded", "tps", 1.5, "min")],
    "moe": [
        ("moe_expert_lora / dense_lora step time", "moe-expert", "moe-dense", "step", 2.0, "max"),
        ("naive expert loop / moe_expert_lora step time", "moe-naive", "moe-expert", "step", None, None),
    ],
    "gpu": [
        ("Liger on / off tokens/s (forge SFT)", "gpu-liger", "gpu-base", "tps", None, None),
        ("Liger on / off peak memory", "gpu-liger", "gpu-base", "peak", None, None),
        ("forge / plain TRL with Liger, tokens/s", "gpu-liger", "gpu-plain-liger", "tps", 0.9, "min"),
        ("grad checkpointing on / off tokens/s", "gpu-gc", "gpu-base", "tps", None, None),
        ("grad checkpointing on / off peak memory", "gpu-gc", "gpu-base", "peak", None, None),
        ("QLoRA 4-bit / bf16 LoRA peak memory", "gpu-qlora", "gpu-base", "peak", None, None),
    ],
}


# ------------------------------------------------------------------------------------------------ forge's defaults
def task_learning_rate(task: str) -> float:
    """forge's default learning rate of `task` (its schema), given to both sides."""
    from forge_trl.tasks import get_task

    return harness.schema_default(get_task(task).schema, "learning_rate")


def plain_task_args(task: str) -> dict:
    """The task's own settings as TRL config fields, from forge's schema defaults (which the forge run uses)."""
    if task == "sft":
        from forge_trl.tasks.sft import SFTTaskConfig

        sft = SFTTaskConfig()
        return dict(completion_only_loss=sft.completion_only_loss, packing=sft.packing)
    if task == "dpo":
        from forge_trl.tasks.dpo import DPOTaskConfig

        dpo = DPOTaskConfig()
        return dict(beta=dpo.beta, loss_type=[dpo.loss_type], label_smoothing=dpo.label_smoothing)
    if task == "orpo":
        from forge_trl.tasks.orpo import ORPOTaskConfig

        return dict(beta=ORPOTaskConfig().orpo_lambda)  # forge's orpo_lambda is TRL's ORPOConfig.beta
    return {}


# ------------------------------------------------------------------------------------------------ pure helpers
def ratio(results: dict, numerator: str, denominator: str, metric: str) -> float | None:
    if metric == "own":  # forge's profiled own work per step, added to the plain step
        own, plain = results.get(numerator, {}).get("forge_own_s"), results.get(denominator, {}).get("median_step_s")
        return None if own is None or not plain else (plain + own) / plain
    key = {"step": "median_step_s", "tps": "tokens_per_s", "peak": "peak_bytes"}[metric]
    a, b = results.get(numerator, {}).get(key), results.get(denominator, {}).get(key)
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdict(value: float | None, target: float | None, sense: str | None, noise: float = 0.0) -> str:
    if value is None:
        return "n/a"
    if target is None:
        return "(info)"
    ok = value <= target if sense == "max" else value >= target
    if ok:
        return "met"
    if noise and abs(value - 1.0) <= noise:
        return f"MISSED, within the ±{noise:.0%} process-to-process spread"
    return "MISSED"


def process_spread(result: dict) -> float:
    """Half the range of a run's per-process medians, relative to their median (0 with one process)."""
    medians = result.get("process_medians_s") or []
    if len(medians) < 2:
        return 0.0
    return (max(medians) - min(medians)) / 2 / statistics.median(medians)


def forge_own_seconds(stats, steps: int) -> float:
    """forge_trl's own work per training step from a cProfile of the training loop: the full time of forge's
    callback hooks (`on_*`, including the torch work they start) plus the self time of every other forge_trl
    function (its trainer mixins wrap TRL's compute_loss and log; what TRL does inside is not forge's)."""
    total = 0.0
    for (filename, _, name), (_, _, own, cumulative, _) in stats.stats.items():
        if f"{os.sep}forge_trl{os.sep}" not in filename:
            continue
        total += cumulative if name.startswith("on_") else own
    return total / max(steps, 1)


def fmt_bytes(n: float | None) -> str:
    return "—" if n is None else f"{n / MIB:,.0f} MiB"


def format_tables(results: dict, ratios: list[dict], memory_label: str) -> str:
    runs = []
    for key, r in results.items():
        if "error" in r:
            runs.append((key, r.get("implementation", "?"), f"failed: {r['error']}", "", "", "", ""))
            continue
        tps = r.get("tokens_per_s")
        unit = r.get("throughput_unit", "tokens/s")
        tps_text = "—" if tps is None else (f"{tps:,.0f}" if unit == "tokens/s" else f"{tps:.3f} {unit}")
        cores = f"{r['own_cores']:.2f} / {r['other_cores']:.2f}" if r.get("own_cores") is not None else "—"
        runs.append(
            (
                key,
                r.get("implementation", ""),
                f"{r['median_step_s'] * 1000:,.1f} ms",
                r.get("timed_steps", ""),
                tps_text,
                fmt_bytes(r.get("peak_bytes")),
                cores,
            )
        )
    comparisons = []
    for row in ratios:
        value = "—" if row["value"] is None else f"{row['value']:.2f}x"
        target = "—" if row["target"] is None else f"{'≤' if row['sense'] == 'max' else '≥'} {row['target']}x"
        comparisons.append((row["label"], value, target, row["result"]))
    return (
        harness.markdown_table(
            (
                "run",
                "implementation",
                "step time (median)",
                "timed steps",
                "tokens/s",
                memory_label,
                "CPU cores while timed: own / other",
            ),
            runs,
        )
        + "\n\n"
        + harness.markdown_table(("comparison", "ratio", "target", "result"), comparisons)
    )


def compute_ratios(cases: list[str], results: dict, size: str = "") -> list[dict]:
    """One row per comparison of PAIRS whose two runs both exist. Memory targets are not judged on the tiny
    model, where torch's own memory dominates the peak."""
    rows = []
    for case in cases:
        for label, num, den, metric, target, sense in PAIRS.get(case, []):
            if num not in results or den not in results:
                continue
            value = ratio(results, num, den, metric)
            noise = max(process_spread(results[num]), process_spread(results[den])) if metric == "step" else 0.0
            result = verdict(value, target, sense, noise)
            if size == "tiny" and metric == "peak" and target is not None and value is not None:
                result = "(not judged on tiny)"
            rows.append(
                dict(
                    case=case,
                    label=label,
                    numerator=num,
                    denominator=den,
                    metric=metric,
                    value=value,
                    target=target,
                    sense=sense,
                    result=result,
                )
            )
    return rows


# ------------------------------------------------------------------------------------------------ children
def child(kind: str, spec: dict) -> dict:
    """One measured run: forge or plain TRL training (timed per step), or one bench_injections case."""
    if kind == "moe":
        return child_moe(spec)
    import cProfile

    import torch

    cuda = torch.cuda.is_available()
    profiler = cProfile.Profile() if spec.get("profile") else None
    timer = harness.step_timer(cuda, profiler)
    count_tokens = spec.get("count_tokens", True)
    hook = (lambda trainer: harness.count_batch_tokens(trainer, timer)) if count_tokens else None
    if kind == "forge":
        harness.forge_train(spec["overrides"], callbacks=(timer,), trainer_hook=hook)
        info = dict(implementation="forge_trl")
    else:
        from benchmarks import plain_trl

        info = plain_trl.train(spec, [timer], trainer_hook=hook)
    info.update(timer.summary(spec["warmup"], count_tokens))
    if profiler is not None:
        import pstats

        info["forge_own_s"] = forge_own_seconds(pstats.Stats(profiler), len(timer.samples))
        info["implementation"] += (
            f" under cProfile: forge's own work {info['forge_own_s'] * 1000:.2f} ms/step "
            "(its step time is not compared)"
        )
    if spec.get("episodes_per_step"):  # PPO: report episodes/s instead of tokens/s
        info.update(tokens_per_s=spec["episodes_per_step"] / info["median_step_s"], throughput_unit="episodes/s")
    if cuda:
        info["peak_bytes"] = torch.cuda.max_memory_allocated()
    return info


def child_moe(spec: dict) -> dict:
    """One bench_injections case in this process: median step time of forward + backward + AdamW."""
    from benchmarks import bench_injections
    from forge_trl.models.loading import resolve_source

    source = resolve_source(spec["model"])
    batch = bench_injections.random_batch(source, spec["batch"], spec["seq_len"])
    start = harness.load_sample()
    seconds, trainable = bench_injections.time_case(
        source, bench_injections.CASES[spec["label"]], batch, spec["steps"], spec["warmup"]
    )
    return dict(
        implementation=f"forge {spec['label']}",
        median_step_s=seconds,
        timed_steps=spec["steps"],
        tokens_per_s=spec["batch"] * spec["seq_len"] / seconds,
        trainable=trainable,
        **harness.cores_between(start, harness.load_sample()),
    )


# ------------------------------------------------------------------------------------------------ preparation
@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    cuda: bool
    results: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def precision(self) -> str:
        return "bf16" if self.cuda else "fp32"

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.cuda else "float32"

    # --- models and data ---------------------------------------------------------------------------------
    def model_dir(self) -> Path:
        """The base model directory of --size (built once per work dir)."""
        if self.args.size == "tiny":
            from forge_trl.models.tiny import ensure_tiny

            return ensure_tiny("forge-tiny")
        return harness.build_random_qwen3(
            self.workdir / f"{self.args.size}-base", ARCHS[self.args.size], vocab_size=QWEN3_VOCAB, bf16=self.cuda
        )

    def data_file(self, layout: str) -> Path:
        """Rows of a fixed size, so that both sides of a pair see the same real tokens per step. SFT rows are
        longer than --seq-len and cut to exactly it (prompt about 3/8 of it). Preference rows fit in it whole
        (RewardTrainer drops longer rows instead of cutting them): prompt 3/8, chosen and rejected the rest."""
        import random

        from forge_trl.data.demo_suite import ensure_demo_suite
        from forge_trl.data.rows import read_rows
        from forge_trl.models.loading import load_tokenizer, resolve_source

        seq = self.args.seq_len
        path = self.workdir / f"rows-v2-{layout}-{seq}.jsonl"
        if path.is_file():
            return path
        tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
        demo = [r.data for r in read_rows(str(ensure_demo_suite()["sft"]))]
        sentences = sorted({d["prompt"] for d in demo})
        rng = random.Random(0)

        def text(tokens: int) -> str:  # demo sentences, cut to about `tokens` tokens
            parts: list[str] = []
            while len(ids := tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]) < tokens:
                parts.extend(rng.sample(sentences, 4))
            return tokenizer.decode(ids[:tokens])

        rows = []
        for _ in range(max(64, self.args.batch * (self.args.steps + self.args.warmup + 2))):
            if layout == "prompt_only":
                rows.append({"prompt": text(seq - bench_ppo.RESPONSE_TOKENS - 8)})
            elif layout == "sft":
                rows.append({"prompt": text(seq * 3 // 8), "response": text(seq)})
            else:
                answer = seq - seq * 3 // 8 - 16  # room for the chat template's role and end tokens
                rows.append({"prompt": text(seq * 3 // 8), "chosen": text(answer), "rejected": text(answer)})
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    # --- runs --------------------------------------------------------------------------------------------
    def training_spec(
        self, task: str, name: str, data_file: Path, layout: str, extra_forge: tuple = (), **train_changes
    ) -> dict:
        """One training run for either side. `train` holds the settings both sides get (forge as overrides,
        plain TRL as config fields), `extra_forge` forge-only overrides."""
        from forge_trl.config import ForgeConfig

        a = self.args
        train = dict(
            max_steps=a.steps + a.warmup + 1,
            learning_rate=task_learning_rate(task),
            batch=a.batch,
            max_length=a.seq_len,
            logging_steps=a.logging_steps,
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            gradient_checkpointing=False,
            seed=harness.schema_default(ForgeConfig, "seed"),
            **train_changes,
        )
        model = self.model_dir()
        out = self.workdir / "runs" / name
        overrides = [
            f"task={task}",
            f"model.name_or_path={model}",
            f"precision={self.precision}",
            f"model.dtype={self.dtype}",
            "data=jsonl",
            f"data.path={data_file}",
            f"data.layout={layout}",
            f"data.max_length={train['max_length']}",
            f"task.per_device_train_batch_size={train['batch']}",
            "injection=dense_lora",
            f"seed={train['seed']}",
            *(
                f"task.{key}={str(train[key]).lower()}"
                for key in (
                    "max_steps",
                    "learning_rate",
                    "logging_steps",
                    "lr_scheduler_type",
                    "warmup_steps",
                    "weight_decay",
                    "max_grad_norm",
                    "gradient_checkpointing",
                )
            ),
            f"output_dir={out}",
            "overwrite=true",
            "plot=false",
            *extra_forge,
        ]
        return dict(
            task=task,
            warmup=a.warmup,
            overrides=overrides,
            model_dir=str(model),
            data_file=str(data_file),
            layout=layout,
            lora=harness.dense_lora_shape(),
            train=train,
            task_args=plain_task_args(task),
            precision=self.precision,
            output_dir=str(out),
        )

    def measure(self, key: str, kind: str, spec: dict) -> dict:
        """Run one child (once per key and invocation); with --wait-idle, on an idle machine."""
        if key not in self.results:
            a = self.args
            try:
                self.results[key] = harness.run_child(
                    MODULE, kind, spec, key, self.workdir, wait_idle=a.wait_idle, max_wait=a.max_wait, retries=a.retries
                )
            except harness.RunFailed as exc:  # keep the other cases going
                log(str(exc))
                self.results[key] = dict(error=f"see {self.workdir / 'logs' / (key + '.log')}")
        return self.results[key]

    def measure_pair(self, runs: list[tuple[str, str, dict]]) -> None:
        """Measure the runs of one comparison --repeats times, interleaved (A B A B ...): step times differ by up
        to ~10% from one process to the next on a VM even when idle, so each side keeps the median over its
        processes (step time and tokens/s; the highest peak)."""
        if self.args.repeats <= 1:
            for key, kind, spec in runs:
                self.measure(key, kind, spec)
            return
        for attempt in range(self.args.repeats):
            for key, kind, spec in runs:
                self.measure(f"{key}.{attempt + 1}", kind, spec)
        for key, _, _ in runs:
            parts = [self.results.pop(f"{key}.{i + 1}") for i in range(self.args.repeats)]
            good = [r for r in parts if "error" not in r]
            if not good:
                self.results[key] = parts[0]
                continue
            merged = dict(good[0])
            for field_name in ("median_step_s", "tokens_per_s", "own_cores", "other_cores"):
                values = [r[field_name] for r in good if r.get(field_name) is not None]
                if values:
                    merged[field_name] = statistics.median(values)
            merged["peak_bytes"] = max(r["peak_bytes"] for r in good)
            merged["process_medians_s"] = [r["median_step_s"] for r in good]
            merged["implementation"] = f"{merged.get('implementation', '')} (median of {len(good)} processes)"
            self.results[key] = merged

    def train_pair(self, task: str) -> None:
        data = self.data_file(LAYOUTS[task])
        spec = self.training_spec(task, task, data, LAYOUTS[task])
        plain = dict(spec, output_dir=str(self.workdir / "runs" / f"plain-{task}"))
        self.measure_pair([(f"forge-{task}", "forge", spec), (f"plain-{task}", "plain", plain)])
        # Step times vary by up to ~10% between processes on a VM, which hides a 3% overhead; a profile of the
        # forge run measures forge's own per-step work directly.
        profiled = dict(spec, profile=True, output_dir=str(self.workdir / "runs" / f"profiled-{task}"))
        self.measure(f"forge-{task}-profiled", "forge", profiled)

    # --- cases -------------------------------------------------------------------------------------------
    def case_memory(self) -> None:
        if self.args.size == "tiny":
            self.notes.append(
                "memory: on the tiny model torch's own ~0.5 GB dominates peak RSS; the DPO/SFT and "
                "PPO/SFT ratios mean something from qwen3-0.6b on."
            )
        for task in ("sft", "dpo", "orpo"):
            data = self.data_file(LAYOUTS[task])
            self.measure(f"forge-{task}", "forge", self.training_spec(task, task, data, LAYOUTS[task]))
        for task in ("dpo", "orpo"):
            data = self.data_file(LAYOUTS[task])
            self.measure(
                f"forge-{task}-split",
                "forge",
                self.training_spec(task, f"{task}-split", data, LAYOUTS[task], ("task.split_pairs=true",)),
            )
        # PPO needs an SFT adapter and a reward model on the same base: one forge step each (only shapes matter).
        logs = self.workdir / "logs"
        keys = [
            f"model.dtype={self.dtype}",
            f"precision={self.precision}",
            f"data.max_length={self.args.seq_len}",
            "task.max_steps=1",
            f"task.per_device_train_batch_size={self.args.batch}",
        ]
        sft = harness.forge_stage(
            ["task=sft", f"model.name_or_path={self.model_dir()}", *keys], self.workdir / "ppo" / "sft", logs
        )
        rm = harness.forge_stage(["task=rm", f"model.name_or_path={sft}", *keys], self.workdir / "ppo" / "rm", logs)
        prompts = self.data_file("prompt_only")
        steps = max(2, min(self.args.steps, 3)) + 1  # PPO steps are long; the peak is reached in the first
        overrides = [
            "task=ppo",
            f"model.name_or_path={sft}",
            f"task.reward_model.checkpoint_path={rm}",
            *keys[:2],
            "data=jsonl",
            f"data.path={prompts}",
            "data.layout=prompt_only",
            f"data.max_length={self.args.seq_len}",
            f"task.per_device_train_batch_size={self.args.batch}",
            f"task.response_length={bench_ppo.RESPONSE_TOKENS}",
            f"task.max_steps={steps}",
            "task.logging_steps=1",
            "task.gradient_checkpointing=false",
            f"output_dir={self.workdir / 'runs' / 'ppo'}",
            "overwrite=true",
            "plot=false",
        ]
        self.measure(
            "forge-ppo",
            "forge",
            dict(overrides=overrides, warmup=0, count_tokens=False, episodes_per_step=self.args.batch),
        )

    def case_ppo(self) -> None:
        name = self.args.size if self.args.size in bench_ppo.CASES else None
        if name is None:
            self.notes.append(f"ppo: bench_ppo has no {self.args.size} case; skipped.")
            return
        a = self.args
        workdir = harness.ROOT / "outputs" / "bench_ppo"
        steps = max(2, a.steps + 1) if name == "tiny" else bench_ppo.DEFAULT_BIG_STEPS
        try:
            trl_python = bench_ppo.ensure_trl_venv(workdir)
            prepared = bench_ppo.prepare_case(name, workdir, steps)
        except harness.RunFailed as exc:
            log(str(exc))
            self.notes.append("ppo: preparing bench_ppo's case failed (see outputs/bench_ppo/logs)")
            return
        for impl, python in (("forge", sys.executable), ("trl", str(trl_python))):
            try:
                m = bench_ppo.measure(
                    impl, python, prepared[impl], workdir, wait_idle=a.wait_idle, max_wait=a.max_wait, retries=a.retries
                )
            except harness.RunFailed as exc:
                log(str(exc))
                self.results[f"ppo-{impl}"] = dict(error="see outputs/bench_ppo/logs")
                continue
            self.results[f"ppo-{impl}"] = dict(
                m,
                implementation=f"{m['implementation']} PPO (bench_ppo {name})",
                tokens_per_s=m["episodes_per_s"],
                throughput_unit="episodes/s",
                peak_bytes=m["peak_rss"],
            )
        self.notes.append(
            "ppo: bench_ppo's own cases (tiny: batch 8; qwen3-0.6b: its tiny-vocabulary build, "
            "batch 2, 3 PPO steps); it measures peak RSS, also on CUDA machines."
        )

    def case_packing(self) -> None:
        from forge_trl.data.demo_suite import ensure_demo_suite

        demo = Path(ensure_demo_suite()["sft"])
        self.measure_pair(
            [
                (f"forge-sft-{name}", "forge", self.training_spec("sft", f"sft-{name}", demo, "sft", extra_forge=extra))
                for name, extra in (("padded", ()), ("packed", ("task.packing=true",)))
            ]
        )
        self.notes.append(
            "packing: the demo sft rows (variable length, ~10-40 tokens), padded per batch vs packed "
            f"into rows of {self.args.seq_len} tokens (TRL's bfd packing). Without flash attention "
            "forge keeps the packed rows two-dimensional, each row's position_ids restarting at every "
            "sequence (block-diagonal mask per row); with flash attention, TRL's flattened batch and "
            "cu_seq_lens."
        )

    def case_moe(self) -> None:
        if self.args.size == "qwen3-1.7b":  # bench_injections steps on the CPU: too slow at this size
            self.notes.append("moe: skipped at qwen3-1.7b (bench_injections runs on the CPU).")
            return
        model = "forge-tiny" if self.args.size == "tiny" else str(self.model_dir())
        labels = {
            "moe-dense": "dense_lora",
            "moe-expert": "moe_expert_lora (8 experts, top-2)",
            "moe-naive": "moe_expert_lora, naive expert loop",
        }
        self.measure_pair(
            [
                (
                    key,
                    "moe",
                    dict(
                        model=model,
                        label=label,
                        batch=self.args.batch,
                        seq_len=self.args.seq_len,
                        steps=self.args.steps,
                        warmup=self.args.warmup,
                    ),
                )
                for key, label in labels.items()
            ]
        )
        if self.cuda:
            self.notes.append("moe: bench_injections steps on the CPU, also on CUDA machines.")

    def case_gpu(self) -> None:
        if not self.cuda:
            self.notes.append("gpu: skipped (no CUDA device): Liger on/off, gradient checkpointing on/off, QLoRA.")
            return
        import importlib.util

        data = self.data_file("sft")
        variants = {
            "gpu-base": ((), {}),
            "gpu-gc": ((), dict(gradient_checkpointing=True)),
            "gpu-qlora": (("model.quantization=4bit",), {}),
        }
        if importlib.util.find_spec("liger_kernel") is not None:
            variants["gpu-liger"] = (("+task.trl_args.use_liger_kernel=true",), {})
        else:
            self.notes.append("gpu: liger-kernel is not installed; Liger on/off skipped.")
        for key, (extra, train_changes) in variants.items():
            self.measure(key, "forge", self.training_spec("sft", key, data, "sft", extra, **train_changes))
        if "gpu-liger" in variants:
            spec = self.training_spec("sft", "gpu-plain-liger", data, "sft")
            spec["task_args"] = dict(spec["task_args"], use_liger_kernel=True)
            self.measure("gpu-plain-liger", "plain", spec)

    def run(self, cases: list[str]) -> None:
        for case in cases:
            log(f"case {case}")
            if case in TRAINING_TASKS:
                self.train_pair(case)
            else:
                getattr(self, f"case_{case}")()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=list(SIZE_DEFAULTS))
    parser.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated subset of {','.join(ALL_CASES)}")
    parser.add_argument("--steps", type=int, help="timed steps per run (default per size)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (default per size)")
    parser.add_argument("--batch", type=int, help="examples / pairs / prompts per step (default per size)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default per size)")
    parser.add_argument("--logging-steps", type=int, default=10, help="trainer logging interval (forge's default)")
    parser.add_argument(
        "--repeats",
        type=int,
        help="processes per side of a speed comparison, interleaved; each "
        "side reports the median (default: 5 for tiny, 1 otherwise)",
    )
    parser.add_argument("--workdir", default="outputs/bench_perf")
    parser.add_argument("--json", help="write all runs and ratios to this file")
    harness.add_idle_arguments(parser, optional=True)
    args = harness.parse_args_or_run_child(parser, ("forge", "plain", "moe"), child)
    if args is None:
        return
    for key, value in SIZE_DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(ALL_CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(ALL_CASES)}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch

    cuda = torch.cuda.is_available()
    if args.size == "qwen3-1.7b" and not cuda:
        parser.error("--size qwen3-1.7b needs a CUDA device")
    started = time.perf_counter()
    workdir = Path(args.workdir).resolve() / args.size
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, workdir, cuda)
    bench.run(cases)
    ratios = compute_ratios(cases, bench.results, args.size)

    lora = harness.dense_lora_shape()
    memory_label = "peak GPU memory (max_memory_allocated)" if cuda else "peak RSS"
    print(harness.machine_line())
    print(
        f"size {args.size}; batch {args.batch} x {args.seq_len} tokens; {bench.precision}; LoRA r={lora['r']} "
        f"alpha={lora['alpha']} dropout={lora['dropout']} on {','.join(lora['targets'])}; no gradient "
        f"checkpointing unless named; median of {args.steps} steps after {args.warmup} warm-up steps; "
        f"logging every {args.logging_steps} steps; date {time.strftime('%Y-%m-%d')}"
    )
    print()
    print(format_tables(bench.results, ratios, memory_label))
    for note in bench.notes:
        print(f"- {note}")
    if not args.wait_idle:
        print("- measured without --wait-idle: the 'other' cores column says how busy the machine was.")
    print(f"\ntotal runtime: {time.perf_counter() - started:.0f}s (logs in {workdir / 'logs'})")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(size=args.size, args=vars(args), results=bench.results, ratios=ratios, notes=bench.notes),
                indent=1,
                default=str,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
