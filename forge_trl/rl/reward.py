"""A forge reward-model checkpoint (`task=rm` output: adapter + 1-label score head) as an RL reward.

`task.reward_model.checkpoint_path=<rm run>/final` names it. The RM is rebuilt from its checkpoint (base model,
injection, weights), frozen, and scores prompt + completion with its own tokenizer and chat template. Its class is
transformers' sequence-classification class for the family, or, for a family transformers has none for (OLMoE,
Gemma 4 text, ...), the same generic class built by forge (models/score_head.py); both pool the last real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from forge_trl.config import require
from forge_trl.errors import ConfigError


@dataclass
class RewardModelConfig:
    """Which reward model scores the policy's completions."""

    # A forge RM checkpoint (`<rm run>/final`, trained with task=rm).
    checkpoint_path: Optional[str] = None

    def check(self) -> None:
        require(
            self.checkpoint_path is not None,
            "task.reward_model.checkpoint_path",
            "required: a reward model checkpoint trained with task=rm, e.g. outputs/rm/final",
        )


def reward_source(checkpoint_path: str):
    """The ModelSource of a forge RM checkpoint; a ConfigError when the path is not one."""
    from forge_trl.injection.base import HEAD_SEQ_CLS
    from forge_trl.models.loading import resolve_source

    source = resolve_source(checkpoint_path)
    head = source.run_info.head if source.run_info else None
    if head != HEAD_SEQ_CLS:
        raise ConfigError(
            f"task.reward_model.checkpoint_path: '{checkpoint_path}' is not a reward model (its head is "
            f"{head or 'a plain causal LM'}); train one with task=rm"
        )
    return source


def load_reward_model(checkpoint_path: str):
    """(frozen seq-cls model in eval mode, its tokenizer) from a forge RM checkpoint."""
    from forge_trl.injection.base import HEAD_SEQ_CLS
    from forge_trl.models.loading import load_for_inference

    reward_source(checkpoint_path)
    model, tokenizer, _ = load_for_inference(checkpoint_path, head=HEAD_SEQ_CLS)
    model.requires_grad_(False)
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer
