"""PPO's response sampling, seeded per prompt: a prompt's response does not depend on which process or batch it
lands in.

`generate(do_sample=True)` draws every row's token from one shared random stream, so a row's sample depends on
the rows drawn before it; a run split over several processes would sample other responses than one process with
the whole batch. Here each row has its own generator, seeded from (run seed, epoch, the prompt's dataset index),
and the token is chosen by the Gumbel-max trick: argmax(logits / T + G) with G ~ Gumbel(0, 1) independent per
token is an exact sample of softmax(logits / T). `generate` then runs greedily over the noised scores.
"""

from __future__ import annotations

import hashlib

import torch
from transformers import LogitsProcessor


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
