"""Held-out accuracy of dense_lora, mixture_lora and moe_expert_lora on a multi-domain, multi-style SFT mix.

The demo suite's four task families (add, opposite, next, color) each get their own answer style, so one
adapter must learn four output formats:

    add       "The sum is 12."        opposite  "Opposite: cold"
    next      "Next comes Tuesday."   color     "Color: blue"

All strategies start from the same briefly pretrained tiny base (the demo's pretrain stage, reused when
present), train on the same rows with the same recipe and a similar number of trainable parameters, and are
scored on held-out items by exact match of the styled answer under greedy decoding.

    python -m benchmarks.quality_injections [--out outputs/quality] [--epochs 3] [--seeds 0 1]

SFT follows the demo recipe (conf/recipe/demo.yaml: learning rate, batch) for --epochs epochs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from benchmarks import harness

STYLES = {
    "add": "The sum is {}.",
    "opposite": "Opposite: {}",
    "next": "Next comes {}.",
    "color": "Color: {}",
}
# Similar trainable-parameter budgets on the tiny Qwen3 (printed in the table).
STRATEGIES = {
    "dense_lora": ["injection=dense_lora", "injection.r=16"],
    "mixture_lora": [
        "injection=mixture_lora",
        "injection.num_experts=4",
        "injection.r=4",
        "injection.top_k=2",
        "injection.aux_loss_coef=0.01",
    ],
    "moe_expert_lora": [
        "injection=moe_expert_lora",
        "injection.num_experts=8",
        "injection.top_k=2",
        "injection.r=2",
        "injection.attn_target_keywords=[q_proj,k_proj,v_proj,o_proj]",
    ],
}


def styled_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {"prompt": r["prompt"], "response": STYLES[r["family"]].format(r["answer"]), "family": r["family"]}
        for r in rows
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/quality")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, help="learning rate (default: the demo recipe's SFT rate)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from forge_trl.bench.metrics import generate
    from forge_trl.commands.console import quiet_third_party_logs
    from forge_trl.commands.demo import run_stage
    from forge_trl.data.demo_suite import ensure_demo_suite
    from forge_trl.models.loading import load_for_inference

    quiet_third_party_logs()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "pretrain" / "final"
    if not base.exists():
        run_stage("pretrain", harness.demo_stage_overrides("pretrain"), out, None)
    files = ensure_demo_suite()
    train_rows = styled_rows(files["sft"])
    heldout = styled_rows(files["sft_heldout"])
    train_file = write_jsonl(out / "styled_train.jsonl", train_rows)

    results = []
    for seed in args.seeds:
        for name, overrides in STRATEGIES.items():
            started = time.time()
            final = run_stage(
                f"{name}-seed{seed}",
                [
                    *harness.demo_stage_overrides(
                        "sft", f"data.path={train_file}", f"task.num_train_epochs={args.epochs}"
                    ),
                    *([f"task.learning_rate={args.lr}"] if args.lr else []),
                    f"seed={seed}",
                    *overrides,
                ],
                out,
                base,
            )
            seconds = time.time() - started
            model, tokenizer, info = load_for_inference(str(final))
            trainable = info.trainable_parameters
            responses = generate(model, tokenizer, [r["prompt"] for r in heldout], max_new_tokens=12)
            hits = [resp.strip() == row["response"] for resp, row in zip(responses, heldout)]
            per_family = {
                fam: sum(h for h, r in zip(hits, heldout) if r["family"] == fam)
                / max(1, sum(r["family"] == fam for r in heldout))
                for fam in STYLES
            }
            results.append(
                {
                    "strategy": name,
                    "seed": seed,
                    "accuracy": sum(hits) / len(hits),
                    "per_family": per_family,
                    "trainable": trainable,
                    "seconds": seconds,
                }
            )
            print(f"{name} seed {seed}: {sum(hits) / len(hits):.1%} ({seconds:.0f} s)", flush=True)

    lr = f"lr {args.lr}" if args.lr else "the demo recipe's lr"
    print(
        f"\n{len(train_rows)} training rows, {len(heldout)} held-out prompts, {args.epochs} epochs, {lr}, "
        f"seeds {args.seeds}\n"
    )
    table = []
    for name in STRATEGIES:
        mine = [r for r in results if r["strategy"] == name]
        table.append(
            (
                name,
                f"{mine[0]['trainable']:,}",
                f"{sum(r['accuracy'] for r in mine) / len(mine):.1%}",
                *(f"{sum(r['per_family'][f] for r in mine) / len(mine):.1%}" for f in STYLES),
                f"{sum(r['seconds'] for r in mine) / len(mine):.0f} s",
            )
        )
    print(
        harness.markdown_table(("strategy", "trainable params", "held-out exact match", *STYLES, "train time"), table)
    )
    (out / "quality_summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
