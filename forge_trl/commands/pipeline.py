"""`python -m forge_trl.pipeline paths=a,b,c,d,e [model=tiny] [injection=dense_lora] [data=demo] [out=...]`

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

from forge_trl.errors import ConfigError, run_command

log = logging.getLogger("forge_trl.pipeline")

PATHS = {
    "a": ("sft", "dpo"),
    "b": ("sft", "orpo"),
    "c": ("sft", "rm", "ppo"),
    "d": ("sft", "dpo", "rm", "ppo"),
    "e": ("sft", "orpo", "rm", "ppo"),
}
# Built-in models start from random weights: they are pretrained first, and need the demo's larger rates.
RANDOM_INIT_MODELS = ("tiny", "tiny_moe")
# The demo recipe per stage (tuned on the tiny model and the demo suite; `make demo` uses it too).
DEMO_RECIPE = {
    "pretrain": ["task.num_train_epochs=10", "task.learning_rate=3e-3", "task.per_device_train_batch_size=32"],
    "sft": ["task.num_train_epochs=2", "task.learning_rate=5e-4", "task.per_device_train_batch_size=8"],
    "dpo": ["task.num_train_epochs=2", "task.learning_rate=2e-4", "task.beta=0.1",
            "task.per_device_train_batch_size=8"],
    "orpo": ["task.num_train_epochs=2", "task.learning_rate=2e-4", "task.orpo_lambda=0.5",
             "task.per_device_train_batch_size=8"],
    "rm": ["task.num_train_epochs=2", "task.learning_rate=1e-4", "task.per_device_train_batch_size=8"],
    "ppo": ["task.num_train_epochs=3", "task.learning_rate=5e-5", "task.per_device_train_batch_size=16",
            "task.response_length=16", "task.kl_coef=0.1"],
}
# Which data layout each stage trains on: the demo group, or the file name in a data directory.
STAGE_DATA = {"pretrain": ("demo_text", "text"), "sft": ("demo_sft", "sft"),
              "dpo": ("demo_preference", "preference"), "orpo": ("demo_preference", "preference"),
              "rm": ("demo_preference", "preference"), "ppo": ("demo_prompt_only", "prompt_only")}
# The pipeline benches sampled responses (4 per prompt at T=1): that is the policy PPO optimises, and greedy
# decoding hides what RL changes when the greedy answer is already the best one. `bench.*` arguments override.
PIPELINE_BENCH = ["bench.temperature=1.0", "bench.samples_per_prompt=4"]
# The demo suite's format is the bare answer: words or a number, at most a final full stop ("north", "7."),
# so an answer followed by rambling ("north, I would say, ...") does not comply.
DEMO_FORMAT = r"bench.format_regex='[\w -]+\.?'"  # single quotes: YAML would read [ as a list
STAGE_FILE = "pipeline_stage.json"
PIPELINE_KEYS = ("paths", "model", "injection", "data", "out", "pretrain")


@dataclass
class PipelineArgs:
    paths: list[str]
    model: str = "tiny"
    injection: str = "dense_lora"
    data: str = "demo"
    out: str = "outputs/pipelines"
    pretrain: str = "auto"  # auto: only for the random-init built-in models
    stage_overrides: list[str] = field(default_factory=list)
    bench_overrides: list[str] = field(default_factory=list)

    @property
    def runs_pretrain(self) -> bool:
        return self.pretrain == "true" or (self.pretrain == "auto" and self.model in RANDOM_INIT_MODELS)


def parse_args(argv: list[str]) -> PipelineArgs:
    values: dict[str, str] = {}
    stage, bench = [], []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"unexpected argument '{item}'; expected key=value (see python -m forge_trl.pipeline -h)")
        if key in PIPELINE_KEYS:
            values[key] = value
        elif key.startswith("bench."):
            bench.append(item)
        else:
            stage.append(item)
    paths = [p.strip().lower() for p in values.pop("paths", "").split(",") if p.strip()]
    if not paths:
        raise ConfigError(f"paths=... is required: a comma-separated list of {','.join(PATHS)}")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ConfigError(f"paths: unknown path '{unknown[0]}'; available: {', '.join(PATHS)}")
    if values.get("pretrain", "auto") not in ("auto", "true", "false"):
        raise ConfigError(f"pretrain: expected auto|true|false, got '{values['pretrain']}'")
    return PipelineArgs(paths=paths, stage_overrides=stage, bench_overrides=bench, **values)


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
        overrides += ["data=jsonl", f"data.path={data_file}", f"data.task={layout}"]
    if args.model in RANDOM_INIT_MODELS:
        overrides += DEMO_RECIPE[stage.task]
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(name)s: %(message)s")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from forge_trl.commands.console import quiet_third_party_logs

    quiet_third_party_logs()
    return run_command(lambda: run_pipeline(parse_args(argv)))


def run_pipeline(args: PipelineArgs) -> None:
    """Train the planned stages (reusing finished ones), then bench them all in one table."""
    out = Path(args.out)
    stages = plan(args.paths, args.runs_pretrain)
    all_overrides = {s.name: stage_overrides(s, args, out) for s in stages}  # data files checked up front
    started = time.time()
    finals = {}
    for stage in stages:
        finals[stage.name] = run_stage(stage, all_overrides[stage.name], out)
    trained = time.time() - started

    from forge_trl.commands.bench import bench_config
    from forge_trl.bench.runner import run_bench

    base = finals.get("pretrain") or _base_model_name(args.model)
    names = ["base", *(s.name for s in stages if s.name != "pretrain")]
    checkpoints = [str(base), *(str(finals[n]) for n in names[1:])]
    bench_cfg = bench_config([*PIPELINE_BENCH, *bench_sources(args), *args.bench_overrides])
    report = run_bench(checkpoints, bench_cfg, bench_cfg.out or out, labels=names)
    report["train_seconds"] = round(trained, 1)
    report["total_seconds"] = round(time.time() - started, 1)
    (out / "pipeline_summary.json").write_text(json.dumps(report, indent=2))
    print(f"\npaths {','.join(args.paths)}: training {trained:.0f} s, with bench {time.time() - started:.0f} s; "
          f"runs under {out}/")


def _base_model_name(model_group: str) -> str:
    from forge_trl.commands.compose import compose

    return compose([f"model={model_group}"]).model.name_or_path


if __name__ == "__main__":
    sys.exit(main())
