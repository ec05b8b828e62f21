"""PPO's response sampling, seeded per prompt: a prompt's response does not depend on which process or batch it
lands in.

`generate(do_sample=True)` draws every row's token from one shared random stream, so a row's sample depends on
the rows drawn before it; a run split over several processes would sample other responses than one process with
the whole batch. Here each row has its own generator, seeded from (run seed, epoch, the prompt's dataset index),
and the token is chosen by the Gumbel-max trick: argmax(logits / T + G) with G ~ Gumbel(0, 1) independent per
token is an exact sample of softmax(logits / T). `generate` then runs greedily over the noised scores.

A response ends at the first of its stop ids (`forge_trl.data.prompts.stop_token_ids`: the tokenizer's EOS and each
id of the model's `generation_config.eos_token_id`, or PPO's `stop_token_id` when it is set); generation stops
there and `cut_at_stop` masks what follows.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList


def prompt_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of dataset row `index` in `epoch` of a run seeded `seed` (64 bits of a hash, so that
    distinct triples never share a stream by arithmetic accident)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class GumbelSampler(LogitsProcessor):
    """Turns greedy decoding into sampling at `temperature`, with one random stream per row.

    Each call (one per generated position) draws one noise vector per row from that row's generator, finished rows
    included, so the t-th token of a row always uses the t-th draw of its stream whatever the other rows do."""

    def __init__(self, seeds: list[int], temperature: float):
        self.seeds = seeds
        self.temperature = temperature
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        if len(self._generators) != scores.shape[0]:
            raise ValueError(f"GumbelSampler was seeded for {len(self._generators)} rows, got {scores.shape[0]}")
        # -log(E) with E ~ Exp(1) is Gumbel(0, 1); the clamp keeps an (astronomically rare) E = 0 finite.
        exponential = torch.stack(
            [
                torch.empty(scores.shape[1], device=scores.device, dtype=torch.float32).exponential_(generator=g)
                for g in self._generators
            ]
        )
        gumbel = -exponential.clamp_min(torch.finfo(torch.float32).tiny).log()
        return scores.float() / self.temperature + gumbel


def sample_responses(
    policy,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    seeds: list[int],
    temperature: float,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_token_id: int,
    synced_gpus: bool = False,
) -> torch.Tensor:
    """One sampled response per (left-padded) prompt, (B, max_new_tokens): generation stops at any of `stop_ids`,
    and a batch that stops early is padded to the full width with `pad_token_id`."""
    generated = policy.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        # Sampling at `temperature`, done by the per-prompt Gumbel-max processor over greedy decoding.
        do_sample=False,
        logits_processor=LogitsProcessorList([GumbelSampler(seeds, temperature)]),
        eos_token_id=list(stop_ids),
        pad_token_id=pad_token_id,
        # Sharded, every forward gathers weights from all processes: each must run as many as the longest.
        synced_gpus=synced_gpus,
    )
    responses = generated[:, input_ids.shape[1] :]
    if responses.shape[1] < max_new_tokens:  # every sequence stopped early
        pad = responses.new_full((responses.shape[0], max_new_tokens - responses.shape[1]), pad_token_id)
        responses = torch.cat([responses, pad], dim=1)
    return responses


def cut_at_stop(
    responses: torch.Tensor, stop_ids: Sequence[int], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(responses with every token after the first stop id set to pad, the response mask (1 up to and including
    that stop token), whether each row has a stop token)."""
    is_stop = torch.isin(responses, torch.tensor(list(stop_ids), device=responses.device))
    has_stop = is_stop.any(dim=1)
    no_stop = torch.full_like(has_stop, 10**9, dtype=torch.long)
    first_stop = torch.where(has_stop, is_stop.float().argmax(dim=1), no_stop)
    positions = torch.arange(responses.shape[1], device=responses.device).unsqueeze(0)
    mask = (positions <= first_stop.unsqueeze(1)).long()
    return torch.where(mask.bool(), responses, pad_token_id), mask, has_stop
