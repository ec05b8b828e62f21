"""Trainer callbacks: metrics.jsonl, the non-finite guard (installed by `NonFiniteGuardMixin`), the best checkpoint
and early stopping on an eval metric, and the loss plot."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

import torch
from transformers import EarlyStoppingCallback, TrainerCallback

from forge_trl.distributed import is_main_process
from forge_trl.errors import ConfigError

log = logging.getLogger("forge_trl")

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsFileCallback(TrainerCallback):
    """Append every log event as one JSON line to `<output_dir>/metrics.jsonl`.

    A fresh run starts a fresh file. A resumed run keeps the lines up to the step it resumes from and drops the
    later ones (logged by the interrupted process after its last checkpoint), so the file and loss.png cover the
    whole run once."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_main_process():  # only rank 0 appends (on_log); another rank truncating could drop its lines
            self.path.touch()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        resumed_at = state.global_step
        kept = [r for r in read_metrics(self.path.parent) if resumed_at and r.get("step", 0) <= resumed_at]
        self.path.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept), encoding="utf-8")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")


class NonFiniteGuard(TrainerCallback):
    """Skip any optimizer step whose gradients are not all finite; stop after `max_in_a_row` in a row.

    Dropping every gradient before the step makes the optimizer leave all weights as they were (AdamW skips
    parameters without a gradient), so one bad batch cannot poison the run. Skips are logged and counted in
    the logs as `nonfinite_skipped`. After `max_in_a_row` consecutive skips training stops; the run then
    reports the failure instead of writing `final/`, and earlier checkpoints stay as they were.
    """

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.skipped = 0
        self.stopped_at: int | None = None
        self._model = None
        self._params: list = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # This runs every optimizer step: the parameter list is taken once (walking the module tree costs more
        # than the check), and one multi-tensor norm replaces an isfinite per tensor. A non-finite element makes
        # its tensor's norm non-finite (so does a norm that overflows, which gradient clipping already treats so).
        if model is not self._model:
            self._model, self._params = model, list(model.parameters())
        if all_finite(self._params):
            self.in_a_row = 0
            return
        for param in model.parameters():
            param.grad = None
        self.skipped += 1
        self.in_a_row += 1
        log.warning(
            "non-finite loss or gradient at step %d: optimizer step skipped (%d in a row, %d in total)",
            state.global_step + 1,
            self.in_a_row,
            self.skipped,
        )
        if self.in_a_row >= self.max_in_a_row:
            self.stopped_at = state.global_step + 1
            control.should_training_stop = True


def all_finite(params: list) -> bool:
    """Whether every gradient of `params` is finite, on every process of the run.

    Sharded (FSDP2), each process holds only its shard of each gradient, so the verdict is agreed over the
    processes: they must all skip the step or none (the optimizer step and clipping are collectives there)."""
    from torch.distributed.tensor import DTensor

    from forge_trl.distributed import group_size, sum_over_processes

    grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in params if p.grad is not None]
    finite = not grads or bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())
    if group_size() == 1:
        return finite
    device = grads[0].device if grads else torch.device("cpu")
    return bool(sum_over_processes(torch.tensor([0.0 if finite else 1.0], device=device)) == 0)


def followed_metric(name: str, metrics: dict) -> str:
    """The key of eval metric `name` among `metrics`: `name` itself, or `eval_<name>` (transformers' short form).

    A ConfigError naming `task.metric_for_best` and the metrics there are when it is not among them (the first
    evaluation shows which metrics a trainer logs)."""
    for key in (name, f"eval_{name}"):
        if isinstance(metrics.get(key), (int, float)):
            return key
    logged = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and k not in NOT_FOLLOWED)
    raise ConfigError(f"task.metric_for_best={name} is not an eval metric of this task; it logs {', '.join(logged)}")


# Logged with every evaluation, but they measure the machine, not the model.
NOT_FOLLOWED = frozenset(("epoch", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"))


def improves(value: float, best: float | None, greater_is_better: bool) -> bool:
    """Whether `value` is strictly better than `best` (None: nothing yet). A NaN never improves."""
    if math.isnan(value):
        return False
    return best is None or (value > best if greater_is_better else value < best)


class BestCheckpointCallback(TrainerCallback):
    """`task.save_best`: after each evaluation whose `metric` improves on every earlier one, `save(model, step,
    metrics)` writes `<output_dir>/best/` (train.py passes forge's checkpoint writer, so best/ has final/'s format).

    It runs on every process: under FSDP2 the writer gathers the weights collectively, and every process agrees
    whether the metric improved, since eval metrics are gathered over the processes before callbacks see them. A
    resumed run starts from its checkpoint's `state.best_metric`, which transformers keeps for the same metric."""

    def __init__(
        self, metric: str, greater_is_better: bool, save: Callable[[torch.nn.Module, int, dict[str, float]], object]
    ):
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.save = save
        self.best: float | None = None
        self.best_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.best, self.best_step = state.best_metric, state.best_global_step or None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        metrics = metrics or {}
        value = float(metrics[followed_metric(self.metric, metrics)])
        if not improves(value, self.best, self.greater_is_better):
            return
        self.best, self.best_step = value, state.global_step
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k not in NOT_FOLLOWED}
        self.save(model, state.global_step, numbers)
        log.info("step %d: %s = %.6g, the best so far; wrote best/", state.global_step, self.metric, value)


class EarlyStopping(EarlyStoppingCallback):
    """transformers' EarlyStoppingCallback (its patience counter and threshold rule, unchanged), for a run that
    never moves weights around.

    transformers documents it together with `load_best_model_at_end`, which reloads the best `checkpoint-N` when
    training ends. forge does not use that: best/ is written when the metric improves (BestCheckpointCallback), and
    final/ holds the last weights. What the callback really needs is `metric_for_best_model` and `greater_is_better`
    in the TrainingArguments, for which transformers then keeps `state.best_metric` after each evaluation (the task
    sets both; `Task.eval_args`). So this subclass
    - skips `on_train_begin`, which only warns that the best model will not be loaded at the end (intended here)
      and asserts what the config checks already ensured;
    - passes the metric under the `eval_<name>` key transformers looks for, so that names without that prefix (PPO's
      `eval/score_mean`) work too;
    - logs one line when it stops the run, with the best value and its step, and keeps that step in `stopped_at`.
    """

    def __init__(self, patience: int, threshold: float):
        super().__init__(early_stopping_patience=patience, early_stopping_threshold=threshold)
        self.stopped_at: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.best, self.best_step = state.best_metric, state.best_global_step or None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        name = args.metric_for_best_model
        value = float(metrics[followed_metric(name, metrics)])
        # What transformers reads: `metrics["eval_" + name]` unless the name starts with "eval_" (EarlyStoppingCallback
        # and Trainer._determine_best_metric alike).
        looked_up = name if name.startswith("eval_") else f"eval_{name}"
        super().on_evaluate(args, state, control, metrics={**metrics, looked_up: value}, **kwargs)
        if improves(value, self.best, args.greater_is_better):
            self.best, self.best_step = value, state.global_step
        if self.early_stopping_patience_counter >= self.early_stopping_patience and state.global_step < state.max_steps:
            self.stopped_at = state.global_step
            log.info(
                "early stopping at step %d of %d: %s did not improve for %d evaluations; best %.6g at step %s",
                state.global_step,
                state.max_steps,
                name,
                self.early_stopping_patience_counter,
                self.best,
                self.best_step,
            )


def read_metrics(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(output_dir: Path, title: str) -> Path | None:
    """Draw training (and eval, when logged) loss against step into `<output_dir>/loss.png`."""
    records = read_metrics(output_dir)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), (int, float))]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), (int, float))]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*train), label="train loss", marker="." if len(train) < 40 else None)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    finite = [v for _, v in train if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(output_dir) / PLOT_FILE
    fig.savefig(out)
    plt.close(fig)
    return out
