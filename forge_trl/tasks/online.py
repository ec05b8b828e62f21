"""What GRPO and RLOO share: prompt-only data, a forge RM as the reward function, and sampling settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from forge_trl.config import TaskConfig, require
from forge_trl.distributed import launched_world_size
from forge_trl.rl.reward import RewardModelConfig, load_reward_model
from forge_trl.tasks.base import Task, TaskContext


@dataclass
class OnlineRLTaskConfig(TaskConfig):
    learning_rate: float = 1e-6
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    # Completions sampled per prompt; the group is the baseline. The batch must be a multiple of it.
    num_generations: int = 4
    max_completion_length: int = 32
    temperature: float = 1.0
    # KL coefficient against the input checkpoint (0: no reference pass).
    beta: float = 0.0
    # Policy updates per generated batch, and the PPO-style clip range.
    num_iterations: int = 1
    epsilon: float = 0.2
    # TRL evaluates by sampling completions of the held-out prompts: eval_reward is their mean reward-model score.
    metric_for_best: str = "eval_reward"

    def __post_init__(self):
        super().__post_init__()
        self.reward_model.check()
        require(self.num_generations >= 2, "task.num_generations", f"must be >= 2, got {self.num_generations}")
        require(self.max_completion_length > 0, "task.max_completion_length", "must be positive")
        require(self.temperature > 0, "task.temperature", f"must be positive, got {self.temperature}")
        require(self.beta >= 0, "task.beta", f"must be >= 0, got {self.beta}")
        require(self.epsilon > 0, "task.epsilon", f"must be positive, got {self.epsilon}")
        # TRL groups the completions of one generation round across all processes of a launch.
        processes = launched_world_size()
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * processes
        require(
            batch % self.num_generations == 0,
            "task.num_generations",
            f"per_device_train_batch_size x gradient_accumulation_steps"
            f"{' x processes' if processes > 1 else ''} ({batch}) must be a multiple of it ({self.num_generations})",
        )


class OnlineRLTask(Task):
    """A TRL online trainer (GRPOTrainer, RLOOTrainer) with the forge RM as its reward function."""

    data_layouts = ("prompt_only",)

    def task_args(self, ctx: TaskContext) -> dict:
        t = ctx.cfg.task
        return dict(
            num_generations=t.num_generations,
            max_completion_length=t.max_completion_length,
            temperature=t.temperature,
            beta=t.beta,
            num_iterations=t.num_iterations,
            epsilon=t.epsilon,
        )

    def trainer_kwargs(self, ctx: TaskContext) -> dict:
        reward_model, reward_tokenizer = load_reward_model(ctx.cfg.task.reward_model.checkpoint_path)
        return {
            **super().trainer_kwargs(ctx),
            "reward_funcs": reward_model,
            "reward_processing_classes": reward_tokenizer,
        }
