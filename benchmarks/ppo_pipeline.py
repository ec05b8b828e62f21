"""Path C on the demo suite: pretrain -> SFT -> RM -> PPO, then held-out RM score, KL and checker accuracy.

    python -m benchmarks.ppo_pipeline [--out outputs/ppo_pipeline] [--base <pretrained final/>] [--ppo-epochs 3]

Every stage is an ordinary forge run on the demo recipe (conf/recipe/demo.yaml, as `make pipelines` trains it; the
commands are printed); --ppo-epochs and --ppo-lr change the PPO stage's. The table compares the SFT policy with the
PPO policy on the held-out prompts, for greedy and for sampled (temperature 1) responses: the mean reward-model
score, the checker accuracy, the response length, and the policy's KL to the SFT policy (sum over response tokens of
log pi - log pi_sft on the policy's own responses, averaged; what PPO penalises).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from benchmarks import harness


def sequence_logps(model, tokenizer, prompts: list[str], responses: list[str]) -> list[float]:
    """Sum of log-probs of each response given its prompt, as the chat template renders them."""
    out = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses):
            messages = [{"role": "user", "content": prompt}]
            prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            full_text = tokenizer.apply_chat_template(
                messages + [{"role": "assistant", "content": response}], tokenize=False
            )
            prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([tokenizer(full_text, add_special_tokens=False)["input_ids"]])
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
            picked = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            out.append(float(picked[len(prompt_ids) - 1 :].sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/ppo_pipeline")
    parser.add_argument("--base", default=None, help="a pretrained final/ to start from (default: pretrain here)")
    parser.add_argument("--ppo-epochs", type=float, help="PPO epochs (default: the demo recipe's)")
    parser.add_argument("--ppo-lr", type=float, help="PPO learning rate (default: the demo recipe's)")
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from forge_trl.bench.metrics import generate, reward_scores
    from forge_trl.commands.console import quiet_third_party_logs
    from forge_trl.commands.demo import run_stage
    from forge_trl.data.demo_suite import check_answer, ensure_demo_suite
    from forge_trl.data.rows import read_rows
    from forge_trl.models.loading import load_for_inference
    from forge_trl.rl.reward import load_reward_model

    quiet_third_party_logs()
    out = Path(args.out)
    started = time.time()
    base = Path(args.base) if args.base else run_stage("pretrain", harness.demo_stage_overrides("pretrain"), out, None)
    sft = run_stage("sft", harness.demo_stage_overrides("sft"), out, base)
    rm = run_stage("rm", harness.demo_stage_overrides("rm"), out, sft)
    ppo_changes = [
        *([f"task.num_train_epochs={args.ppo_epochs}"] if args.ppo_epochs else []),
        *([f"task.learning_rate={args.ppo_lr}"] if args.ppo_lr else []),
    ]
    ppo = run_stage(
        "ppo", harness.demo_stage_overrides("ppo", f"task.reward_model.checkpoint_path={rm}", *ppo_changes), out, sft
    )
    trained = time.time() - started

    rows = [r.data for r in read_rows(ensure_demo_suite()["sft_heldout"])]
    prompts = [r["prompt"] for r in rows]
    reward_model, reward_tokenizer = load_reward_model(str(rm))
    policies = {name: load_for_inference(str(path))[:2] for name, path in (("sft", sft), ("ppo", ppo))}
    sft_model, tokenizer = policies["sft"]
    table = []
    # Greedy decoding shows the policy's single best answer; sampling at temperature 1 is what PPO optimises.
    for decoding, temperature, repeats in (("greedy", None, 1), ("sampled, T=1, 4 per prompt", 1.0, 4)):
        eval_prompts, eval_rows = prompts * repeats, rows * repeats
        for name, (model, _) in policies.items():
            torch.manual_seed(0)
            responses = generate(model, tokenizer, eval_prompts, max_new_tokens=16, temperature=temperature)
            scores = reward_scores(reward_model, reward_tokenizer, eval_prompts, responses)
            kl = [
                a - b
                for a, b in zip(
                    sequence_logps(model, tokenizer, eval_prompts, responses),
                    sequence_logps(sft_model, tokenizer, eval_prompts, responses),
                )
            ]
            table.append(
                {
                    "decoding": decoding,
                    "policy": name,
                    "rm_score": sum(scores) / len(scores),
                    "checker": sum(check_answer(r, row["answer"]) for r, row in zip(responses, eval_rows))
                    / len(eval_rows),
                    "length": sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses)
                    / len(responses),
                    "kl_to_sft": sum(kl) / len(kl),
                    "example": f"{eval_prompts[1]!r} -> {responses[1]!r}",
                }
            )

    print(f"\nHeld-out prompts: {len(prompts)}; training {trained:.0f} s\n")
    print(
        harness.markdown_table(
            (
                "decoding",
                "policy",
                "mean RM score",
                "checker accuracy",
                "response tokens",
                "KL to SFT (nats/response)",
                "example",
            ),
            [
                (
                    row["decoding"],
                    row["policy"],
                    f"{row['rm_score']:.3f}",
                    f"{row['checker']:.1%}",
                    f"{row['length']:.1f}",
                    f"{row['kl_to_sft']:.3f}",
                    row["example"],
                )
                for row in table
            ],
        )
    )
    (out / "ppo_pipeline_summary.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
