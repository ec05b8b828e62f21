"""`bench.*` keys: what `python -m forge_trl.bench` (and a run's post-training bench) evaluates, and how.

The same schema is the `bench` section of every run's config, so a Hydra sweep can bench each job and hand
a metric to the sweeper (`bench.objective`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from forge_trl.errors import require

# Metrics a sweep may optimise, with the direction that counts as better.
OBJECTIVES = {
    "checker_accuracy": "maximize",
    "format_compliance": "maximize",
    "preference_accuracy": "maximize",
    "rm_accuracy": "maximize",
    "rm_score": "maximize",
    "win_rate": "maximize",
    "judge_score": "maximize",
    "eval_loss": "minimize",
    "train_loss": "minimize",
}


# The judges' criteria when `bench.judge.rubric` is null: the pointwise judge grades each response 1-10 by them, the
# pairwise judge picks the better of two responses by them.
DEFAULT_RUBRIC = (
    "Judge correctness first (is the answer right, and does it do what the user asked?), then helpfulness, then "
    "concision: a correct bare answer beats a correct answer padded with text nobody asked for. "
    "10 = correct, complete and concise; 7 = correct with small flaws; 4 = partly correct or mostly padding; "
    "1 = wrong, harmful or empty."
)


@dataclass
class ApiTarget:
    """An OpenAI-compatible chat-completions endpoint benched beside the checkpoints (Ollama, vLLM, llama.cpp
    server, TGI, `forge-trl serve`, OpenAI, Gemini's OpenAI-compatible endpoint)."""

    # The endpoint's base URL, e.g. http://localhost:11434/v1 (Ollama), https://api.openai.com/v1,
    # https://generativelanguage.googleapis.com/v1beta/openai (Gemini).
    base_url: str = ""
    # The model name the endpoint serves (the request's `model` field).
    model: str = ""
    # The NAME of the environment variable holding the API key (never the key itself); it must be set when given.
    # null: no key (local servers).
    api_key_env: Optional[str] = None
    # The target's label in the table and bench_results.jsonl, and how bench.judge.baseline names it. null: `model`.
    name: Optional[str] = None

    @property
    def label(self) -> str:
        return self.name or self.model


@dataclass
class ApiConfig:
    """How the bench talks to API targets and LLM judges (the `openai` client: retries with exponential backoff on
    connection errors, timeouts, 408/409/429 and 5xx answers)."""

    # Requests in flight at once, per endpoint.
    max_concurrency: int = 4
    # Seconds to wait for one answer (each try).
    timeout_s: float = 60.0
    # Retries after a failed try (connection error, timeout, 429, 5xx), with exponential backoff.
    max_retries: int = 2

    def __post_init__(self):
        require(self.max_concurrency > 0, "bench.api.max_concurrency", f"must be positive, got {self.max_concurrency}")
        require(self.timeout_s > 0, "bench.api.timeout_s", f"must be positive, got {self.timeout_s}")
        require(self.max_retries >= 0, "bench.api.max_retries", f"must be 0 or more, got {self.max_retries}")


@dataclass
class JudgeConfig:
    """Who judges the responses: pointwise (a 1-10 grade of each response, by an LLM judge) and pairwise (does a
    target's response beat the baseline's on the same prompt: an LLM judge asked in both orders, or a reward
    model)."""

    # The checkpoint (or bench.targets name) whose responses are the baseline of the pairwise judge. null: no
    # win-rate.
    baseline: Optional[str] = None
    # A forge reward-model checkpoint (`task=rm` output) as the pairwise judge: the higher score wins.
    reward_model: Optional[str] = None
    # An LLM judge: an OpenAI-compatible endpoint (`http://host:port/v1`).
    url: Optional[str] = None
    # The model name the judge endpoint serves.
    model: str = "judge"
    # The NAME of the environment variable holding the judge endpoint's API key; it must be set when given.
    # null: no key.
    api_key_env: Optional[str] = None
    # Grade every response 1-10 with the LLM judge (judge_score), by `rubric`.
    pointwise: bool = False
    # The judges' criteria. null: DEFAULT_RUBRIC above (correctness, then helpfulness, then concision).
    rubric: Optional[str] = None
    # The judge's reply budget in tokens (a short rationale, then the score or verdict).
    max_tokens: int = 256
    # Keep the LLM judge's replies in <bench.out>/judge_cache.sqlite, so a rerun asks only what it has not asked.
    cache: bool = True

    def __post_init__(self):
        require(
            not (self.reward_model and self.url),
            "bench.judge",
            "set either bench.judge.reward_model or bench.judge.url, not both",
        )
        require(
            not self.pointwise or bool(self.url),
            "bench.judge.pointwise",
            "needs an LLM judge: set bench.judge.url (an OpenAI-compatible endpoint) and bench.judge.model",
        )
        require(
            self.url is None or self.url.startswith(("http://", "https://")),
            "bench.judge.url",
            f"expected an http(s) URL such as http://localhost:8000/v1, got '{self.url}'",
        )
        require(self.max_tokens > 0, "bench.judge.max_tokens", f"must be positive, got {self.max_tokens}")

    @property
    def criteria(self) -> str:
        return self.rubric or DEFAULT_RUBRIC


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
    # OpenAI-compatible endpoints benched beside the checkpoints, each {base_url, model, api_key_env, name}: on the
    # command line `bench.targets=[{base_url:http://localhost:11434/v1,model:llama3.2}]` (repeatable), or a YAML
    # file with such a list (`bench.targets=targets.yaml`).
    targets: List[ApiTarget] = field(default_factory=list)
    api: ApiConfig = field(default_factory=ApiConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    # The metric a sweep optimises (the Hydra task function returns it).
    objective: str = "preference_accuracy"
    # Where bench.json, bench_results.jsonl, the plots and the judge cache go. null: the run's output_dir (after
    # training) or outputs/bench (CLI).
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
        for i, target in enumerate(self.targets):
            where = f"bench.targets[{i}]"
            require(
                target.base_url.startswith(("http://", "https://")),
                f"{where}.base_url",
                f"expected an http(s) URL such as http://localhost:11434/v1, got '{target.base_url}'",
            )
            require(bool(target.model), f"{where}.model", "required: the model name the endpoint serves")
            require(
                target.label not in [t.label for t in self.targets[:i]],
                f"{where}.name",
                f"two targets are named '{target.label}'; give each a distinct name",
            )


def _compiles(pattern: str) -> bool:
    import re

    try:
        re.compile(pattern)
    except re.error:
        return False
    return True
