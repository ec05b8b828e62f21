"""The harness every benchmark in this package shares: measured runs as child processes, waiting for an idle
machine, step timing, peak memory and markdown tables. Standard library only at import; torch, transformers and
forge_trl are imported inside the functions that need them.

A benchmark runs from the repository root as `python -m benchmarks.<name>`, and its measured runs are children
started the same way (`python -m benchmarks.<name> --child KIND --spec FILE`), one process per run, so that each
peak is that run's alone.

| what                | API                                                                                         |
|---------------------|---------------------------------------------------------------------------------------------|
| log line            | `log(message)` (stderr, with the time)                                                      |
| machine load        | `load_sample()`, `cores_between(a, b)`, `wait_until_idle(max_wait_s)`, `OTHER_LOAD_LIMIT`   |
| subprocesses        | `run_logged(cmd, log_path, what) -> Finished(wall_s, peak_rss)`; `RunFailed` on exit != 0   |
| measured children   | parent: `run_child(module, kind, spec, key, workdir, ...)`, `add_idle_arguments(parser)`;   |
|                     | both: `parse_args_or_run_child(parser, kinds, child)`                                       |
| step timing         | `step_timer(cuda, profiler)` (a TrainerCallback), `count_batch_tokens(trainer, timer)`,     |
|                     | `intervals_after_warmup`, `summarize`, `count_real_tokens`                                  |
| report              | `markdown_table(headers, rows)`, `machine_line()`, `GIB`, `MIB`                             |
| forge runs          | `forge_train(overrides, ...)` (in this process), `forge_stage(overrides, output_dir, logs)` |
|                     | (a child, reused), `demo_stage_overrides(task, ...)`                                        |
| forge's defaults    | `schema_default(schema, name)`, `dense_lora_shape()`                                        |
| models              | `build_random_qwen3(target, arch, ...)`, `save_model_dir(model, tokenizer, target)`         |

Peak memory is the child's `ru_maxrss` (its resident high-water mark over its whole life, model loading included),
which the parent reads when it reaps the child (`os.wait4`); on CUDA a child reports
`torch.cuda.max_memory_allocated()` itself, as `peak_bytes`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]  # the repository root: where children run
GIB = 1024**3
MIB = 1024**2
OTHER_LOAD_LIMIT = 0.25  # cores used by other processes above which a timing counts as disturbed


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ machine load
def machine_busy_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot (user, system, irq; not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_sample() -> tuple[float, float, float]:
    """(wall clock, the machine's busy CPU seconds, this process's CPU seconds), for `cores_between`."""
    return time.perf_counter(), machine_busy_seconds(), own_cpu_seconds()


def cores_between(start: tuple[float, float, float], end: tuple[float, float, float]) -> dict:
    """Cores this process and all other processes used on average between two `load_sample()`s."""
    wall, busy, own = (b - a for a, b in zip(start, end))
    return dict(own_cores=own / wall, other_cores=max(0.0, busy - own) / wall)


def wait_until_idle(max_wait_s: float, threshold_cores: float = 0.1, window_s: float = 5.0) -> float:
    """Wait until other processes use less than `threshold_cores` cores (on a shared 2-core machine a concurrent
    job slows torch's threads down many times over). Returns the load seen last, in cores."""
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


# ------------------------------------------------------------------------------------------------ subprocesses
class RunFailed(RuntimeError):
    """A child exited with a non-zero status; the message ends with the tail of its log."""


@dataclass
class Finished:
    wall_s: float
    peak_rss: int  # bytes: the child's ru_maxrss


def run_logged(cmd: Sequence, log_path: Path, what: str) -> Finished:
    """Run `cmd` from the repository root with its output in `log_path`; its wall time and peak RSS."""
    cmd = [str(c) for c in cmd]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"{what}: {' '.join(cmd)}  (log: {log_path})")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps the child with its own resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-60:]
        raise RunFailed(f"{what} failed (exit {proc.returncode}); last lines of {log_path}:\n" + "\n".join(tail))
    log(f"{what}: done in {elapsed:.0f}s")
    return Finished(wall_s=elapsed, peak_rss=usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux


# ------------------------------------------------------------------------------------------------ children
def add_idle_arguments(parser: argparse.ArgumentParser, optional: bool) -> None:
    """--max-wait and --retries for `run_child`; with `optional`, also --wait-idle (otherwise runs always wait)."""
    when = " (with --wait-idle)" if optional else ""
    if optional:
        parser.add_argument(
            "--wait-idle",
            action="store_true",
            help="wait for other processes to go idle before each run; repeat disturbed runs",
        )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=900,
        help=f"seconds to wait for other processes to go idle before each measured run{when}",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help=f"measure again when other processes disturbed the timed steps, this many times{when}",
    )


def parse_args_or_run_child(
    parser: argparse.ArgumentParser, kinds: Sequence[str], child: Callable[[str, dict], dict]
) -> argparse.Namespace | None:
    """Parse the command line, which may be a child's (`--child KIND --spec FILE`, as `run_child` starts it). In
    a child, run `child(kind, spec)`, write its result (plus the torch version and thread count) where the parent
    reads it, and return None; otherwise return the parsed arguments."""
    parser.add_argument("--child", choices=list(kinds), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        return args
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    result = child(args.child, spec)
    import torch

    result.setdefault("torch", torch.__version__)
    result.setdefault("threads", torch.get_num_threads())
    Path(spec["result"]).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return None


def run_child(
    module: str,
    kind: str,
    spec: dict,
    key: str,
    workdir: Path,
    *,
    python: str = sys.executable,
    wait_idle: bool = True,
    max_wait: float = 900,
    retries: int = 1,
) -> dict:
    """Run `python -m <module> --child <kind>` on `spec` and return the result the child wrote, plus
    `process_wall_s`, `attempts`, `peak_rss` (the child's ru_maxrss, bytes) and `peak_bytes` (peak_rss unless
    the child reported its GPU peak). Spec, result and log files are `<workdir>/specs/<key>*.json` and
    `<workdir>/logs/<key>.log`.

    With `wait_idle`, each attempt first waits (up to `max_wait` s) for other processes to go idle, and a run
    during which they used more than OTHER_LOAD_LIMIT cores while it was timed is repeated up to `retries` times
    (the last result is kept). Raises RunFailed when the child fails."""
    spec_dir = workdir / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = spec_dir / f"{key}.json", spec_dir / f"{key}.result.json"
    spec_file.write_text(json.dumps(dict(spec, result=str(result_file)), indent=1), encoding="utf-8")
    cmd = [python, "-m", module, "--child", kind, "--spec", spec_file]
    attempts = retries + 1 if wait_idle else 1
    result: dict = {}
    for attempt in range(attempts):
        result_file.unlink(missing_ok=True)
        if wait_idle:
            load = wait_until_idle(max_wait)
            if load >= OTHER_LOAD_LIMIT:
                log(f"the machine is still busy ({load:.1f} cores used by others); measuring anyway")
        done = run_logged(cmd, workdir / "logs" / f"{key}.log", key)
        result = json.loads(result_file.read_text(encoding="utf-8"))
        result.update(process_wall_s=done.wall_s, attempts=attempt + 1, peak_rss=done.peak_rss)
        result.setdefault("peak_bytes", done.peak_rss)
        if result.get("other_cores", 0.0) < OTHER_LOAD_LIMIT:
            break
        log(
            f"{key}: other processes used {result['other_cores']:.2f} cores while timed"
            + ("; measuring again" if attempt + 1 < attempts else "; keeping this result")
        )
    return result


# ------------------------------------------------------------------------------------------------ step timing
def intervals_after_warmup(step_ends: list[float], warmup: int) -> list[float]:
    """Intervals between consecutive step ends, without the first `warmup` of them (step 1 has no interval)."""
    intervals = [b - a for a, b in zip(step_ends, step_ends[1:])]
    return intervals[warmup:] if len(intervals) > warmup else intervals[-1:]


def summarize(step_ends: list[float], tokens_at_end: list[int], warmup: int) -> dict:
    """Median step time and real tokens/s over the steps after warm-up."""
    timed = intervals_after_warmup(step_ends, warmup)
    first = len(step_ends) - 1 - len(timed)  # index of the step end that opens the timed window
    out = dict(
        step_seconds=timed,
        median_step_s=statistics.median(timed) if timed else float("nan"),
        timed_steps=len(timed),
        timed_s=sum(timed),
    )
    if tokens_at_end and timed:
        tokens = tokens_at_end[-1] - tokens_at_end[first]
        out.update(tokens_timed=tokens, tokens_per_s=tokens / sum(timed))
    return out


def count_real_tokens(batch: dict) -> int:
    """Real (non-pad) tokens of one collated batch: attention-mask sums (a prompt mask is not counted on top of
    the prompt+completion masks that contain it); a batch without masks (padding-free) counts all its ids."""
    masks = [k for k in batch if k.endswith("attention_mask") and not k.startswith("prompt_")]
    if masks:
        return int(sum(int(batch[k].sum()) for k in masks))
    return int(sum(batch[k].numel() for k in batch if k.endswith("input_ids")))


def step_timer(cuda: bool = False, profiler=None):
    """A TrainerCallback that samples the load (`load_sample`) at the end of every step, after a CUDA sync when
    `cuda`, so that a step end is a real end. With a cProfile `profiler` it profiles from the start of training to
    the end of the last step. `count_batch_tokens` fills its `batch_tokens`; `summary()` turns it all into
    step times, tokens/s and the cores used while timed."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.samples: list[tuple[float, float, float]] = []
            self.batch_tokens: list[int] = []  # real tokens of each collated training batch, in order
            self.batches_per_step = 1

        @property
        def step_ends(self) -> list[float]:
            return [s[0] for s in self.samples]

        def on_train_begin(self, args, state, control, **kwargs):
            self.batches_per_step = args.gradient_accumulation_steps
            if profiler is not None:
                profiler.enable()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                import torch

                torch.cuda.synchronize()
            self.samples.append(load_sample())
            if profiler is not None and state.global_step >= state.max_steps:
                profiler.disable()

        def tokens_at_end(self) -> list[int]:
            """Real tokens trained on up to each step end (the loader collates ahead; steps take batches in order)."""
            per_step = self.batches_per_step
            return [sum(self.batch_tokens[: (i + 1) * per_step]) for i in range(len(self.samples))]

        def summary(self, warmup: int, count_tokens: bool = True) -> dict:
            out = summarize(self.step_ends, self.tokens_at_end() if count_tokens else [], warmup)
            out.update(cores_between(self.samples[-1 - out["timed_steps"]], self.samples[-1]))
            return out

    return StepTimer()


class _CountingCollator:
    """A data collator that records the real tokens of each batch it returns; everything else is the wrapped one."""

    def __init__(self, collate, sink: list[int]):
        self._collate, self._sink = collate, sink

    def __call__(self, features):
        batch = self._collate(features)
        self._sink.append(count_real_tokens(batch))
        return batch

    def __getattr__(self, name):
        return getattr(self._collate, name)


def count_batch_tokens(trainer, timer) -> None:
    """Count the real tokens of every batch `trainer` collates into `timer.batch_tokens`, by wrapping its data
    collator (a public Trainer attribute, read when training starts). The same for forge and plain TRL runs."""
    trainer.data_collator = _CountingCollator(trainer.data_collator, timer.batch_tokens)


# ------------------------------------------------------------------------------------------------ report
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


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
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"machine: {cpu}; {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
        f"torch {torch.__version__}; {platform.platform()}; Python {platform.python_version()}{gpu}"
    )


# ------------------------------------------------------------------------------------------------ forge runs, models
def schema_default(schema: type, name: str):
    """The default of field `name` of a forge schema dataclass: the schema is the one place defaults live, so
    benchmarks read them instead of copying them (also for schemas that refuse an empty instance)."""
    for f in dataclasses.fields(schema):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(f"{schema.__name__} has no field {name!r} with a default")


def dense_lora_shape() -> dict:
    """forge's default dense LoRA (DenseLoraConfig): rank, alpha, dropout and target projections."""
    from forge_trl.injection.dense_lora import DenseLoraConfig

    lora = DenseLoraConfig()
    return dict(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, targets=list(lora.target_keywords))


def demo_stage_overrides(task: str, *extra: str) -> list[str]:
    """One stage of forge's demo recipe (its demo data group and conf/recipe/demo.yaml's settings, as `make
    pipelines` trains the tiny model), plus `extra` overrides (later keys win)."""
    from forge_trl.commands.pipeline import DEMO_RECIPE, STAGE_DATA
    from forge_trl.commands.recipes import load_recipe

    return [f"task={task}", f"data={STAGE_DATA[task][0]}", *load_recipe(DEMO_RECIPE)[task], *extra]


def forge_train(overrides: list[str], callbacks: Sequence = (), trainer_hook=None, verbose: bool = True) -> Path:
    """One forge run in this process (`forge_trl.train.run`, with its public `extra_callbacks` and `trainer_hook`);
    returns its final/."""
    import logging

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from forge_trl.commands.compose import compose
    from forge_trl.commands.console import quiet_third_party_logs
    from forge_trl.train import run

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet_third_party_logs()
    return run(compose(overrides), extra_callbacks=tuple(callbacks), trainer_hook=trainer_hook)


def forge_stage(overrides: list[str], output_dir: Path, logs: Path) -> Path:
    """One forge run as a child (`python -m forge_trl ...`); an existing final/ (written atomically, so complete)
    from an earlier run is reused."""
    final = output_dir / "final"
    if final.is_dir():
        log(f"reusing {final}")
        return final
    cmd = [sys.executable, "-m", "forge_trl", *overrides, f"output_dir={output_dir}", "overwrite=true", "plot=false"]
    run_logged(cmd, logs / f"{output_dir.parent.name}-{output_dir.name}.log", f"forge {overrides[0]}")
    return final


def save_model_dir(model, tokenizer, target: Path) -> None:
    """Save a transformers model and its tokenizer as a model directory, atomically (complete or absent)."""
    import shutil

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)


def build_random_qwen3(target: Path, arch: dict, vocab_size: int | None = None, bf16: bool = False) -> Path:
    """A random-init Qwen3 of architecture `arch` (seed 0) with the tiny tokenizer's token ids, saved once as a
    model directory. `vocab_size`: the embedding size (default: the tiny tokenizer's)."""
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from forge_trl.models.loading import load_tokenizer, resolve_source

    tokenizer = load_tokenizer(resolve_source("forge-tiny").tokenizer_path)
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=vocab_size or len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **arch,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if bf16 else torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    save_model_dir(model, tokenizer, target)
    log(f"built {target}: {sum(p.numel() for p in model.parameters()):,} parameters")
    return target
