"""`forge-trl pipeline paths=a,b,c,d,e [model=tiny] [injection=dense_lora] [data=demo] [out=...]` (also
`python -m forge_trl.pipeline`)

Runs pipeline paths stage by stage, each stage an ordinary forge run whose `final/` is the next stage's
`model.name_or_path`, then benches every stage on held-out data and prints one combined table.

| path | stages |
|---|---|
| a | SFT -> DPO |
| b | SFT -> ORPO |
| c | SFT -> RM -> PPO |
| d | SFT -> DPO -> RM -> PPO |
| e | SFT -> ORPO -> RM -> PPO |

A stage's directory is named by its lineage (`sft`, `sft-dpo`, `sft-dpo-rm`, `sft-dpo-rm-ppo`), so paths that
share a prefix share its runs, and a stage whose `final/` exists with the same settings is reused rather than
retrained (rerun a path after a failure and only the missing stages train). In a path with an RM, the RM starts
from the policy before it, and PPO trains that policy against that RM.

`data=demo` uses the built-in demo suite; `data=<dir>` uses `<dir>/sft.jsonl`, `<dir>/preference.jsonl` and
`<dir>/prompt_only.jsonl` (with `*_heldout.jsonl` next to them for the bench, when present). On the built-in
random-init models (`model=tiny`, `tiny_moe`) a pretraining stage runs first and the demo recipe's learning
rates apply; other models use the task defaults. Any other `key=value` is passed to every training stage (e.g.
`task.max_steps=5`), except `bench.*` keys, which go to the bench (it samples 4 responses per prompt at T=1
unless told otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal

from forge_trl.commands.args import KeyValueParser, passthrough, run_config_roots
from forge_trl.errors import ConfigError

log = logging.getLogger("forge_trl.pipeline")

PATHS = {
    "a": ("sft", "dpo"),
    "b": ("sft", "orpo"),
    "c": ("sft", "rm", "ppo"),
    "d": ("sft", "dpo", "rm", "ppo"),
    "e": ("sft", "orpo", "rm", "ppo"),
}
# Built-in models start from random weights: they are pretrained first, and need the demo recipe's larger rates.
RANDOM_INIT_MODELS = ("tiny", "tiny_moe")
DEMO_RECIPE = "demo"
# Which data layout each stage trains on: the demo group, or the file name in a data directory.
STAGE_DATA = {
    "pretrain": ("demo_text", "text"),
    "sft": ("demo_sft", "sft"),
    "dpo": ("demo_preference", "preference"),
    "orpo": ("demo_preference", "preference"),
    "rm": ("demo_preference", "preference"),
    "ppo": ("demo_prompt_only", "prompt_only"),
}
# The pipeline benches sampled responses (4 per prompt at T=1): that is the policy PPO optimises, and greedy
# decoding hides what RL changes when the greedy answer is already the best one. `bench.*` arguments override.
PIPELINE_BENCH = ["bench.temperature=1.0", "bench.samples_per_prompt=4"]
# The demo suite's format is the bare answer: words or a number, at most a final full stop ("north", "7."),
# so an answer followed by rambling ("north, I would say, ...") does not comply.
DEMO_FORMAT = r"bench.format_regex=[\w -]+\.?"
STAGE_FILE = "pipeline_stage.json"


@dataclass
class PipelineArgs:
    """Train pipeline paths stage by stage, each stage's final/ the next one's model (stages that paths share train
    once; a stage whose final/ exists from the same settings is reused), then bench every stage in one table."""

    # Comma-separated: a (SFT -> DPO), b (SFT -> ORPO), c (SFT -> RM -> PPO), d (SFT -> DPO -> RM -> PPO),
    # e (SFT -> ORPO -> RM -> PPO).
    paths: List[str]
    # The model preset (conf/model) of every stage.
    model: str = "tiny"
    # The injection every stage trains.
    injection: str = "dense_lora"
    # `demo` (the demo suite), or a directory with sft.jsonl, preference.jsonl, prompt_only.jsonl (*_heldout.jsonl
    # next to them for the bench).
    data: str = "demo"
    # The stages' runs, the bench and forge.log go here.
    out: str = "outputs/pipelines"
    # Pretrain first. auto: only the random-init built-in models (tiny, tiny_moe).
    pretrain: Literal["auto", "true", "false"] = "auto"
    # Per-stage training overrides: a recipe under conf/recipe/ or a .yaml path; none: the task defaults. auto: the
    # demo recipe for the random-init built-in models, none for other models.
    recipe: str = "auto"
    # Any training key for every stage (e.g. task.max_steps=5); bench.* keys go to the bench.
    overrides: List[str] = field(default_factory=list, metadata=passthrough("<run key>=<value>", run_config_roots))
    stage_overrides: list[str] = field(init=False)
    bench_overrides: list[str] = field(init=False)
    # Stage task -> the recipe's overrides for it.
    stage_recipe: dict[str, list[str]] = field(init=False)

    def __post_init__(self):
        from forge_trl.commands.bench import bench_config

        self.paths = [p.lower() for p in self.paths]
        if not self.paths:
            raise ConfigError(f"paths=... is required: a comma-separated list of {','.join(PATHS)}")
        unknown = [p for p in self.paths if p not in PATHS]
        if unknown:
            raise ConfigError(f"paths: unknown path '{unknown[0]}'; available: {', '.join(PATHS)}")
        self.stage_recipe = self._load_recipe()
        self.bench_overrides = [o for o in self.overrides if o.startswith("bench.")]
        self.stage_overrides = [o for o in self.overrides if not o.startswith("bench.")]
        bench_config(self.bench_overrides)  # a bad bench key fails now, not after training

    def _load_recipe(self) -> dict[str, list[str]]:
        from forge_trl.commands.recipes import load_recipe

        name = self.recipe
        if name == "auto":
            name = DEMO_RECIPE if self.model in RANDOM_INIT_MODELS else "none"
        return {} if name == "none" else load_recipe(name)

    @property
    def runs_pretrain(self) -> bool:
        return self.pretrain == "true" or (self.pretrain == "auto" and self.model in RANDOM_INIT_MODELS)


PARSER = KeyValueParser(
    PipelineArgs,
    "pipeline",
    example="forge-trl pipeline paths=a,d model=qwen3_0_6b data=data/mine out=outputs/qwen "
    "model.name_or_path=/models/Qwen3-0.6B",
)


def parse_args(argv: list[str]) -> PipelineArgs:
    return PARSER.parse(argv)


@dataclass
class Stage:
    name: str  # its lineage, e.g. sft-dpo-rm
    task: str
    parent: str | None  # the stage whose final/ it starts from
    reward: str | None = None  # PPO: the RM stage


def plan(paths: list[str], with_pretrain: bool) -> list[Stage]:
    """The unique stages of `paths`, each after the stages it needs, in the order they first appear."""
    stages: dict[str, Stage] = {}
    if with_pretrain:
        stages["pretrain"] = Stage("pretrain", "pretrain", None)
    for path in paths:
        parent = "pretrain" if with_pretrain else None
        policy, lineage, reward = parent, [], None
        for task in PATHS[path]:
            lineage.append(task)
            name = "-".join(lineage)
            if task == "rm":
                stage = Stage(name, task, policy)
                reward = name
            elif task == "ppo":
                stage = Stage(name, task, policy, reward=reward)
            else:
                stage = Stage(name, task, policy)
                policy = name
            stages.setdefault(name, stage)
    return list(stages.values())


def stage_overrides(stage: Stage, args: PipelineArgs, out: Path) -> list[str]:
    demo_data, layout = STAGE_DATA[stage.task]
    overrides = [f"task={stage.task}", f"model={args.model}", f"injection={args.injection}"]
    if args.data == "demo":
        overrides.append(f"data={demo_data}")
    else:
        data_file = Path(args.data) / f"{layout}.jsonl"
        if not data_file.is_file():
            raise ConfigError(f"data={args.data}: stage {stage.name} needs {data_file}")
        overrides += ["data=jsonl", f"data.path={data_file}", f"data.layout={layout}"]
    overrides += args.stage_recipe.get(stage.task, [])
    if stage.parent is not None:
        overrides.append(f"model.name_or_path={out / stage.parent / 'final'}")
    if stage.reward is not None:
        overrides.append(f"task.reward_model.checkpoint_path={out / stage.reward / 'final'}")
    return [*overrides, *args.stage_overrides, f"output_dir={out / stage.name}"]


def run_stage(stage: Stage, overrides: list[str], out: Path) -> Path:
    """Train the stage unless its final/ already exists from the same overrides; returns final/."""
    from forge_trl.commands.compose import compose
    from forge_trl.train import run

    stage_dir = out / stage.name
    record = stage_dir / STAGE_FILE
    final = stage_dir / "final"
    if final.is_dir() and record.is_file() and json.loads(record.read_text())["overrides"] == overrides:
        print(f"=== {stage.name}: reusing {final}", flush=True)
        return final
    print(f"\n=== {stage.name}: python -m forge_trl {' '.join(overrides)}", flush=True)
    started = time.time()
    final = run(compose([*overrides, "overwrite=true"]))
    record.write_text(json.dumps({"overrides": overrides, "seconds": round(time.time() - started, 1)}, indent=2))
    return final


def bench_sources(args: PipelineArgs) -> list[str]:
    """bench.prompts/pairs for a data directory with held-out files; the demo suite's format rule."""
    if args.data == "demo":
        return [DEMO_FORMAT]
    found = []
    for key, name in (("bench.prompts", "sft_heldout.jsonl"), ("bench.pairs", "preference_heldout.jsonl")):
        if (Path(args.data) / name).is_file() and not any(o.startswith(key + "=") for o in args.bench_overrides):
            found.append(f"{key}={Path(args.data) / name}")
    return found


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return PARSER.run(argv, run_pipeline, keeps_log=True)


def run_pipeline(args: PipelineArgs) -> None:
    """Train the planned stages (reusing finished ones), then bench them all in one table."""
    out = Path(args.out)
    stages = plan(args.paths, args.runs_pretrain)
    all_overrides = {s.name: stage_overrides(s, args, out) for s in stages}  # data files checked up front
    from forge_trl.commands.console import LOG_FILE, log_to_file

    log_to_file(out / LOG_FILE)
    started = time.time()
    finals = {}
    for stage in stages:
        finals[stage.name] = run_stage(stage, all_overrides[stage.name], out)
    trained = time.time() - started

    from forge_trl.bench.runner import run_bench
    from forge_trl.commands.bench import bench_config

    base = finals.get("pretrain") or _base_model_name(args.model)
    names = ["base", *(s.name for s in stages if s.name != "pretrain")]
    checkpoints = [str(base), *(str(finals[n]) for n in names[1:])]
    bench_cfg = bench_config([*PIPELINE_BENCH, *bench_sources(args), *args.bench_overrides])
    report = run_bench(checkpoints, bench_cfg, bench_cfg.out or out, labels=names)
    report["train_seconds"] = round(trained, 1)
    report["total_seconds"] = round(time.time() - started, 1)
    (out / "pipeline_summary.json").write_text(json.dumps(report, indent=2))
    print(
        f"\npaths {','.join(args.paths)}: training {trained:.0f} s, with bench {time.time() - started:.0f} s; "
        f"runs under {out}/"
    )


def _base_model_name(model_group: str) -> str:
    from forge_trl.commands.compose import compose

    return compose([f"model={model_group}"]).model.name_or_path


if __name__ == "__main__":
    sys.exit(main())
