"""Per-process peak memory of 2-process FSDP2 (and DDP) against 1 process, on CPU, for forge SFT (full
parameter and LoRA) and PPO on a random-init Qwen3-0.6B-architecture model in fp32.

    python -m benchmarks.fsdp_memory [--steps 3] [--cases full lora ppo] [--launches 1proc fsdp2 ddp]
        [--vocab qwen3|tiny] [--batch 2] [--seq-len 128] [--gradient-checkpointing]
        [--workdir outputs/fsdp_memory] [--models-dir DIR] [--child-env KEY=VALUE ...]

Launches (each run is its own launch, one after the other, every process with OMP_NUM_THREADS=1):

- `1proc`: `python -m forge_trl <overrides>` as one process;
- `fsdp2`: `accelerate launch --config_file conf/accelerate/fsdp2.yaml -m forge_trl <overrides>`: 2 processes,
  FSDP2 over gloo, one unit per decoder layer (weights, gradients and optimizer state sharded; every process
  loads the whole base first, see the config's `fsdp_cpu_ram_efficient_loading`);
- `ddp`: `accelerate launch --config_file conf/accelerate/cpu_2proc.yaml -m forge_trl <overrides>`: 2 processes,
  data parallel, each with the whole model (the contrast; measured for the full-parameter case only).

Each process runs forge through benchmarks/_rss_wrapper.py (`-m benchmarks._rss_wrapper REPORT_DIR <overrides>`
in place of `-m forge_trl <overrides>`), which trains as `python -m forge_trl` would (`forge_trl.train.run` on
the composed config) and reports that process's own `ru_maxrss` when it exits, plus its resident memory (current,
the part of it that is mapped files, and the high-water mark so far) at phase marks: model loaded, training begins
(after the trainer sharded/wrapped the model), after backward / after the optimizer step / end of each step,
when training is over (before final/ is gathered), once final/ is written, end. The accelerate launcher and
torchrun's agent are separate processes and not in these numbers (`launcher_hwm_kib` records the launched
command's own high-water mark as last seen: about 0.23 GiB for `accelerate launch`; for a 1-process run, the run
itself).

Cases (`--cases`), all with batch --batch per process, rows cut to --seq-len tokens, --steps optimizer steps,
fp32, gradient checkpointing off (forge's default; `--gradient-checkpointing` turns it on: activations and logits
are per process whatever the launch, so they are the part of a peak that sharding cannot halve):

- `full`: task=sft task.full_parameter=true (every weight trains; AdamW, fused, as TrainingArguments picks it);
  target: per-process peak of fsdp2 <= 0.6x the 1-process peak. Launches 1proc, fsdp2, ddp.
- `lora`: task=sft injection=dense_lora (forge's default LoRA). Launches 1proc, fsdp2.
- `ppo`: task=ppo from an SFT (LoRA) checkpoint and an RM trained from it (one step each, made here in one
  process; only shapes matter), batch --batch prompts of about --seq-len - 24 tokens, a 16-token response,
  forge's other PPO defaults. Launches 1proc, fsdp2.

Models (`--vocab`): `qwen3` (default) is the Qwen3-0.6B architecture with Qwen3's 151,936-token vocabulary
(596M parameters, 2.2 GiB in fp32) and token ids from forge-tiny's tokenizer, as bench_perf builds it; `tiny`
is the same architecture with the tiny tokenizer's vocabulary (441.7M parameters), as bench_ppo builds it, for
launches that do not fit the machine with the full vocabulary (2-process DDP of full-parameter SFT needs about
2 x 5 copies of the weights).

Memory safety: before each launch the script estimates its total need (in copies of the fp32 weights, or from
the 1-process result of the same case when there is one) and skips the launch, saying so, when that does not fit
in MemAvailable minus --reserve-gib; while a launch runs it watches MemAvailable and stops the launch (its own
process group) if it falls below --guard-gib, so that the machine's other jobs are not pushed into the OOM
killer.

Profiling: `--child-env MALLOC_MMAP_THRESHOLD_=262144` makes glibc return every freed block of 256 KiB or more to
the system at once, so that RSS between steps is what is live rather than what the allocator kept;
`--gradient-checkpointing` shows the share of layer activations.

Output: a table on stdout and `<workdir>/results.json` (every process's report, phases included; the machine;
the settings); logs under `<workdir>/logs`. A launch that fails or is skipped is reported with its reason, and with
the command that repeats it as a user would type it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import bench_perf, bench_ppo, harness
from benchmarks.harness import GIB, ROOT, log

KIB = 1024
CASES = ("full", "lora", "ppo")
LAUNCHES = ("1proc", "fsdp2", "ddp")
CASE_LAUNCHES = {"full": ("1proc", "fsdp2", "ddp"), "lora": ("1proc", "fsdp2"), "ppo": ("1proc", "fsdp2")}
LAUNCH_CONFIGS = {"fsdp2": ROOT / "conf/accelerate/fsdp2.yaml", "ddp": ROOT / "conf/accelerate/cpu_2proc.yaml"}
PROCESSES = {"1proc": 1, "fsdp2": 2, "ddp": 2}
TARGET = 0.6  # full-parameter SFT: FSDP2 per-process peak / 1-process peak
PPO_RESPONSE_TOKENS = bench_ppo.RESPONSE_TOKENS
VOCABS = {"qwen3": bench_perf.QWEN3_VOCAB, "tiny": None}
# A rough upper bound of one process's peak, in copies of the fp32 weights, plus OVERHEAD_GIB (torch, Python, data,
# activations), used only to decide whether a launch fits; a measured 1-process peak replaces it where it can.
WEIGHT_COPIES = {
    ("full", "1proc"): 4.5,  # weights, gradients, AdamW's two moments, logits and activations
    ("full", "ddp"): 5.5,  # the same plus DDP's gradient buckets
    ("full", "fsdp2"): 3.5,  # rank 0: shards of everything, whole tied embedding, the gathered final/ weights
    ("lora", "1proc"): 2.0,
    ("lora", "fsdp2"): 2.5,
    ("ppo", "1proc"): 2.5,
    ("ppo", "fsdp2"): 3.0,
}
OVERHEAD_GIB = 1.5


# ------------------------------------------------------------------------------------------------ preparation
def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * KIB / GIB
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def prepare(args, workdir: Path) -> dict:
    """The base model, the SFT and prompt rows, and (for ppo) the SFT and RM checkpoints, built once in `workdir`
    (--models-dir) and reused by later invocations."""
    base = harness.build_random_qwen3(
        workdir / f"qwen3-0.6b-{args.vocab}-base", bench_ppo.QWEN3_0_6B, VOCABS[args.vocab]
    )
    rows = bench_perf.Bench(
        args=argparse.Namespace(seq_len=args.seq_len, batch=args.batch, steps=args.steps, warmup=1),
        workdir=workdir,
        cuda=False,
    )
    prepared = dict(base=base, sft_rows=rows.data_file("sft"), weight_bytes=weight_bytes(base))
    if "ppo" in args.cases:
        prepared["prompt_rows"] = rows.data_file("prompt_only")
        logs = workdir / "logs"
        model = [f"model.name_or_path={base}", "model.dtype=float32", "precision=fp32", "data.max_length=128"]
        one_step = ["task.max_steps=1", "task.per_device_train_batch_size=1"]
        sft = harness.forge_stage(["task=sft", *model, *one_step], workdir / f"ppo-{args.vocab}" / "sft", logs)
        rm = harness.forge_stage(
            ["task=rm", f"model.name_or_path={sft}", "model.dtype=float32", "precision=fp32", *one_step],
            workdir / f"ppo-{args.vocab}" / "rm",
            logs,
        )
        prepared.update(sft=sft, rm=rm)
    return prepared


def overrides(case: str, args, prepared: dict, output_dir: Path) -> list[str]:
    common = [
        "model.dtype=float32",
        "precision=fp32",
        f"task.per_device_train_batch_size={args.batch}",
        f"task.max_steps={args.steps}",
        "task.logging_steps=1",
        f"task.gradient_checkpointing={str(args.gradient_checkpointing).lower()}",
        f"output_dir={output_dir}",
        "overwrite=true",
        "plot=false",
    ]
    if case == "ppo":
        return [
            "task=ppo",
            f"model.name_or_path={prepared['sft']}",
            f"task.reward_model.checkpoint_path={prepared['rm']}",
            "data=jsonl",
            f"data.path={prepared['prompt_rows']}",
            "data.layout=prompt_only",
            f"task.response_length={PPO_RESPONSE_TOKENS}",
            *common,
        ]
    sft = [
        "task=sft",
        f"model.name_or_path={prepared['base']}",
        "data=jsonl",
        f"data.path={prepared['sft_rows']}",
        "data.layout=sft",
        f"data.max_length={args.seq_len}",
        "injection=dense_lora",
        *common,
    ]
    return [*sft, "task.full_parameter=true"] if case == "full" else sft


def launch_command(launch: str, report_dir: Path, forge_overrides: list[str], module: str) -> list[str]:
    """The command of one launch; `module` is benchmarks._rss_wrapper (measured) or forge_trl (what users run)."""
    head = [sys.executable, "-m", module]
    tail = [str(report_dir)] if module != "forge_trl" else []
    if launch == "1proc":
        return [*head, *tail, *forge_overrides]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH_CONFIGS[launch])]
    return [*launcher, "--num_processes", str(PROCESSES[launch]), "-m", module, *tail, *forge_overrides]


def user_command(launch: str, forge_overrides: list[str]) -> str:
    """The same launch as a user types it (relative config path, `accelerate launch`, `python -m forge_trl`)."""
    if launch == "1proc":
        head = ["OMP_NUM_THREADS=1", "python", "-m", "forge_trl"]
    else:
        config = LAUNCH_CONFIGS[launch].relative_to(ROOT)
        head = ["OMP_NUM_THREADS=1", "accelerate", "launch", "--config_file", str(config), "-m", "forge_trl"]
    return " ".join(shlex.quote(part) if i >= len(head) else part for i, part in enumerate([*head, *forge_overrides]))


# ------------------------------------------------------------------------------------------------ one launch
def estimate_gib(case: str, launch: str, w_gib: float, measured: dict) -> float:
    """Total resident memory a launch may need (all its processes), for the pre-launch check."""
    one = measured.get((case, "1proc"))
    if launch == "ddp" and one:
        per_process = one + w_gib  # the 1-process peak plus DDP's bucket copy of the gradients
    else:
        per_process = WEIGHT_COPIES[(case, launch)] * w_gib + OVERHEAD_GIB
    return PROCESSES[launch] * per_process


def child_env(extra: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", TRL_EXPERIMENTAL_SILENCE="1", **extra)
    env.pop("ACCELERATE_USE_CPU", None)  # forge picks the CPU backend itself, as in a user's launch
    return env


def _hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def run_launch(cmd: list[str], log_path: Path, what: str, guard_gib: float, extra_env: dict) -> dict:
    """Run one launch in its own process group with its output in `log_path`, stopping it if MemAvailable falls
    below `guard_gib`. Returns exit status, wall time, the lowest MemAvailable seen and the launcher's VmHWM."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"{what}: {' '.join(cmd)}  (log: {log_path})")
    started = time.perf_counter()
    lowest, launcher_hwm, stopped = mem_available_gib(), None, None
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(extra_env), start_new_session=True
        )
        while proc.poll() is None:
            time.sleep(0.5)
            available = mem_available_gib()
            lowest = min(lowest, available)
            launcher_hwm = _hwm_kib(proc.pid) or launcher_hwm
            if available < guard_gib and stopped is None:
                stopped = f"stopped: MemAvailable fell to {available:.2f} GiB (guard {guard_gib} GiB)"
                log(f"{what}: {stopped}")
                os.killpg(proc.pid, signal.SIGTERM)  # the launch's own process group (start_new_session)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    wall = time.perf_counter() - started
    log(f"{what}: exit {proc.returncode} after {wall:.0f}s (lowest MemAvailable {lowest:.1f} GiB)")
    return dict(
        exit=proc.returncode,
        wall_s=round(wall, 1),
        lowest_mem_available_gib=round(lowest, 2),
        launcher_hwm_kib=launcher_hwm,
        stopped=stopped,
    )


def read_reports(report_dir: Path) -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(report_dir.glob("rank*.json"))]


def first_error(reports: list[dict], log_path: Path) -> str:
    for r in reports:
        if r.get("error"):
            return f"rank {r['rank']}: {r['error']}"
    lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "forge_trl:" in line]
    return (errors or lines or ["(no output)"])[-1][:500]


def measure(case: str, launch: str, args, prepared: dict, workdir: Path, measured: dict) -> dict:
    key = f"{case}-{launch}"
    out_dir, report_dir, log_path = workdir / "runs" / key, workdir / "reports" / key, workdir / "logs" / f"{key}.log"
    forge_overrides = overrides(case, args, prepared, out_dir)
    result: dict = dict(
        case=case,
        launch=launch,
        processes=PROCESSES[launch],
        command=user_command(launch, forge_overrides),
        measured_command=" ".join(launch_command(launch, report_dir, forge_overrides, "benchmarks._rss_wrapper")),
    )
    w_gib = prepared["weight_bytes"] / GIB
    need, available = estimate_gib(case, launch, w_gib, measured), mem_available_gib()
    result.update(estimate_gib=round(need, 1), mem_available_gib=round(available, 1))
    if need > available - args.reserve_gib:
        result["status"] = (
            f"skipped: estimated {need:.1f} GiB for {PROCESSES[launch]} process(es), {available:.1f} GiB available "
            f"(reserve {args.reserve_gib} GiB)"
        )
        log(f"{key}: {result['status']}")
        return result
    shutil.rmtree(report_dir, ignore_errors=True)
    cmd = launch_command(launch, report_dir, forge_overrides, "benchmarks._rss_wrapper")
    result.update(run_launch(cmd, log_path, key, args.guard_gib, args.child_env))
    reports = read_reports(report_dir)
    result["ranks"] = reports
    if result["exit"] == 0 and len(reports) == PROCESSES[launch] and all(r["ok"] for r in reports):
        result["status"] = "ok"
        result["peak_kib"] = [r["ru_maxrss_kib"] for r in reports]
        if launch == "1proc":
            measured[(case, "1proc")] = reports[0]["ru_maxrss_kib"] * KIB / GIB
        result["train_runtime_s"] = train_runtime(out_dir)
    else:
        result["status"] = result.get("stopped") or f"failed: {first_error(reports, log_path)}"
        log(f"{key}: {result['status']}")
    if not args.keep_outputs:
        shutil.rmtree(out_dir / "final", ignore_errors=True)  # a full-parameter final/ is 2 GiB per run
    return result


def train_runtime(out_dir: Path) -> float | None:
    """The trainer's own `train_runtime` (seconds from training's start to its end) from forge's metrics.jsonl."""
    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    runtime = [r["train_runtime"] for r in records if "train_runtime" in r]
    return round(float(runtime[-1]), 1) if runtime else None


# ------------------------------------------------------------------------------------------------ report
def gib(kib: float) -> str:
    return f"{kib * KIB / GIB:.2f}"


def peak_phase(report: dict) -> str:
    """The phase mark by which the process's high-water mark was reached (within 16 MiB): its peak was set
    between that mark and the one before it."""
    top = report.get("ru_maxrss_kib", 0)
    for mark in report.get("phases", []):
        if mark["hwm_kib"] >= top - 16 * KIB:
            return mark["label"]
    return "?"


def table(results: list[dict]) -> str:
    one = {r["case"]: max(r["peak_kib"]) for r in results if r["launch"] == "1proc" and r.get("status") == "ok"}
    rows = []
    for r in results:
        if r.get("status") != "ok":
            rows.append((r["case"], r["launch"], r["processes"], "–", "–", "–", r.get("status", "?")))
            continue
        peaks = r["peak_kib"]
        ratio = f"{max(peaks) / one[r['case']]:.2f}x" if r["case"] in one else "–"
        phases = [peak_phase(rep) for rep in r["ranks"]]
        where = phases[0] if len(set(phases)) == 1 else " / ".join(phases)
        rows.append(
            (r["case"], r["launch"], r["processes"], " / ".join(gib(p) for p in peaks), gib(sum(peaks)), ratio, where)
        )
    return harness.markdown_table(
        (
            "case",
            "launch",
            "processes",
            "peak RSS per process (GiB, rank 0 / 1)",
            "sum (GiB)",
            "max process / 1-process peak",
            "peak reached by (phase mark)",
        ),
        rows,
    )


def phase_table(result: dict) -> str:
    """Each rank's RSS and high-water mark at the phase marks of one launch."""
    ranks = result["ranks"]
    by_label = [{m["label"]: m for m in rep["phases"]} for rep in ranks]
    rows = []
    for label in [m["label"] for m in ranks[0]["phases"]]:
        marks = [marks_of_rank.get(label) for marks_of_rank in by_label]
        rows.append((label, *(cell(m) for m in marks)))
    heading = "RSS (of it mapped files) / peak so far (GiB)"
    return harness.markdown_table(("phase", *(f"rank {r['rank']}: {heading}" for r in ranks)), rows)


def cell(mark: dict | None) -> str:
    if mark is None:
        return "–"
    files = f" ({gib(mark['file_kib'])})" if "file_kib" in mark else ""
    return f"{gib(mark['rss_kib'])}{files} / {gib(mark['hwm_kib'])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer (PPO) steps per run")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--launches", nargs="+", default=list(LAUNCHES), choices=LAUNCHES)
    parser.add_argument("--vocab", default="qwen3", choices=list(VOCABS), help="the model's vocabulary (see above)")
    parser.add_argument("--batch", type=int, default=2, help="examples (PPO: prompts) per process and step")
    parser.add_argument("--seq-len", type=int, default=128, help="SFT rows are cut to this many tokens")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="task.gradient_checkpointing=true")
    parser.add_argument("--workdir", default="outputs/fsdp_memory", help="results, reports, logs, runs")
    parser.add_argument(
        "--models-dir", help="where the base model, rows and PPO checkpoints are built or reused (default: --workdir)"
    )
    parser.add_argument("--reserve-gib", type=float, default=1.5, help="memory left to other jobs by the check")
    parser.add_argument("--guard-gib", type=float, default=0.75, help="stop a launch below this MemAvailable")
    parser.add_argument(
        "--child-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the launches, e.g. MALLOC_MMAP_THRESHOLD_=1048576 to see glibc's share",
    )
    parser.add_argument("--keep-outputs", action="store_true", help="keep each run's final/ (2 GiB when full)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if any("=" not in item for item in args.child_env):
        parser.error("--child-env takes KEY=VALUE items")
    args.child_env = dict(item.split("=", 1) for item in args.child_env)

    started = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")  # preparation runs in this process too
    import torch

    torch.set_num_threads(1)
    prepared = prepare(args, Path(args.models_dir).resolve() if args.models_dir else workdir)
    log(f"model {prepared['base']}: {prepared['weight_bytes'] / GIB:.2f} GiB of fp32 weights")
    measured: dict = {}
    results = []
    for case in args.cases:
        for launch in CASE_LAUNCHES[case]:
            if launch in args.launches:
                results.append(measure(case, launch, args, prepared, workdir, measured))

    machine = dict(
        line=harness.machine_line(),
        nproc=os.cpu_count(),
        mem_total_gib=round(int(Path("/proc/meminfo").read_text().split()[1]) * KIB / GIB, 1),
        platform=platform.platform(),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    settings = dict(
        steps=args.steps,
        batch_per_process=args.batch,
        seq_len=args.seq_len,
        vocab=args.vocab,
        weight_gib=round(prepared["weight_bytes"] / GIB, 3),
        gradient_checkpointing=args.gradient_checkpointing,
        child_env=args.child_env,
        omp_num_threads=1,
        precision="fp32",
        target_full_fsdp2_over_1proc=TARGET,
    )
    (workdir / "results.json").write_text(
        json.dumps(dict(machine=machine, settings=settings, results=results), indent=1), encoding="utf-8"
    )
    print(machine["line"])
    print(f"settings: {json.dumps(settings)}")
    print()
    print(table(results))
    full = {r["launch"]: r for r in results if r["case"] == "full" and r.get("status") == "ok"}
    if "1proc" in full and "fsdp2" in full:
        ratio = max(full["fsdp2"]["peak_kib"]) / max(full["1proc"]["peak_kib"])
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(
            f"\nfull-parameter SFT: FSDP2 per-process peak / 1-process peak = {ratio:.2f}x "
            f"(target {TARGET}x): {verdict}"
        )
    for r in results:
        if r.get("status") == "ok":
            print(f"\n{r['case']} / {r['launch']} ({r['wall_s']:.0f} s), RSS by phase:\n")
            print(phase_table(r))
    for r in results:
        if r.get("status") != "ok":
            print(f"\n{r['case']} / {r['launch']}: {r.get('status')}\n  command: {r['command']}")
    print(f"\ntotal runtime: {time.perf_counter() - started:.0f}s (results in {workdir / 'results.json'})")


if __name__ == "__main__":
    main()
