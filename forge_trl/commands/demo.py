"""`python -m forge_trl.demo` (make demo): pretrain -> SFT -> ORPO on the embedded tiny model and demo suite,
then a before/after table on the held-out split and an HTML report of the three runs (`<out>/report.html`).

Each stage is an ordinary forge_trl run, composed from the same config groups as the command line (the
equivalent command is printed), chained through `final/`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from forge_trl.commands.args import FlagParser
from forge_trl.commands.pipeline import DEMO_RECIPE, STAGE_DATA
from forge_trl.commands.recipes import load_recipe

# The demo is path B with a pretraining stage.
DEMO_STAGES = ("pretrain", "sft", "orpo")


def demo_stages() -> list[tuple[str, list[str]]]:
    """(stage, overrides) on conf/recipe/demo.yaml: the tiny model starts from random weights, so it needs larger
    learning rates than the task defaults, which follow the usual recipes for real models."""
    recipe = load_recipe(DEMO_RECIPE)
    return [(name, [f"task={name}", f"data={STAGE_DATA[name][0]}", *recipe[name]]) for name in DEMO_STAGES]


def run_stage(name: str, overrides: list[str], out_root: Path, parent: Path | None) -> Path:
    from forge_trl.commands.compose import compose
    from forge_trl.train import run

    args = [*overrides, f"output_dir={out_root / name}", "overwrite=true", "task.logging_steps=20"]
    if parent is not None:
        args.append(f"model.name_or_path={parent}")
    print(f"\n=== {name}: python -m forge_trl {' '.join(args)}", flush=True)
    return run(compose(args))


def evaluate(checkpoints: dict[str, Path], limit: int | None) -> tuple[list[dict], int, int]:
    """One row per stage on the held-out split; also returns the numbers of prompts and pairs used."""
    from forge_trl.bench.metrics import generate, preference_accuracy
    from forge_trl.data.demo_suite import answer_first, check_answer, ensure_demo_suite
    from forge_trl.data.rows import read_rows
    from forge_trl.models.loading import load_for_inference

    files = ensure_demo_suite()
    sft_rows = [row.data for row in read_rows(files["sft_heldout"])]
    pref_rows = [row.data for row in read_rows(files["preference_heldout"])]
    if limit:
        sft_rows, pref_rows = sft_rows[:limit], pref_rows[:limit]
    table = []
    for stage, path in checkpoints.items():
        model, tokenizer, _ = load_for_inference(str(path))
        responses = generate(model, tokenizer, sft_rows)  # whole rows: a `system` field is part of the prompt
        table.append(
            {
                "stage": stage,
                "checker_accuracy": (
                    sum(check_answer(r, row["answer"]) for r, row in zip(responses, sft_rows)) / len(sft_rows)
                ),
                "answer_first": sum(answer_first(r, row["answer"]) for r, row in zip(responses, sft_rows))
                / len(sft_rows),
                "preference_accuracy": preference_accuracy(model, tokenizer, pref_rows),
                "example": f"{sft_rows[0]['prompt']} -> {responses[0]!r}",
            }
        )
    return table, len(sft_rows), len(pref_rows)


def print_table(table: list[dict], n_sft: int, n_pref: int) -> None:
    print(f"\nHeld-out evaluation ({n_sft} prompts, {n_pref} preference pairs)\n")
    print("| stage | checker accuracy | answer comes first | preference accuracy | example |")
    print("|---|---|---|---|---|")
    for row in table:
        print(
            f"| {row['stage']} | {row['checker_accuracy']:.1%} | {row['answer_first']:.1%} | "
            f"{row['preference_accuracy']:.1%} | {row['example']} |"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = FlagParser("demo", description=__doc__.split("\n\n")[0], example="forge-trl demo --eval-limit 40")
    parser.add_argument("--out", default="outputs/demo", help="directory for the three runs")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on at most N held-out rows")
    args = parser.parse_args(argv)
    from forge_trl.commands.console import LOG_FILE, setup_logging

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    out_root = Path(args.out)
    setup_logging(log_file=out_root / LOG_FILE)
    started = time.time()
    checkpoints: dict[str, Path] = {}
    parent = None
    for name, overrides in demo_stages():
        parent = run_stage(name, overrides, out_root, parent)
        checkpoints[name] = parent
    trained = time.time() - started
    table, n_sft, n_pref = evaluate(checkpoints, args.eval_limit)
    print_table(table, n_sft, n_pref)
    print(f"\ntraining {trained:.0f} s, with evaluation {time.time() - started:.0f} s; checkpoints under {out_root}/")
    summary = {"stages": table, "train_seconds": trained, "total_seconds": time.time() - started}
    (out_root / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    from forge_trl.report import write_report

    print(f"report: {write_report(out_root)}")
    return summary


if __name__ == "__main__":
    main()
