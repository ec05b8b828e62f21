"""`task=ppo`: RLHF with forge's own PPO trainer (TRL 1.x has none), on prompt-only data.

    python -m forge_trl task=ppo model.name_or_path=outputs/sft/final task.reward_model.checkpoint_path=outputs/rm/final

The policy trains the input checkpoint's adapter; the reference is its frozen copy; the value model starts
from the reward model. With the usual chain (the RM trained from the same SFT checkpoint) all four share one
base model (see forge_trl/rl/ppo_models.py).

Several processes run it as one process with their batches together (see forge_trl/trainers/ppo.py):

    accelerate launch --config_file conf/accelerate/ddp.yaml -m forge_trl task=ppo ...     # or cpu_2proc.yaml
    accelerate launch --config_file conf/accelerate/fsdp2.yaml -m forge_trl task=ppo ...   # base model sharded
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forge_trl.config import TaskConfig, require
from forge_trl.rl.ppo_settings import PPO_KEYS, PPOSettings
from forge_trl.rl.reward import RewardModelConfig
from forge_trl.tasks import TASKS
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class PPOTaskConfig(PPOSettings, TaskConfig):
    """TaskConfig plus PPO's own fields (forge_trl/rl/ppo_settings.py, documented there)."""

    name: str = "ppo"
    learning_rate: float = 1e-5
    per_device_train_batch_size: int = 8
    logging_steps: int = 1
    # PPO's evaluation logs eval/score_mean (reward-model score of the held-out prompts' responses) and eval/kl.
    metric_for_best: str = "eval/score_mean"
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)

    def __post_init__(self):
        super().__post_init__()
        self.reward_model.check()
        require(self.response_length > 0, "task.response_length", "must be positive")
        require(self.temperature > 0, "task.temperature", f"must be positive, got {self.temperature}")
        require(self.kl_coef >= 0, "task.kl_coef", f"must be >= 0, got {self.kl_coef}")
        require(0 < self.gamma <= 1, "task.gamma", f"must be in (0, 1], got {self.gamma}")
        require(0 <= self.lam <= 1, "task.lam", f"must be in [0, 1], got {self.lam}")
        require(self.num_ppo_epochs > 0, "task.num_ppo_epochs", "must be positive")
        require(self.num_mini_batches > 0, "task.num_mini_batches", "must be positive")
        require(
            self.per_device_train_batch_size % self.num_mini_batches == 0,
            "task.num_mini_batches",
            f"must divide per_device_train_batch_size ({self.per_device_train_batch_size})",
        )
        require(self.cliprange > 0 and self.cliprange_value > 0, "task.cliprange", "clip ranges must be positive")


def tokenize_prompts(dataset, tokenizer):
    """Prompt column (messages or text) -> input_ids with the generation prompt, as the policy will see it (the
    data package's one prompt renderer, shared with training's other tasks and the bench)."""
    from forge_trl.data.prompts import prompt_ids

    def encode(row):
        return {"input_ids": prompt_ids(tokenizer, row["prompt"])}

    return dataset.map(encode, remove_columns=dataset.column_names)


@TASKS.register("ppo")
class PPOTask(Task):
    name = "ppo"
    schema = PPOTaskConfig
    data_layouts = ("prompt_only",)
    requires_adapter = True

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return {key: getattr(t, key) for key in PPO_KEYS}

    def trainer_kwargs(self, ctx: TaskContext) -> dict:
        from forge_trl.rl.ppo_models import build_ppo_models

        models = build_ppo_models(
            ctx.model,
            ctx.source,
            ctx.injection,
            ctx.cfg.task.reward_model.checkpoint_path,
            ctx.cfg.model,
            ctx.precision,
            ctx.tokenizer,
        )
        held_out = ctx.eval_dataset
        return dict(
            models=models,
            train_dataset=tokenize_prompts(ctx.train_dataset, ctx.tokenizer),
            eval_dataset=tokenize_prompts(held_out, ctx.tokenizer) if held_out is not None else None,
        )

    def trl_classes(self):
        from forge_trl.trainers.ppo import PPOConfig, PPOTrainer

        return PPOConfig, PPOTrainer
