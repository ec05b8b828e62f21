"""Configuration of forge's PPO trainer, in TRL's style: TrainingArguments plus the PPO fields."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainingArguments

from forge_trl.rl.ppo_settings import PPOSettings


@dataclass
class PPOConfig(PPOSettings, TrainingArguments):
    """Configuration for [`forge_trl.trainers.ppo.PPOTrainer`]: every `TrainingArguments` field plus the PPO fields
    of [`forge_trl.rl.ppo_settings.PPOSettings`], where each is documented."""

    def __post_init__(self):
        super().__post_init__()
        self.remove_unused_columns = False  # the prompt dataset's columns are read by the trainer itself
