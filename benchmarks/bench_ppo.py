"""forge_trl's PPO (`task=ppo`) against TRL 0.29.1's `trl.experimental.ppo.PPOTrainer`, the last TRL release
that shipped PPO: training speed and peak memory on the same policy, reward model, prompts and PPO settings.

    FORGE_TRL_CACHE=/tmp/fcache python -m benchmarks.bench_ppo [--workdir outputs/bench_ppo]
        [--cases tiny qwen3-0.6b] [--steps 12] [--big-steps 3] [--max-wait 900] [--retries 1]

Cases: `tiny` is the built-in forge-tiny model (batch 8, --steps PPO steps, the demo prompts); `qwen3-0.6b` is
a random-init model with Qwen3-0.6B's architecture (441.7M parameters with the tiny tokenizer's 1,181-token
vocabulary), fp32, batch 2, prompts of about 112 tokens, --big-steps PPO steps. Both: response length 16, 4 PPO
epochs.

Method
------
Both sides start from the same forge SFT and reward-model checkpoints, built here with ordinary forge runs
(for qwen3-0.6b from the saved random model with one SFT and one RM step: only the shapes matter there):

- forge runs `task=ppo` on them directly. Its policy trains the SFT LoRA adapter further, the reference is a
  frozen copy of it, and reward and value are adapters (plus a score/value head) on the SAME base model.
- TRL gets the same checkpoints merged into plain transformers models (`load_for_inference`, saved with
  `save_pretrained`): the policy is the merged SFT model with a fresh LoRA of the same shape (`peft_config`;
  its reference is the policy with the adapter disabled), the reward model is the merged RM, and the value
  model is a second copy of the merged RM (TRL trains the value model in full, even with `peft_config`).

Same on both sides: batch (prompts per PPO step), a 16-token response, and forge's defaults for the rest
(read from PPOSettings, PPOTaskConfig and ForgeConfig: PPO epochs, minibatches, learning rate, KL coefficient,
temperature, seed), EOS as the stop token, fp32, no gradient checkpointing (forge's default;
TRL's config would default to it, and to bf16), the same prompts rendered with the chat template (the demo
suite's prompt_only rows; for qwen3-0.6b one demo prompt repeated to about 112 tokens, 16 identical rows).

TRL 0.29.1 is installed with `pip install --no-deps` into its own virtualenv under the work dir, which sees the
main virtualenv's site-packages (torch, transformers, peft, accelerate, datasets) through a `.pth` file, so both
sides run the same torch/transformers/peft; the child checks `trl.__version__`.

Every measured run is its own subprocess (`--child forge|trl`, through benchmarks/harness.py), so each peak is
that implementation's alone. Runs are sequential; before each, the harness waits (up to --max-wait s) until other
processes are idle, since on 2 cores a concurrent job slows torch's threads down many times over, and a run that
other processes disturbed anyway (over 0.25 cores on average while timed) is repeated up to --retries times.

What the numbers mean
---------------------
- episodes/s: sampled responses per second of training, batch x (steps - 1) / (t_last - t_first), where t_i is
  the end of PPO step i (a TrainerCallback's `on_step_end`). The first step (warm-up) and everything before it
  (imports, model loading, data preparation) are excluded; each step is a rollout (generate, score, reference,
  values) plus `num_ppo_epochs` optimizer updates.
- peak RSS: the child's `ru_maxrss`, read when the harness reaps it: the process's high-water mark over its
  whole life, model loading included.
- CPU cores used while timed: this process's CPU seconds / wall seconds over the timed steps, and the same for
  every other process on the machine (from /proc/stat); "other" near 0 means the timing is undisturbed.
- speed ratio = forge episodes/s / TRL episodes/s (above 1: forge is faster);
  memory ratio = forge peak RSS / TRL peak RSS (below 1: forge uses less).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import GIB, log

MODULE = "benchmarks.bench_ppo"
TRL_VERSION = "0.29.1"
RESPONSE_TOKENS = 16  # shorter than forge's default response_length, so that the tiny runs stay short
# Qwen3-0.6B's architecture (random init), with the tiny model's small vocabulary.
QWEN3_0_6B = dict(
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)
CASES = {
    # name: prompts per step, PPO steps (None: --steps), prompt length in tokens (None: the demo prompts as they are)
    "tiny": dict(batch=8, steps=None, prompt_tokens=None),
    "qwen3-0.6b": dict(batch=2, steps=3, prompt_tokens=112),
}
DEFAULT_BIG_STEPS = CASES["qwen3-0.6b"]["steps"]


def ppo_settings() -> dict:
    """The PPO settings both implementations get: forge's defaults, read from its schemas, and a 16-token response."""
    from forge_trl.config import ForgeConfig
    from forge_trl.rl.ppo_settings import PPOSettings
    from forge_trl.tasks.ppo import PPOTaskConfig

    ppo = PPOSettings()
    return dict(
        response_length=RESPONSE_TOKENS,
        num_ppo_epochs=ppo.num_ppo_epochs,
        num_mini_batches=ppo.num_mini_batches,
        learning_rate=harness.schema_default(PPOTaskConfig, "learning_rate"),
        kl_coef=ppo.kl_coef,
        temperature=ppo.temperature,
        seed=harness.schema_default(ForgeConfig, "seed"),
    )


# ------------------------------------------------------------------------------------------------ preparation
def ensure_trl_venv(workdir: Path) -> Path:
    """A virtualenv with TRL 0.29.1 only; everything else comes from the main venv's site-packages."""
    venv = workdir / "trl-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site, main_site = (
        subprocess.run([str(exe), "-c", purelib], check=True, capture_output=True, text=True).stdout.strip()
        for exe in (python, sys.executable)
    )
    # Appended after the venv's own site-packages, so the venv's trl shadows the main venv's trl 1.x.
    Path(site, "main_venv_site_packages.pth").write_text(main_site + "\n", encoding="utf-8")
    probe = "import trl; print(trl.__version__, trl.__file__)"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.split()
    if not found or found[0] != TRL_VERSION or not found[1].startswith(str(venv.resolve())):
        log(f"installing trl=={TRL_VERSION} into {venv}")
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed", f"trl=={TRL_VERSION}"],
            check=True,
        )
    return python


def export_merged(checkpoint: Path, target: Path, head: str) -> None:
    """A forge checkpoint as a plain transformers model directory (adapter merged), for TRL."""
    if (target / "config.json").is_file():
        return
    import torch

    from forge_trl.models.loading import load_for_inference

    model, tokenizer, _ = load_for_inference(str(checkpoint), head=head)
    harness.save_model_dir(model.to(torch.float32), tokenizer, target)


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """The prompt as the policy sees it: the chat template with the generation prompt (as forge's task=ppo does)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def prepare_case(name: str, workdir: Path, steps: int) -> dict:
    """Forge SFT + RM checkpoints, their merged exports for TRL, and the prompt file(s). Returns both specs."""
    from forge_trl.data.demo_suite import ensure_demo_suite
    from forge_trl.data.rows import read_rows
    from forge_trl.models.loading import load_tokenizer

    case = CASES[name]
    here = workdir / name
    logs = workdir / "logs"
    if name == "tiny":
        sft = harness.forge_stage(["task=sft", "task.max_steps=20", "task.learning_rate=1e-3"], here / "sft", logs)
        rm = harness.forge_stage(["task=rm", f"model.name_or_path={sft}", "task.max_steps=20"], here / "rm", logs)
    else:
        base = harness.build_random_qwen3(here / "base", QWEN3_0_6B)
        model_keys = [f"model.name_or_path={base}", "model.dtype=float32"]
        sft = harness.forge_stage(["task=sft", "task.max_steps=1", *model_keys], here / "sft", logs)
        rm = harness.forge_stage(
            ["task=rm", f"model.name_or_path={sft}", "model.dtype=float32", "task.max_steps=1"], here / "rm", logs
        )
    policy_dir, rm_dir = here / "merged_policy", here / "merged_rm"
    export_merged(sft, policy_dir, "causal_lm")
    export_merged(rm, rm_dir, "seq_cls")

    # The same prompts, rendered the same way, for both sides.
    tokenizer = load_tokenizer(str(policy_dir))
    demo_prompts = [row.data["prompt"] for row in read_rows(str(ensure_demo_suite()["prompt_only"]))]
    data_overrides: list[str] = []  # forge's default data (the demo suite's prompt_only rows) for the tiny case
    if case["prompt_tokens"] is None:
        texts = demo_prompts
    else:  # one demo prompt repeated to about prompt_tokens tokens, 16 identical rows
        unit = demo_prompts[0]
        length = {n: len(chat_prompt_ids(tokenizer, " ".join([unit] * n))) for n in range(1, 64)}
        repeats = min(length, key=lambda n: abs(length[n] - case["prompt_tokens"]))
        texts = [" ".join([unit] * repeats)] * 16
        prompt_file = here / "prompts.jsonl"
        prompt_file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts), encoding="utf-8")
        data_overrides = ["data=jsonl", f"data.path={prompt_file}", "data.layout=prompt_only"]
    prompt_ids = [chat_prompt_ids(tokenizer, t) for t in texts]
    ids_file = here / "prompt_ids.json"
    ids_file.write_text(json.dumps(prompt_ids), encoding="utf-8")
    lengths = sorted(len(ids) for ids in prompt_ids)

    steps = case["steps"] or steps
    ppo = ppo_settings()
    common = dict(case=name, batch=case["batch"], steps=steps, **ppo)
    forge_spec = dict(
        common,
        overrides=[
            "task=ppo",
            f"model.name_or_path={sft}",
            f"task.reward_model.checkpoint_path={rm}",
            *(["model.dtype=float32"] if name != "tiny" else []),
            *data_overrides,
            f"task.per_device_train_batch_size={case['batch']}",
            f"task.max_steps={steps}",
            f"seed={ppo['seed']}",
            *(f"task.{key}={value}" for key, value in ppo.items() if key != "seed"),
            "task.logging_steps=1",
            "task.gradient_checkpointing=false",
            f"output_dir={here / 'forge_ppo'}",
            "overwrite=true",
            "plot=false",
        ],
    )
    trl_spec = dict(
        common,
        policy=str(policy_dir),
        reward=str(rm_dir),
        prompt_ids=str(ids_file),
        output_dir=str(here / "trl_ppo"),
        lora=harness.dense_lora_shape(),
    )
    return dict(forge=forge_spec, trl=trl_spec, prompt_lengths=(lengths[0], lengths[-1]), steps=steps)


def measure(
    impl: str, python: str, spec: dict, workdir: Path, wait_idle: bool = True, max_wait: float = 900, retries: int = 1
) -> dict:
    """Run one implementation in its own process (harness.run_child); its timings, episodes/s and peak RSS."""
    result = harness.run_child(
        MODULE,
        impl,
        spec,
        f"{spec['case']}-{impl}-ppo",
        workdir,
        python=python,
        wait_idle=wait_idle,
        max_wait=max_wait,
        retries=retries,
    )
    result["episodes_per_s"] = spec["batch"] * result["timed_steps"] / result["timed_s"]
    return result


# ------------------------------------------------------------------------------------------------ children
def child_forge(spec: dict, timer) -> dict:
    harness.forge_train(spec["overrides"], callbacks=(timer,))
    return dict(implementation="forge_trl")


def child_trl(spec: dict, timer) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"expected trl {TRL_VERSION}, found {trl.__version__} at {trl.__file__}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=torch.float32)
    prompts = Dataset.from_dict({"input_ids": json.loads(Path(spec["prompt_ids"]).read_text(encoding="utf-8"))})
    lora = spec["lora"]
    peft_config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["targets"],
        task_type="CAUSAL_LM",
    )
    config = PPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1,
        total_episodes=spec["batch"] * spec["steps"],
        response_length=spec["response_length"],
        num_ppo_epochs=spec["num_ppo_epochs"],
        num_mini_batches=spec["num_mini_batches"],
        learning_rate=spec["learning_rate"],
        kl_coef=spec["kl_coef"],
        temperature=spec["temperature"],
        stop_token="eos",
        seed=spec["seed"],
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward,
        train_dataset=prompts,
        value_model=value,
        peft_config=peft_config,
        callbacks=[timer],
    )
    trainer.train()
    return dict(implementation=f"TRL {trl.__version__}")


def child(impl: str, spec: dict) -> dict:
    """One PPO run; every step but the first is timed."""
    timer = harness.step_timer()
    info = (child_forge if impl == "forge" else child_trl)(spec, timer)
    if len(timer.samples) != spec["steps"]:
        raise SystemExit(f"expected {spec['steps']} PPO steps, the callback saw {len(timer.samples)}")
    info.update(timer.summary(warmup=0, count_tokens=False), steps=len(timer.samples), batch=spec["batch"])
    return info


# ------------------------------------------------------------------------------------------------ report
def report(results: dict) -> str:
    rows = []
    for case, r in results.items():
        lo, hi = r["prompt_lengths"]
        for impl in ("forge", "trl"):
            m = r[impl]
            rows.append(
                (
                    case,
                    m["implementation"],
                    f"{m['steps']} ({m['timed_steps']})",
                    m["batch"],
                    f"{lo}" if lo == hi else f"{lo}-{hi}",
                    f"{m['episodes_per_s']:.3f}",
                    f"{m['peak_rss'] / GIB:.2f}",
                    f"{m['own_cores']:.2f} / {m['other_cores']:.2f}",
                )
            )
    runs = harness.markdown_table(
        (
            "case",
            "implementation",
            "PPO steps (timed)",
            "batch",
            "prompt tokens",
            "episodes/s",
            "peak RSS (GiB)",
            "CPU cores used while timed: own / other processes",
        ),
        rows,
    )
    ratios = harness.markdown_table(
        ("case", "speed ratio (forge eps/s ÷ TRL eps/s)", "memory ratio (forge peak ÷ TRL peak)"),
        [
            (
                case,
                f"{r['forge']['episodes_per_s'] / r['trl']['episodes_per_s']:.2f}x",
                f"{r['forge']['peak_rss'] / r['trl']['peak_rss']:.2f}x",
            )
            for case, r in results.items()
        ],
    )
    return f"{runs}\n\n{ratios}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description="forge_trl's PPO against TRL 0.29.1's PPOTrainer: episodes/s "
        "and peak RSS (see the module docstring for the method)."
    )
    parser.add_argument("--workdir", default="outputs/bench_ppo")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=12, help="PPO steps of the tiny case (at least 2)")
    parser.add_argument(
        "--big-steps", type=int, default=DEFAULT_BIG_STEPS, help="PPO steps of the qwen3-0.6b case (at least 2)"
    )
    harness.add_idle_arguments(parser, optional=False)
    args = harness.parse_args_or_run_child(parser, ("forge", "trl"), child)
    if args is None:
        return
    if args.steps < 2 or args.big_steps < 2:
        parser.error("--steps and --big-steps must be at least 2 (the first step is not timed)")
    CASES["qwen3-0.6b"]["steps"] = args.big_steps

    started = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        trl_python = ensure_trl_venv(workdir)
        results, notes = {}, []
        for name in args.cases:
            prepared = prepare_case(name, workdir, args.steps)
            runs = {
                impl: measure(impl, python, prepared[impl], workdir, max_wait=args.max_wait, retries=args.retries)
                for impl, python in (("forge", sys.executable), ("trl", str(trl_python)))
            }
            results[name] = dict(prompt_lengths=prepared["prompt_lengths"], **runs)
            for m in runs.values():
                per_step = ", ".join(f"{t:.1f}" for t in m["step_seconds"])
                notes.append(
                    f"{name} / {m['implementation']}: process wall {m['process_wall_s']:.0f}s, seconds per "
                    f"timed step {per_step}"
                    + (f"; measured {m['attempts']} times, the last kept" if m["attempts"] > 1 else "")
                )
    except harness.RunFailed as exc:
        sys.exit(str(exc))
    (workdir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    if "qwen3-0.6b" in args.cases and args.big_steps != DEFAULT_BIG_STEPS:
        notes.append(f"qwen3-0.6b ran {args.big_steps} PPO steps instead of the default {DEFAULT_BIG_STEPS}.")

    lora = harness.dense_lora_shape()
    print(harness.machine_line())
    print(
        f"settings: {json.dumps(ppo_settings())}; LoRA r={lora['r']} alpha={lora['alpha']} "
        f"dropout={lora['dropout']} on {','.join(lora['targets'])}; fp32; no gradient checkpointing"
    )
    print()
    print(report(results))
    if notes:
        print()
    for note in notes:
        print(f"- {note}")
    print(
        f"\ntotal runtime: {time.perf_counter() - started:.0f}s "
        f"(results in {workdir / 'results.json'}, logs in {workdir / 'logs'})"
    )


if __name__ == "__main__":
    main()
