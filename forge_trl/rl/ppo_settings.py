"""PPO's own settings, declared once: `task=ppo`'s schema (`PPOTaskConfig`) and the trainer's `PPOConfig` both
inherit these fields, and `PPO_KEYS` (what the task hands to the trainer) is derived from them.

One PPO *step* samples a batch of `per_device_train_batch_size` prompts per process (so `x processes` under
`accelerate launch`), scores the responses, and runs `num_ppo_epochs` passes over that batch in `num_mini_batches`
minibatches, one optimizer update per minibatch; each process splits its own part of the batch into minibatches.
`max_steps` counts PPO steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class PPOSettings:
    """The PPO fields; each field's `help` is its documentation."""

    response_length: int = field(default=32, metadata={"help": "Maximum number of tokens sampled per response."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature. Log-probabilities are computed at the same temperature."}
    )
    stop_token_id: Optional[int] = field(
        default=None,
        metadata={
            "help": "Token that ends a response; everything after it is padding. None uses the tokenizer's EOS token."
        },
    )
    missing_eos_penalty: Optional[float] = field(
        default=None,
        metadata={
            "help": "Subtracted from the score of a response that never produced the stop token. None disables it."
        },
    )
    kl_coef: float = field(default=0.1, metadata={"help": "Weight of the per-token KL penalty against the reference."})
    adaptive_kl: bool = field(
        default=False, metadata={"help": "Adapt kl_coef so the observed KL tracks target_kl (Ziegler et al., 2019)."}
    )
    target_kl: float = field(default=6.0, metadata={"help": "Target sequence KL for the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon, in episodes, of the adaptive controller."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE."})
    lam: float = field(default=0.95, metadata={"help": "Lambda of GAE."})
    whiten_advantages: bool = field(
        default=True,
        metadata={"help": "Normalise advantages to zero mean and unit variance over the batch's response tokens."},
    )
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches per pass; each is one optimizer update."})
    cliprange: float = field(default=0.2, metadata={"help": "Clip range of the policy ratio."})
    cliprange_value: float = field(
        default=0.2, metadata={"help": "Clip range of the value prediction around the rollout's values."}
    )
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    rollout_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Sequences per forward pass when scoring rollouts (reward, reference, values). "
            "None: the whole batch."
        },
    )


PPO_KEYS = tuple(f.name for f in dataclasses.fields(PPOSettings))
