"""Configuration of forge's PPO trainer, in TRL's style: TrainingArguments plus the PPO fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
    r"""
    Configuration for [`forge_trl.rl.ppo_trainer.PPOTrainer`].

    One PPO *step* samples a batch of `per_device_train_batch_size x gradient_accumulation_steps` prompts, scores
    the responses, and runs `num_ppo_epochs` passes over that batch in `num_mini_batches` minibatches, one
    optimizer update per minibatch. `max_steps` counts PPO steps.

    Parameters:
        response_length (`int`, *optional*, defaults to `32`):
            Maximum number of tokens sampled per response.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature. Log-probabilities are computed at the same temperature.
        stop_token_id (`int` or `None`, *optional*, defaults to `None`):
            Token that ends a response; everything after it is padding. `None` uses the tokenizer's EOS token.
        missing_eos_penalty (`float` or `None`, *optional*, defaults to `None`):
            Subtracted from the score of a response that never produced the stop token. `None` disables it.
        kl_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the per-token KL penalty against the reference policy.
        adaptive_kl (`bool`, *optional*, defaults to `False`):
            Adapt `kl_coef` so the observed KL tracks `target_kl` (Ziegler et al., 2019).
        target_kl (`float`, *optional*, defaults to `6.0`):
            Target sequence KL for the adaptive controller.
        kl_horizon (`int`, *optional*, defaults to `10000`):
            Horizon, in episodes, of the adaptive controller.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor of GAE.
        lam (`float`, *optional*, defaults to `0.95`):
            Lambda of GAE.
        whiten_advantages (`bool`, *optional*, defaults to `True`):
            Normalise advantages to zero mean and unit variance over the batch's response tokens.
        num_ppo_epochs (`int`, *optional*, defaults to `4`):
            Passes over each rollout batch.
        num_mini_batches (`int`, *optional*, defaults to `1`):
            Minibatches per pass; each is one optimizer update.
        cliprange (`float`, *optional*, defaults to `0.2`):
            Clip range of the policy ratio.
        cliprange_value (`float`, *optional*, defaults to `0.2`):
            Clip range of the value prediction around the rollout's values.
        vf_coef (`float`, *optional*, defaults to `0.1`):
            Weight of the value loss in the total loss.
        rollout_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Sequences per forward pass when scoring rollouts (reward, reference, values). `None`: the whole batch.
    """

    response_length: int = field(default=32, metadata={"help": "Maximum tokens sampled per response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    stop_token_id: int | None = field(default=None, metadata={"help": "Token ending a response; None: EOS."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Score penalty for a response without the stop token."}
    )
    kl_coef: float = field(default=0.1, metadata={"help": "Per-token KL penalty weight."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards target_kl."})
    target_kl: float = field(default=6.0, metadata={"help": "Target KL of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon of the adaptive controller, in episodes."})
    gamma: float = field(default=1.0, metadata={"help": "GAE discount."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over the batch."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Passes over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches (optimizer updates) per pass."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss weight."})
    rollout_batch_size: int | None = field(default=None, metadata={"help": "Sequences per scoring forward."})

    def __post_init__(self):
        super().__post_init__()
        self.remove_unused_columns = False  # the prompt dataset's columns are read by the trainer itself
