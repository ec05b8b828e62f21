"""Soak test: a long tiny-model SFT run that samples the process's resident memory as it trains.

    python -m benchmarks.soak_sft                      # 2,000 steps, a sample every 50 (JSON: outputs/soak_sft.json)
    python -m benchmarks.soak_sft --steps 200 --every 20 --warmup 40 --json soak.json

A leak shows as RSS that keeps rising after the warm-up (allocator pools, first checkpoint, lazy imports settle
within the first few hundred steps). The script prints one row per sample and a summary, and writes the samples
and the summary to JSON. It exits 1 when the growth after warm-up exceeds --max-growth (percent), so it can gate
a CI job; the default threshold is generous because RSS on a shared machine moves by a few percent anyway.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness


def rss_mb() -> float:
    """Resident set size of this process in MiB (from /proc; psutil where /proc is absent)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def make_sampler(every: int):
    from transformers import TrainerCallback

    class RssSampler(TrainerCallback):
        """Records (step, seconds since train start, RSS) at step 0 and every `every` optimizer steps."""

        def __init__(self):
            self.samples: list[dict] = []
            self.start = 0.0

        def _sample(self, step: int) -> None:
            row = {"step": step, "seconds": round(time.monotonic() - self.start, 2), "rss_mb": round(rss_mb(), 1)}
            self.samples.append(row)
            print(f"{row['step']:>7} {row['seconds']:>9.1f} {row['rss_mb']:>9.1f}", flush=True)

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()
            print(f"{'step':>7} {'seconds':>9} {'rss_mb':>9}", flush=True)
            self._sample(state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self._sample(state.global_step)

    return RssSampler()


def summarize(samples: list[dict], warmup: int) -> dict:
    after = [s for s in samples if s["step"] >= warmup]
    if len(after) < 2:
        raise SystemExit(f"soak: fewer than two samples after the warm-up of {warmup} steps; lower --warmup")
    base, last = after[0], after[-1]
    return {
        "warmup_steps": warmup,
        "rss_at_warmup_mb": base["rss_mb"],
        "rss_final_mb": last["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "growth_after_warmup_pct": round(100.0 * (last["rss_mb"] - base["rss_mb"]) / base["rss_mb"], 2),
        "growth_after_warmup_mb": round(last["rss_mb"] - base["rss_mb"], 1),
        # The median over sampling intervals after the warm-up: on a shared machine a few intervals stall for
        # reasons outside the run, and the first steps pay for one-off work.
        "seconds_per_step": round(
            statistics.median(
                (b["seconds"] - a["seconds"]) / (b["step"] - a["step"]) for a, b in zip(after, after[1:])
            ),
            4,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--every", type=int, default=50, help="sample RSS every N steps (default 50)")
    parser.add_argument("--warmup", type=int, default=200, help="steps excluded from the growth figure (default 200)")
    parser.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps; 0: none (default 500)")
    parser.add_argument("--max-growth", type=float, default=10.0, help="exit 1 above this growth in %% (default 10)")
    parser.add_argument("--output-dir", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", default="outputs/soak_sft.json", help="where to write samples + summary")
    parser.add_argument("overrides", nargs="*", help="extra forge overrides, e.g. injection=mixture_lora")
    args = parser.parse_args(argv)

    output_dir = args.output_dir or tempfile.mkdtemp(prefix="forge-soak-")  # removed at the end
    sampler = make_sampler(args.every)
    started = time.monotonic()
    harness.forge_train(
        [
            "task=sft",
            "data=demo_sft",
            f"output_dir={output_dir}",
            "overwrite=true",
            "plot=false",
            f"task.max_steps={args.steps}",
            "task.per_device_train_batch_size=4",
            "task.logging_steps=50",
            f"task.save_steps={args.save_steps}",
            "task.save_total_limit=1",
            "+task.trl_args.disable_tqdm=true",
            *args.overrides,
        ],
        callbacks=(sampler,),
        verbose=False,
    )
    summary = summarize(sampler.samples, args.warmup)
    summary.update(steps=args.steps, wall_seconds=round(time.monotonic() - started, 1), overrides=args.overrides)
    if args.output_dir is None:
        shutil.rmtree(output_dir, ignore_errors=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "samples": sampler.samples}, indent=1) + "\n")
    print(
        f"\nRSS {summary['rss_at_warmup_mb']} MiB at step {args.warmup} -> {summary['rss_final_mb']} MiB at step "
        f"{args.steps}: {summary['growth_after_warmup_pct']:+.2f}% ({summary['growth_after_warmup_mb']:+.1f} MiB); "
        f"peak {summary['rss_peak_mb']} MiB; median {summary['seconds_per_step'] * 1000:.0f} ms/step; "
        f"wall {summary['wall_seconds']} s. Samples in {args.json}"
    )
    return 1 if summary["growth_after_warmup_pct"] > args.max_growth else 0


if __name__ == "__main__":
    sys.exit(main())
