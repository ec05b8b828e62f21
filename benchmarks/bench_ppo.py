"""forge_trl's PPO (`task=ppo`) against TRL 0.29.1's `trl.experimental.ppo.PPOTrainer`, the last TRL release
that shipped PPO: training speed and peak memory on the same policy, reward model, prompts and PPO settings.

    FORGE_TRL_CACHE=/tmp/fcache python scripts/bench_ppo.py [--workdir outputs/bench_ppo]
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

Same on both sides: batch (prompts per PPO step), response length, PPO epochs, 1 minibatch, learning rate,
KL coefficient, temperature 1.0, EOS as the stop token, fp32, no gradient checkpointing (forge's default;
TRL's config would default to it, and to bf16), the same prompts rendered with the chat template (the demo
suite's prompt_only rows; for qwen3-0.6b one demo prompt repeated to about 112 tokens, 16 identical rows).

TRL 0.29.1 is installed with `pip install --no-deps` into its own virtualenv under the work dir, which sees the
main virtualenv's site-packages (torch, transformers, peft, accelerate, datasets) through a `.pth` file, so both
sides run the same torch/transformers/peft; the child checks `trl.__version__`.

Every measured run is its own subprocess (`--child forge|trl`), so each peak is that implementation's alone.
Runs are sequential; before each, the script waits (up to --max-wait s) until other processes are idle, since
on 2 cores a concurrent job slows torch's threads down many times over, and a run that other processes
disturbed anyway (over 0.25 cores on average while timed) is repeated up to --retries times.

What the numbers mean
---------------------
- episodes/s: sampled responses per second of training, batch x (steps - 1) / (t_last - t_first), where t_i is
  the end of PPO step i (a TrainerCallback's `on_step_end`). The first step (warm-up) and everything before it
  (imports, model loading, data preparation) are excluded; each step is a rollout (generate, score, reference,
  values) plus `num_ppo_epochs` optimizer updates.
- peak RSS: `getrusage(RUSAGE_SELF).ru_maxrss` of the child at exit: the process's high-water mark over its
  whole life, model loading included.
- CPU cores used while timed: this process's CPU seconds / wall seconds over the timed steps, and the same for
  every other process on the machine (from /proc/stat); "other" near 0 means the timing is undisturbed.
- speed ratio = forge episodes/s / TRL episodes/s (above 1: forge is faster);
  memory ratio = forge peak RSS / TRL peak RSS (below 1: forge uses less).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL_VERSION = "0.29.1"
LORA = dict(r=16, alpha=32, dropout=0.05,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
# PPO settings shared by both implementations (forge's task=ppo defaults, set explicitly on TRL's side).
PPO = dict(response_length=16, num_ppo_epochs=4, num_mini_batches=1, learning_rate=1e-5, kl_coef=0.1,
           temperature=1.0, seed=42)
# Qwen3-0.6B's architecture (random init), with the tiny model's small vocabulary.
QWEN3_0_6B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=3072, max_position_embeddings=512, rms_norm_eps=1e-6,
                  rope_theta=1_000_000.0, tie_word_embeddings=True)
CASES = {
    # name: prompts per step, PPO steps (None: --steps), prompt length in tokens (None: the demo prompts as they are)
    "tiny": dict(batch=8, steps=None, prompt_tokens=None),
    "qwen3-0.6b": dict(batch=2, steps=3, prompt_tokens=112),
}
DEFAULT_BIG_STEPS = CASES["qwen3-0.6b"]["steps"]
GIB = 1024 ** 3
OTHER_LOAD_LIMIT = 0.25  # cores used by other processes above which a timing counts as disturbed


# ------------------------------------------------------------------------------------------------ helpers
def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot (user, system, irq; not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_until_idle(max_wait_s: float, threshold_cores: float = 0.1, window_s: float = 5.0) -> float:
    """Wait until other processes use less than `threshold_cores` cores (the machine may be shared, and a
    concurrent job distorts timings badly on 2 cores). Returns the load seen last, in cores."""
    deadline = time.monotonic() + max_wait_s
    warned = False
    while True:
        busy = machine_busy_seconds()
        time.sleep(window_s)
        load = (machine_busy_seconds() - busy) / window_s
        if load < threshold_cores or time.monotonic() > deadline:
            return load
        if not warned:
            log(f"other processes use {load:.1f} cores; waiting (up to {max_wait_s:.0f}s) for an idle machine")
            warned = True


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_logged(cmd: list[str], log_path: Path, what: str) -> float:
    """Run `cmd` with its output in `log_path`; exit with the log's tail if it fails. Returns the wall time."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"{what}: {' '.join(str(c) for c in cmd)}  (log: {log_path})")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    elapsed = time.perf_counter() - started
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-60:]
        sys.exit(f"{what} failed (exit {code}); last lines of {log_path}:\n" + "\n".join(tail))
    log(f"{what}: done in {elapsed:.0f}s")
    return elapsed


def forge_stage(overrides: list[str], output_dir: Path, logs: Path) -> Path:
    """One forge run (`python -m forge_trl ...`); reuses an existing final/ from an earlier run of this script."""
    final = output_dir / "final"
    if (final / "forge_run.json").is_file():
        log(f"reusing {final}")
        return final
    cmd = [sys.executable, "-m", "forge_trl", *overrides, f"output_dir={output_dir}", "overwrite=true", "plot=false"]
    run_logged(cmd, logs / f"{output_dir.parent.name}-{output_dir.name}.log", f"forge {overrides[0]}")
    return final


def ensure_trl_venv(workdir: Path) -> Path:
    """A virtualenv with TRL 0.29.1 only; everything else comes from the main venv's site-packages."""
    venv = workdir / "trl-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    main_site = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    # Appended after the venv's own site-packages, so the venv's trl shadows the main venv's trl 1.x.
    Path(site, "main_venv_site_packages.pth").write_text(main_site + "\n", encoding="utf-8")
    probe = "import trl; print(trl.__version__, trl.__file__)"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.split()
    if not found or found[0] != TRL_VERSION or not found[1].startswith(str(venv.resolve())):
        log(f"installing trl=={TRL_VERSION} into {venv}")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed",
                        f"trl=={TRL_VERSION}"], check=True)
    return python


def export_merged(checkpoint: Path, target: Path, head: str) -> None:
    """A forge checkpoint as a plain transformers model directory (adapter merged), for TRL."""
    if (target / "config.json").is_file():
        return
    import torch

    from forge_trl.models.loading import load_for_inference

    model, tokenizer, _ = load_for_inference(str(checkpoint), head=head)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.float32).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    del model


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """The prompt as the policy sees it: the chat template with the generation prompt (as forge's task=ppo does)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def build_qwen_base(target: Path, arch: dict | None = None, vocab_size: int | None = None,
                    bf16: bool = False) -> None:
    """A random-init Qwen3 (Qwen3-0.6B's architecture unless `arch` says otherwise) with the tiny tokenizer's
    token ids, saved as a model directory. `vocab_size`: the embedding size (default: the tiny tokenizer's)."""
    if (target / "config.json").is_file():
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from forge_trl.models.loading import load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    config = AutoConfig.for_model("qwen3", vocab_size=vocab_size or len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **(arch or QWEN3_0_6B))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if bf16 else torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)
    log(f"built {target}: {sum(p.numel() for p in model.parameters()):,} parameters")


# ------------------------------------------------------------------------------------------------ cases
def prepare_case(name: str, workdir: Path, steps: int) -> dict:
    """Forge SFT + RM checkpoints, their merged exports for TRL, and the prompt file(s). Returns both specs."""
    from forge_trl.data.demo_suite import ensure_demo_suite
    from forge_trl.data.rows import read_rows
    from forge_trl.models.loading import load_tokenizer

    case = CASES[name]
    here = workdir / name
    logs = workdir / "logs"
    if name == "tiny":
        sft = forge_stage(["task=sft", "task.max_steps=20", "task.learning_rate=1e-3"], here / "sft", logs)
        rm = forge_stage(["task=rm", f"model.name_or_path={sft}", "task.max_steps=20"], here / "rm", logs)
    else:
        base = here / "base"
        build_qwen_base(base)
        model_keys = [f"model.name_or_path={base}", "model.dtype=float32"]
        sft = forge_stage(["task=sft", "task.max_steps=1", *model_keys], here / "sft", logs)
        rm = forge_stage(["task=rm", f"model.name_or_path={sft}", "model.dtype=float32", "task.max_steps=1"],
                         here / "rm", logs)
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
        data_overrides = ["data=jsonl", f"data.path={prompt_file}", "data.task=prompt_only"]
    prompt_ids = [chat_prompt_ids(tokenizer, t) for t in texts]
    ids_file = here / "prompt_ids.json"
    ids_file.write_text(json.dumps(prompt_ids), encoding="utf-8")
    lengths = sorted(len(ids) for ids in prompt_ids)

    steps = case["steps"] or steps
    common = dict(case=name, batch=case["batch"], steps=steps, **PPO)
    forge_spec = dict(common, overrides=[
        "task=ppo", f"model.name_or_path={sft}", f"task.reward_model.checkpoint_path={rm}",
        *(["model.dtype=float32"] if name != "tiny" else []), *data_overrides,
        f"task.per_device_train_batch_size={case['batch']}", f"task.response_length={PPO['response_length']}",
        f"task.num_ppo_epochs={PPO['num_ppo_epochs']}", f"task.num_mini_batches={PPO['num_mini_batches']}",
        f"task.learning_rate={PPO['learning_rate']}", f"task.kl_coef={PPO['kl_coef']}",
        f"task.temperature={PPO['temperature']}", f"task.max_steps={steps}", f"seed={PPO['seed']}",
        "task.logging_steps=1", "task.gradient_checkpointing=false",
        f"output_dir={here / 'forge_ppo'}", "overwrite=true", "plot=false",
    ])
    trl_spec = dict(common, policy=str(policy_dir), reward=str(rm_dir), prompt_ids=str(ids_file),
                    output_dir=str(here / "trl_ppo"), lora=LORA)
    return dict(forge=forge_spec, trl=trl_spec, prompt_lengths=(lengths[0], lengths[-1]), steps=steps)


def measure(impl: str, python: str, spec: dict, workdir: Path, max_wait: float, retries: int) -> dict:
    """Run one implementation in its own process; returns its result JSON (timings and peak RSS).

    The machine may be shared: each run waits for other processes to go idle first, and a run during which
    they used more than OTHER_LOAD_LIMIT cores on average is repeated (up to `retries` times)."""
    spec_file = workdir / spec["case"] / f"{impl}_spec.json"
    result_file = workdir / spec["case"] / f"{impl}_result.json"
    spec_file.write_text(json.dumps(dict(spec, result=str(result_file)), indent=1), encoding="utf-8")
    cmd = [python, str(Path(__file__).resolve()), "--child", impl, "--spec", str(spec_file)]
    for attempt in range(retries + 1):
        result_file.unlink(missing_ok=True)
        load = wait_until_idle(max_wait)
        if load >= OTHER_LOAD_LIMIT:
            log(f"the machine is still busy ({load:.1f} cores used by other processes); measuring anyway")
        wall = run_logged(cmd, workdir / "logs" / f"{spec['case']}-{impl}-ppo.log", f"{spec['case']} {impl} PPO")
        result = json.loads(result_file.read_text(encoding="utf-8"))
        result.update(process_wall_s=wall, attempts=attempt + 1)
        if result["other_cores"] < OTHER_LOAD_LIMIT:
            break
        log(f"other processes used {result['other_cores']:.2f} cores during the timed steps"
            + ("; measuring again" if attempt < retries else "; keeping this result"))
    return result


# ------------------------------------------------------------------------------------------------ children
def step_timer():
    """A TrainerCallback recording the end of every PPO step: wall clock, the machine's and this process's CPU
    seconds."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_ends: list[float] = []
            self.busy: list[float] = []  # machine-wide CPU seconds at each step end
            self.own: list[float] = []  # this process's CPU seconds at each step end

        def on_step_end(self, args, state, control, **kwargs):
            self.step_ends.append(time.perf_counter())
            self.busy.append(machine_busy_seconds())
            self.own.append(own_cpu_seconds())

    return StepTimer()


def child_forge(spec: dict, timer) -> dict:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    sys.path.insert(0, str(ROOT))
    import logging

    import torch

    from forge_trl.commands.compose import compose
from forge_trl.commands.console import quiet_third_party_logs
    from forge_trl.train import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet_third_party_logs()
    run(compose(spec["overrides"]), extra_callbacks=(timer,))
    return dict(implementation="forge_trl", torch=torch.__version__, threads=torch.get_num_threads())


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
    peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora["targets"], task_type="CAUSAL_LM")
    config = PPOConfig(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
        total_episodes=spec["batch"] * spec["steps"], response_length=spec["response_length"],
        num_ppo_epochs=spec["num_ppo_epochs"], num_mini_batches=spec["num_mini_batches"],
        learning_rate=spec["learning_rate"], kl_coef=spec["kl_coef"], temperature=spec["temperature"],
        stop_token="eos", seed=spec["seed"], bf16=False, fp16=False, gradient_checkpointing=False,
        num_sample_generations=0, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
        train_dataset=prompts, value_model=value, peft_config=peft_config, callbacks=[timer],
    )
    trainer.train()
    return dict(implementation=f"TRL {trl.__version__}", torch=torch.__version__, threads=torch.get_num_threads())


def child_main(impl: str, spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    timer = step_timer()
    info = (child_forge if impl == "forge" else child_trl)(spec, timer)
    ends = timer.step_ends
    if len(ends) != spec["steps"]:
        raise SystemExit(f"expected {spec['steps']} PPO steps, the callback saw {len(ends)}")
    timed = len(ends) - 1
    info.update(
        steps=len(ends), timed_steps=timed, batch=spec["batch"],
        step_seconds=[b - a for a, b in zip(ends, ends[1:])],
        episodes_per_s=spec["batch"] * timed / (ends[-1] - ends[0]) if timed else float("nan"),
        # Cores used by this process and by everything else on the machine during the timed steps.
        own_cores=(timer.own[-1] - timer.own[0]) / (ends[-1] - ends[0]),
        other_cores=max(0.0, (timer.busy[-1] - timer.busy[0]) - (timer.own[-1] - timer.own[0])) / (ends[-1] - ends[0]),
        peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # ru_maxrss is in KiB on Linux
    )
    Path(spec["result"]).write_text(json.dumps(info, indent=1), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ report
def machine_line() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"machine: {cpu}; {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
            f"torch {torch.__version__}; {platform.platform()}; Python {platform.python_version()}")


def print_report(results: dict, notes: list[str]) -> None:
    print("| case | implementation | PPO steps (timed) | batch | prompt tokens | episodes/s | peak RSS (GiB) "
          "| CPU cores used while timed: own / other processes |")
    print("|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        lo, hi = r["prompt_lengths"]
        tokens = f"{lo}" if lo == hi else f"{lo}-{hi}"
        for impl in ("forge", "trl"):
            m = r[impl]
            print(f"| {case} | {m['implementation']} | {m['steps']} ({m['timed_steps']}) | {m['batch']} | {tokens} "
                  f"| {m['episodes_per_s']:.3f} | {m['peak_rss'] / GIB:.2f} "
                  f"| {m['own_cores']:.2f} / {m['other_cores']:.2f} |")
    print()
    print("| case | speed ratio (forge eps/s ÷ TRL eps/s) | memory ratio (forge peak ÷ TRL peak) |")
    print("|---|---|---|")
    for case, r in results.items():
        speed = r["forge"]["episodes_per_s"] / r["trl"]["episodes_per_s"]
        memory = r["forge"]["peak_rss"] / r["trl"]["peak_rss"]
        print(f"| {case} | {speed:.2f}x | {memory:.2f}x |")
    if notes:
        print()
    for note in notes:
        print(f"- {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description="forge_trl's PPO against TRL 0.29.1's PPOTrainer: episodes/s "
                                                 "and peak RSS (see the module docstring for the method).")
    parser.add_argument("--workdir", default="outputs/bench_ppo")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=12, help="PPO steps of the tiny case (at least 2)")
    parser.add_argument("--big-steps", type=int, default=DEFAULT_BIG_STEPS,
                        help="PPO steps of the qwen3-0.6b case (at least 2)")
    parser.add_argument("--max-wait", type=float, default=900,
                        help="seconds to wait for other processes to go idle before each measured run")
    parser.add_argument("--retries", type=int, default=1,
                        help="measure again when other processes disturbed the timed steps (this many times)")
    parser.add_argument("--child", choices=("forge", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child, args.spec)
        return
    if args.steps < 2 or args.big_steps < 2:
        parser.error("--steps and --big-steps must be at least 2 (the first step is not timed)")
    CASES["qwen3-0.6b"]["steps"] = args.big_steps

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    started = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    trl_python = ensure_trl_venv(workdir)

    results, notes = {}, []
    for name in args.cases:
        prepared = prepare_case(name, workdir, args.steps)
        runs = {impl: measure(impl, python, prepared[impl], workdir, args.max_wait, args.retries)
                for impl, python in (("forge", sys.executable), ("trl", str(trl_python)))}
        results[name] = dict(prompt_lengths=prepared["prompt_lengths"], **runs)
        for m in runs.values():
            per_step = ", ".join(f"{t:.1f}" for t in m["step_seconds"])
            notes.append(f"{name} / {m['implementation']}: process wall {m['process_wall_s']:.0f}s, seconds per "
                         f"timed step {per_step}"
                         + (f"; measured {m['attempts']} times, the last kept" if m["attempts"] > 1 else ""))
    (workdir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    if "qwen3-0.6b" in args.cases and args.big_steps != DEFAULT_BIG_STEPS:
        notes.append(f"qwen3-0.6b ran {args.big_steps} PPO steps instead of the default {DEFAULT_BIG_STEPS}.")

    print(machine_line())
    print(f"settings: {json.dumps(PPO)}; LoRA r={LORA['r']} alpha={LORA['alpha']} dropout={LORA['dropout']} on "
          f"{','.join(LORA['targets'])}; fp32; no gradient checkpointing")
    print()
    print_report(results, notes)
    print(f"\ntotal runtime of this script: {time.perf_counter() - started:.0f}s "
          f"(results in {workdir / 'results.json'}, logs in {workdir / 'logs'})")

if __name__ == "__main__":
    main()
