"""One forge training process that reports its own memory: benchmarks/fsdp_memory.py launches this module
instead of `forge_trl`, once per process of a launch.

    python -m benchmarks._rss_wrapper REPORT_DIR <forge overrides ...>
    accelerate launch --config_file conf/accelerate/fsdp2.yaml -m benchmarks._rss_wrapper REPORT_DIR <overrides ...>

Each process trains exactly as `python -m forge_trl <overrides>` would (`forge_trl.train.run` on the composed
config, through `harness.forge_train`) and, when it ends (also on failure), writes `REPORT_DIR/rank<R>.json`:

- `rank`, `world_size`, `ru_maxrss_kib`: its own `resource.getrusage(RUSAGE_SELF).ru_maxrss` at exit (the resident
  high-water mark of this process over its whole life; the launcher and torchrun's agent are not in it);
- `phases`: marks along the run, each with the current RSS (`rss_kib`, VmRSS; of it `anon_kib`, RssAnon, and
  `file_kib`, RssFile: pages of mapped files such as memory-mapped safetensors) and the high-water mark so far
  (`hwm_kib`, VmHWM), so that the phase which set the peak can be read off: start, model loaded (+ injection),
  training begins (after the trainer wrapped or sharded the model and built its optimizer), per step after
  backward / after the optimizer / at the step's end (as far as the trainer's callbacks report them), when
  training is over (before final/ is gathered), once final/ is written, and the end;
- `ok`, and `error` (the exception's first line) when the run failed.

The marks come from forge's public hooks only (`train.run`'s `extra_callbacks` and `trainer_hook`), so the run is
exactly forge's.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from benchmarks import harness


def _status_kib() -> dict[str, int]:
    fields = dict(VmRSS="rss_kib", RssAnon="anon_kib", RssFile="file_kib", VmHWM="hwm_kib")
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name = line.split(":", 1)[0]
        if name in fields:
            found[fields[name]] = int(line.split()[1])
    return found


class Marks:
    def __init__(self):
        self.started = time.perf_counter()
        self.items: list[dict] = []

    def __call__(self, label: str) -> None:
        self.items.append(dict(label=label, t_s=round(time.perf_counter() - self.started, 2), **_status_kib()))


def phase_callback(mark: Marks):
    from transformers import TrainerCallback

    class PhaseMarks(TrainerCallback):
        """Marks per optimizer update; a PPO step makes several (num_ppo_epochs x num_mini_batches)."""

        def __init__(self):
            self.update = 0

        def _step(self, state) -> str:
            return f"step {state.global_step + 1}" + (f" update {self.update}" if self.update > 1 else "")

        def on_train_begin(self, args, state, control, **kwargs):
            mark("training begins (model wrapped/sharded, optimizer built)")

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.update += 1
            mark(f"{self._step(state)}: after backward")

        def on_optimizer_step(self, args, state, control, **kwargs):
            mark(f"{self._step(state)}: after optimizer step")

        def on_step_end(self, args, state, control, **kwargs):
            self.update = 0
            mark(f"step {state.global_step}: end")

        def on_train_end(self, args, state, control, **kwargs):
            mark("training over, before gathering final/ weights")

    return PhaseMarks()


def run(report_dir: Path, overrides: list[str]) -> None:
    mark = Marks()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    report = dict(rank=rank, world_size=world, pid=os.getpid(), overrides=overrides, ok=False)
    mark("start")
    try:
        harness.forge_train(
            overrides,
            callbacks=(phase_callback(mark),),
            # Called once the model is loaded and injected and the trainer built, before it wraps or shards it.
            trainer_hook=lambda trainer: mark("model loaded (+ injection), trainer built"),
            verbose=rank == 0,
        )
        mark("final/ written (whole state dict gathered on the main process)")
        report["ok"] = True
    except BaseException as exc:
        text = str(exc).strip()
        report["error"] = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:500]
        raise
    finally:
        mark("end")
        report["phases"] = mark.items
        report["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"rank{rank}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: python -m {__spec__.name if __spec__ else 'benchmarks._rss_wrapper'} REPORT_DIR <overrides>")
    run(Path(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    main()
