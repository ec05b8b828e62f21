"""`bench.*` keys: what `python -m forge_trl.bench` (and a run's post-training bench) evaluates, and how.

The same schema is the `bench` section of every run's config, so a Hydra sweep can bench each job and hand
a metric to the sweeper (`bench.objective`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from forge_trl.errors import require

# Metrics a sweep may optimise, with the direction that counts as better.
OBJECTIVES = {
    "checker_accuracy": "maximize",
    "format_compliance": "maximize",
    "preference_accuracy": "maximize",
    "rm_accuracy": "maximize",
    "rm_score": "maximize",
    "win_rate": "maximize",
    "eval_loss": "minimize",
    "train_loss": "minimize",
}


@dataclass
class JudgeConfig:
    """Who decides whether a checkpoint's response beats the baseline's on the same prompt."""

    # The checkpoint whose responses are the baseline (e.g. the SFT model). null: no win-rate.
    baseline: Optional[str] = None
    # A forge reward-model checkpoint (`task=rm` output) as a local judge: the higher score wins.
    reward_model: Optional[str] = None
    # An OpenAI-compatible endpoint (`http://host:port/v1`); POSTs to `<url>/chat/completions`.
    url: Optional[str] = None
    # The `model` field sent to the endpoint.
    model: str = "judge"
    # Environment variable holding the endpoint's API key (sent as a Bearer token when set).
    api_key_env: str = "OPENAI_API_KEY"
    # Seconds to wait for one endpoint answer.
    timeout: float = 60.0

    def __post_init__(self):
        require(
            not (self.reward_model and self.url),
            "bench.judge",
            "set either bench.judge.reward_model or bench.judge.url, not both",
        )
        require(self.timeout > 0, "bench.judge.timeout", f"must be positive, got {self.timeout}")


@dataclass
class BenchConfig:
    """Held-out evaluation of checkpoints."""

    # Run the bench on `final/` after training. null: only in a multirun sweep (it feeds the sweeper).
    enabled: Optional[bool] = None
    # Held-out prompts (JSONL rows with `prompt`, optionally `system` and `answer` for the checker). null: the demo
    # suite's.
    prompts: Optional[str] = None
    # Held-out preference pairs (`prompt`, `chosen`, `rejected`, optionally `system`). null: the demo suite's.
    pairs: Optional[str] = None
    # Use at most this many prompts and pairs (the first ones). null: all.
    max_rows: Optional[int] = None
    # Response budget; a response that has not ended by then fails format compliance.
    max_new_tokens: int = 32
    # null: greedy decoding. A value: sampling at that temperature, `samples_per_prompt` times per prompt.
    temperature: Optional[float] = None
    samples_per_prompt: int = 1
    # A regular expression every response must fully match to comply with the format (besides ending).
    format_regex: Optional[str] = None
    # The checkers (checker_accuracy, format_compliance) score the answer after a reasoning block: a
    # `<think>...</think>` block, an unterminated `<think>` at the start, or a reply that opens inside the block a
    # generation prompt began (it then starts with the reasoning and `</think>`). false: they score the whole reply.
    strip_reasoning: bool = True
    # Extra chat-template variables for the prompts (e.g. {enable_thinking: false}). null: those each checkpoint was
    # trained with (`data.chat_template_kwargs`, from its forge_run.json); none for a plain model directory or hub id.
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    # A forge RM checkpoint that scores each policy's responses (rm_score, and its correlation with length).
    # null: RL checkpoints (PPO, GRPO, RLOO) use the reward model they were trained against.
    reward_model: Optional[str] = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # The metric a sweep optimises (the Hydra task function returns it).
    objective: str = "preference_accuracy"
    # Where bench.json and the plots go. null: the run's output_dir (after training) or outputs/bench (CLI).
    out: Optional[str] = None
    # Write PNG plots next to bench.json.
    plots: bool = True
    seed: int = 0

    def __post_init__(self):
        require(self.max_new_tokens > 0, "bench.max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        require(self.max_rows is None or self.max_rows > 0, "bench.max_rows", f"must be positive, got {self.max_rows}")
        require(
            self.temperature is None or self.temperature > 0,
            "bench.temperature",
            f"must be positive (or null for greedy), got {self.temperature}",
        )
        require(
            self.samples_per_prompt > 0, "bench.samples_per_prompt", f"must be positive, got {self.samples_per_prompt}"
        )
        require(
            self.format_regex is None or _compiles(self.format_regex),
            "bench.format_regex",
            f"'{self.format_regex}' is not a valid regular expression",
        )
        require(
            self.chat_template_kwargs is None or isinstance(self.chat_template_kwargs, Mapping),
            "bench.chat_template_kwargs",
            f"expected a mapping such as {{enable_thinking: false}} (or null), got {self.chat_template_kwargs!r}",
        )
        require(
            self.objective in OBJECTIVES,
            "bench.objective",
            f"expected one of {', '.join(OBJECTIVES)}, got '{self.objective}'",
        )


def _compiles(pattern: str) -> bool:
    import re

    try:
        re.compile(pattern)
    except re.error:
        return False
    return True
