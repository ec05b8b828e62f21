"""Held-out metrics computed directly from a model: greedy responses and preference accuracy.

Prompts are rendered with the tokenizer's chat template (when it has one), exactly as training saw them.
"""

from __future__ import annotations

from typing import Sequence

import torch

from forge_trl.data.filters import render_pair


def render_prompt(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
    return prompt


def render_completion(tokenizer, prompt: str, completion: str) -> tuple[str, str]:
    """(prompt text, prompt + completion text) as training rendered them."""
    if getattr(tokenizer, "chat_template", None):
        return render_pair(tokenizer, [{"role": "user", "content": prompt}],
                           [{"role": "assistant", "content": completion}])
    return render_pair(tokenizer, prompt, completion + (tokenizer.eos_token or ""))


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 16, batch_size: int = 32,
             temperature: float | None = None) -> list[str]:
    """Responses to `prompts` (left-padded batches): greedy, or sampled at `temperature` when it is set."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [render_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=temperature is not None,
                temperature=temperature,
                top_k=0 if temperature is not None else None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return outputs


@torch.no_grad()
def mean_completion_logps(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32) -> list[float]:
    """Per-token average log-probability of each completion given its prompt (ORPO's normalisation)."""
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        rendered = [render_completion(tokenizer, p, c) for p, c in chunk]
        prompt_ids = tokenizer([r[0] for r in rendered], add_special_tokens=False)["input_ids"]
        full_ids = tokenizer([r[1] for r in rendered], add_special_tokens=False)["input_ids"]
        width = max(len(ids) for ids in full_ids)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, (p_ids, f_ids) in enumerate(zip(prompt_ids, full_ids)):
            input_ids[row, : len(f_ids)] = torch.tensor(f_ids)
            attention[row, : len(f_ids)] = 1
            labels[row, len(p_ids): len(f_ids)] = torch.tensor(f_ids[len(p_ids):])
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        targets = labels[:, 1:].to(model.device)
        mask = targets != -100
        token_logps = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        results.extend((token_logps.sum(-1) / mask.sum(-1).clamp(min=1)).tolist())
    return results


def preference_accuracy(model, tokenizer, rows: Sequence[dict]) -> float:
    """Share of pairs where mean logp(chosen) > mean logp(rejected)."""
    chosen = mean_completion_logps(model, tokenizer, [(r["prompt"], r["chosen"]) for r in rows])
    rejected = mean_completion_logps(model, tokenizer, [(r["prompt"], r["rejected"]) for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(rows), 1)
