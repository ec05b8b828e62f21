"""Structured-config schemas, registered in Hydra's ConfigStore.

The top-level schema fixes the groups (`model`, `injection`, `task`, `data`) and the run-level keys. Each task
and each injection strategy declares its own schema dataclass next to its code, subclassing `TaskConfig` or
`InjectionConfig`, and that dataclass is the group option itself (`task=dpo` composes `DPOTaskConfig()`; see
forge_trl/commands/compose.py). The dataclasses are the only place defaults live. A misspelt key or a value of the
wrong type therefore fails while Hydra composes the config, before any model loads.

Range checks (a negative learning rate, `orpo_lambda <= 0`) live in `__post_init__`, which runs when
`OmegaConf.to_object` turns the composed config into these dataclasses.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Mapping, Optional, get_args

from omegaconf import MISSING

from forge_trl.config.bench import BenchConfig
from forge_trl.errors import ConfigError, did_you_mean, require  # noqa: F401  (schemas elsewhere import require from here)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# `apply_chat_template` arguments forge sets per rendering; `data.chat_template_kwargs` may not override them.
TEMPLATE_CALL_ARGUMENTS = frozenset(
    (
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "chat_template",
        "tools",
        "documents",
        "return_dict",
        "return_assistant_tokens_mask",
        "conversation",
        "messages",
    )
)
DataLayout = Literal["text", "sft", "preference", "prompted_preference", "prompt_only", "unpaired_preference"]
DATA_LAYOUTS: tuple[str, ...] = get_args(DataLayout)


@functools.cache
def warn_deprecated(old_key: str, new_key: str) -> None:
    """One line per process, however often a config is checked (the CLI checks it before Hydra runs it)."""
    logging.getLogger("forge_trl").warning("%s is deprecated; use %s", old_key, new_key)


@dataclass
class ModelConfig:
    """Which model to start from and how to load it."""

    # A hub id, a local HF directory, a forge checkpoint (`<run>/final`), or a built-in name
    # (`forge-tiny`, `forge-tiny-moe`) that is built locally on first use.
    name_or_path: str = "forge-tiny"
    # Weight dtype: `auto` is bf16 on a GPU that supports it and fp32 otherwise.
    dtype: str = "auto"
    # bitsandbytes quantization of the frozen base: null, `4bit` (NF4, QLoRA) or `8bit`.
    quantization: Optional[str] = None
    # Remote code runs only when the user asks for it.
    trust_remote_code: bool = False
    # Passed to `from_pretrained` when set (`sdpa`, `eager`, `flash_attention_2`).
    attn_implementation: Optional[str] = None

    def __post_init__(self):
        require(
            self.dtype in ("auto", "float32", "bfloat16", "float16"),
            "model.dtype",
            f"expected auto|float32|bfloat16|float16, got '{self.dtype}'",
        )
        require(
            self.quantization in (None, "4bit", "8bit"),
            "model.quantization",
            f"expected null|4bit|8bit, got '{self.quantization}'",
        )


@dataclass
class DataConfig:
    """Where the training rows come from and how they are cut."""

    # A JSONL file or a local HF dataset directory (`save_to_disk`). null: the built-in demo suite.
    path: Optional[str] = None
    # Held-out rows for evaluation during training (same layout). null: none.
    eval_path: Optional[str] = None
    # Or hold rows of `path` out for evaluation: a count (>= 1) or a fraction in (0, 1) of the rows, drawn after
    # `max_rows` with a fixed seed (the same rows whatever the run's `seed`), before conversion (a pair stays whole).
    # null: none. Only one of val_size and eval_path.
    val_size: Optional[float] = None
    # `raw` rows are mapped to TRL columns here; `processed` loads rows already in TRL's columns, or a tokenized
    # cache directory written by `python -m forge_trl.preprocess` (checked against this run's tokenizer and max_length).
    format: str = "raw"
    # Row layout: text | sft | preference | prompted_preference | prompt_only | unpaired_preference.
    # null: the task's default.
    layout: Optional[str] = None
    # Tokens per sequence (prompt + response). Rows whose response is cut to nothing are dropped.
    max_length: int = 512
    # Render prompt/response rows with the tokenizer's chat template (when it has one).
    chat_template: bool = True
    # Extra variables for the chat template, passed wherever a prompt or sequence is rendered (training, the
    # empty-label filter, the token cache, PPO, the bench), e.g. `{enable_thinking: false}` for Qwen3.
    chat_template_kwargs: Dict[str, Any] = field(default_factory=dict)
    # Use at most this many rows (after shuffling with `seed`); null: all.
    max_rows: Optional[int] = None
    # Deprecated: the old name of `layout` (it never named a task), moved there with a warning.
    task: Optional[str] = None

    def __post_init__(self):
        require(self.format in ("raw", "processed"), "data.format", f"expected raw|processed, got '{self.format}'")
        if self.task is not None:
            require(
                self.task in DATA_LAYOUTS, "data.task", f"expected one of {'|'.join(DATA_LAYOUTS)}, got '{self.task}'"
            )
            if self.layout is not None and self.layout != self.task:
                raise ConfigError(f"data.task={self.task} contradicts data.layout={self.layout}; set only data.layout")
            warn_deprecated("data.task", "data.layout")
            self.layout, self.task = self.task, None
        require(
            self.layout is None or self.layout in DATA_LAYOUTS,
            "data.layout",
            f"expected one of {'|'.join(DATA_LAYOUTS)}, got '{self.layout}'",
        )
        require(self.max_length > 0, "data.max_length", f"must be positive, got {self.max_length}")
        require(self.max_rows is None or self.max_rows > 0, "data.max_rows", "must be positive")
        size = self.val_size
        require(
            size is None or 0 < size < 1 or (size >= 1 and float(size).is_integer()),
            "data.val_size",
            f"expected a row count (a whole number >= 1) or a fraction in (0, 1), got {size}",
        )
        if size is not None and self.eval_path is not None:
            raise ConfigError("data.val_size and data.eval_path are both set; hold rows out with one of them")
        kwargs = self.chat_template_kwargs
        require(
            isinstance(kwargs, Mapping) and all(isinstance(name, str) for name in kwargs),
            "data.chat_template_kwargs",
            f"expected a mapping of names to values such as {{enable_thinking: false}}, got {kwargs!r}",
        )
        reserved = sorted(set(kwargs) & TEMPLATE_CALL_ARGUMENTS)
        require(not reserved, "data.chat_template_kwargs", f"'{''.join(reserved[:1])}' is set by forge; remove it")
        self.chat_template_kwargs = dict(kwargs)


# Suffixes of eval metric names that are better lower (`task.greater_is_better: null`).
LOSS_LIKE_METRICS = ("loss", "kl", "nll", "perplexity", "ppl")

PARAMETER_GROUPS = ("lora", "attn_lora", "router", "base_ffn", "score")
HANDOFF_GROUPS = ("lora", "attn_lora")
HANDOFF_CURVES = ("linear", "cosine")


@dataclass
class PhaseConfig:
    """From optimizer step `step` on, only the parameter groups in `trainable` train."""

    step: int = 0
    trainable: List[str] = field(default_factory=list)


@dataclass
class HandoffConfig:
    """Fade a LoRA group's scale from 1.0 to `end_scale` between `start_step` and `end_step` (0: no fade)."""

    start_step: int = 0
    end_step: int = 0
    end_scale: float = 0.0
    curve: str = "linear"

    @property
    def enabled(self) -> bool:
        return self.end_step > 0


@dataclass
class HandoffGroups:
    """Handoff per LoRA group: `lora` (FFN / expert LoRA) and `attn_lora` (attention LoRA)."""

    lora: HandoffConfig = field(default_factory=HandoffConfig)
    attn_lora: HandoffConfig = field(default_factory=HandoffConfig)

    def fades(self) -> dict[str, HandoffConfig]:
        return {group: getattr(self, group) for group in HANDOFF_GROUPS if getattr(self, group).enabled}


@dataclass
class InjectionConfig:
    """Base of every injection schema: how trainable parameters are added to the model.

    `phases` and `handoff` are the training schedule; they are not part of a checkpoint's structure, so a
    chained stage takes them from its own config (see `Injection.settings`).
    """

    name: str = MISSING
    # Phased trainable groups, e.g. [{step: 0, trainable: [router]}, {step: 200, trainable: [router, lora]}].
    # Empty: the strategy's trainable parameters train throughout.
    phases: List[PhaseConfig] = field(default_factory=list)
    # Per LoRA group: a scale fade, meant for phases in which `base_ffn` trains.
    handoff: HandoffGroups = field(default_factory=HandoffGroups)

    def __post_init__(self):
        steps = [p.step for p in self.phases]
        require(all(s >= 0 for s in steps), "injection.phases", "every phase needs step >= 0")
        require(steps == sorted(set(steps)), "injection.phases", f"phase steps must increase strictly, got {steps}")
        require(
            not steps or steps[0] == 0, "injection.phases", f"the first phase must start at step 0, got {steps[:1]}"
        )
        for i, phase in enumerate(self.phases):
            require(len(phase.trainable) > 0, f"injection.phases[{i}].trainable", "must name at least one group")
            for group in phase.trainable:
                require(
                    group in PARAMETER_GROUPS,
                    f"injection.phases[{i}].trainable",
                    f"unknown group '{group}'; expected one of {', '.join(PARAMETER_GROUPS)}",
                )
        for group in HANDOFF_GROUPS:
            fade, key = getattr(self.handoff, group), f"injection.handoff.{group}"
            require(
                not fade.enabled or 0 <= fade.start_step < fade.end_step, key, "expected 0 <= start_step < end_step"
            )
            require(0.0 <= fade.end_scale <= 1.0, f"{key}.end_scale", f"must be in [0, 1], got {fade.end_scale}")
            require(fade.curve in HANDOFF_CURVES, f"{key}.curve", f"expected linear|cosine, got '{fade.curve}'")


@dataclass
class TaskConfig:
    """Base of every task schema: the TrainingArguments keys every task shares.

    Each field maps onto the TRL config of the same name.
    """

    name: str = MISSING
    # Stop after this many optimizer steps; -1 means `num_train_epochs` decides.
    max_steps: int = -1
    num_train_epochs: float = 1.0
    learning_rate: float = 2e-4
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    logging_steps: int = 10
    # Intermediate checkpoints every N steps (0: none). `final/` is always written.
    save_steps: int = 0
    save_total_limit: Optional[int] = 2
    # Evaluate the held-out split (data.val_size or data.eval_path) every N optimizer steps; the eval metrics go to
    # metrics.jsonl. null: no evaluation during training.
    eval_steps: Optional[int] = None
    # Keep `<output_dir>/best/`, in the format of final/, from the evaluation with the best `metric_for_best`.
    save_best: bool = False
    # The eval metric that save_best and early stopping follow, as metrics.jsonl names it (`eval_loss`; the
    # `eval_` prefix may be left out). Any logged eval metric works.
    metric_for_best: str = "eval_loss"
    # Whether a higher metric_for_best is better. null: lower for loss-like names (ending in loss, kl, nll,
    # perplexity or ppl), higher for the rest (accuracy, reward, score).
    greater_is_better: Optional[bool] = None
    # Stop after this many evaluations in a row without improving metric_for_best; null: never stop early.
    early_stopping_patience: Optional[int] = None
    # An evaluation improves on the best only by more than this much.
    early_stopping_threshold: float = 0.0
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    # Train every weight of the model instead of an injection (pretraining, full fine-tuning).
    full_parameter: bool = False
    # Extra keyword arguments for the TRL config class, for options forge_trl does not name.
    trl_args: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        require(self.learning_rate > 0, "task.learning_rate", f"must be positive, got {self.learning_rate}")
        require(self.per_device_train_batch_size > 0, "task.per_device_train_batch_size", "must be positive")
        require(self.gradient_accumulation_steps > 0, "task.gradient_accumulation_steps", "must be positive")
        require(self.max_steps == -1 or self.max_steps > 0, "task.max_steps", "must be -1 or positive")
        require(self.num_train_epochs > 0, "task.num_train_epochs", "must be positive")
        require(self.logging_steps > 0, "task.logging_steps", "must be positive")
        require(self.save_steps >= 0, "task.save_steps", "must be >= 0")
        require(self.eval_steps is None or self.eval_steps > 0, "task.eval_steps", "must be positive or null")
        for key, on in (("save_best", self.save_best), ("early_stopping_patience", self.early_stopping_patience)):
            require(
                not on or self.eval_steps is not None,
                f"task.{key}",
                "follows evaluations during training; set task.eval_steps (and data.val_size or data.eval_path)",
            )
        require(
            self.early_stopping_patience is None or self.early_stopping_patience > 0,
            "task.early_stopping_patience",
            f"must be a positive number of evaluations or null, got {self.early_stopping_patience}",
        )
        require(self.early_stopping_threshold >= 0, "task.early_stopping_threshold", "must be >= 0")
        require(bool(self.metric_for_best.strip()), "task.metric_for_best", "must name an eval metric")

    @property
    def follows_best(self) -> bool:
        """Whether a best eval metric is tracked (save_best or early stopping)."""
        return self.save_best or self.early_stopping_patience is not None

    @property
    def metric_greater_is_better(self) -> bool:
        """`greater_is_better`, or inferred from `metric_for_best`: loss-like names are better lower."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        return not self.metric_for_best.lower().endswith(LOSS_LIKE_METRICS)


@dataclass
class ReferenceTaskConfig(TaskConfig):
    """Base of the schemas of tasks whose loss compares the policy with a reference model (DPO, KTO, ...).

    The reference is the input checkpoint; `forge_trl.tasks.base.Task.reference_args` handles it for all of them."""

    # Compute reference log-probs once before training instead of at every step (forced on when phases train
    # base weights that the reference pass shares).
    precompute_ref_log_probs: bool = False


@dataclass
class ForgeConfig:
    """One forge_trl run: the four config groups plus run-level keys."""

    model: ModelConfig = field(default_factory=ModelConfig)
    # Composed from the group option (`injection=mixture_lora`): the InjectionConfig subclass of that name.
    # Strategies read their own fields through `Injection.cfg`, which is typed as their schema.
    injection: InjectionConfig = MISSING
    # Composed from `task=<name>`: the TaskConfig subclass of that name. Kept Any: tasks (plugins too) read their
    # own fields as `ctx.cfg.task.beta`, which the base TaskConfig does not declare.
    task: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    # The run writes `${output_dir}/final/` (plus metrics.jsonl, loss.png, intermediate checkpoints).
    output_dir: str = "outputs/${task.name}"
    # Replace an existing `final/` instead of refusing to start.
    overwrite: bool = False
    # Continue from a checkpoint: `true` (the newest complete `checkpoint-N` in output_dir) or its path.
    resume: Optional[str] = None
    # Optimizer steps with a non-finite loss or gradient are skipped; this many in a row stop the run.
    max_nonfinite_steps: int = 5
    seed: int = 42
    # Multi-process runs: how long a process waits in a collective (all-reduce, barrier) before it gives up with
    # an error, e.g. for a peer that hangs. A peer that dies is noticed at once; this bounds the other cases.
    distributed_timeout_s: int = 1800
    # auto: bf16 where the hardware supports it, fp32 on CPU.
    precision: str = "auto"
    # Where the trainer reports metrics besides metrics.jsonl (`none`, `tensorboard`, `wandb`, ...).
    report_to: str = "none"
    # Draw loss.png at the end of training.
    plot: bool = True
    # Held-out evaluation (`python -m forge_trl.bench`); see forge_trl/bench/config.py.
    bench: BenchConfig = field(default_factory=BenchConfig)

    def __post_init__(self):
        require(self.precision in PRECISIONS, "precision", f"expected {'|'.join(PRECISIONS)}, got '{self.precision}'")
        require(
            self.max_nonfinite_steps > 0, "max_nonfinite_steps", f"must be positive, got {self.max_nonfinite_steps}"
        )
        require(
            self.distributed_timeout_s > 0,
            "distributed_timeout_s",
            f"must be a positive number of seconds, got {self.distributed_timeout_s}",
        )
        if getattr(self.task, "eval_steps", None) is not None:
            require(
                self.data.val_size is not None or self.data.eval_path is not None,
                "task.eval_steps",
                "there is no held-out split to evaluate; set data.val_size (rows held out of data.path) or "
                "data.eval_path",
            )


def to_typed(cfg) -> ForgeConfig:
    """Turn a composed DictConfig into schema dataclasses, running each schema's range checks."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from None
    reject_undeclared_keys(cfg, typed)
    return typed


def reject_undeclared_keys(node, typed, prefix: str = "") -> None:
    """Every key of the composed config must be a schema field. Hydra's `+key=value` appends keys that the
    schema never declared (OmegaConf then sets them as stray attributes); they would be silently ignored, and
    a `_target_` among them would look as if forge instantiated classes from the config, which it never does."""
    import dataclasses

    from omegaconf import DictConfig, ListConfig

    if dataclasses.is_dataclass(typed) and isinstance(node, DictConfig):
        declared = {f.name for f in dataclasses.fields(typed)}
        for key in node.keys():
            if key not in declared:
                hint = (
                    "; forge_trl never instantiates classes from a config"
                    if str(key).startswith("_")
                    else did_you_mean_key(prefix, key, declared)
                )
                raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
            reject_undeclared_keys(node._get_node(key), getattr(typed, key), f"{prefix}{key}.")
    elif isinstance(typed, list) and isinstance(node, ListConfig):
        for i, (item, value) in enumerate(zip(node._iter_ex(resolve=False), typed)):
            reject_undeclared_keys(item, value, f"{prefix[:-1]}[{i}].")


def did_you_mean_key(prefix: str, key, candidates) -> str:
    """`"; did you mean '<prefix><closest>'?"` for a misspelt key among its siblings, or ""."""
    suggestion = did_you_mean(str(key), candidates)
    return suggestion.replace("'", f"'{prefix}", 1) if suggestion else ""


def _sibling_keys(error) -> list[str]:
    """The keys a misspelt key could have meant: the fields of the schema it was set on."""
    import dataclasses

    object_type = getattr(error, "object_type", None)
    if object_type is not None and dataclasses.is_dataclass(object_type):
        return [f.name for f in dataclasses.fields(object_type)]
    parent = getattr(error, "parent_node", None)
    return [str(k) for k in parent.keys()] if parent is not None and hasattr(parent, "keys") else []


def describe_omegaconf_error(exc: BaseException) -> str:
    """One line from an OmegaConf/Hydra exception chain: the key and what was wrong."""
    chain: list[BaseException] = []
    node: BaseException | None = exc
    while node is not None and node not in chain:
        if isinstance(node, ConfigError):
            return str(node)
        chain.append(node)
        node = node.__cause__ or node.__context__
    keyed = next((e for e in chain if getattr(e, "full_key", None)), None)
    source = keyed or chain[-1]
    msg = (getattr(source, "msg", None) or str(source)).strip()
    first = msg.splitlines()[0] if msg else type(source).__name__
    key = getattr(source, "full_key", None)
    if key and " not in " in first:
        name = str(getattr(source, "key", key))
        suggestion = did_you_mean_key(key[: len(key) - len(name)], name, _sibling_keys(source))
        return f"unknown config key '{key}'{suggestion or f' ({first})'}"
    if key:
        return f"{key}: {first}"
    return first
