"""One forge_trl run, top to bottom:

config -> preflight -> tokenizer + data -> model + injection -> TRL trainer -> train -> final/ (atomic).

Every pipeline stage is this flow with a different `task`; chaining is `model.name_or_path=<run>/final`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from forge_trl import distributed
from forge_trl.config import ForgeConfig, to_typed
from forge_trl.errors import ConfigError, TrainingError
from forge_trl.files import run_lock
from forge_trl.injection import get_injection
from forge_trl.injection.base import Injection
from forge_trl.injection.full import FullConfig, FullInjection
from forge_trl.injection.routing import find_recorder
from forge_trl.models.loading import ModelSource, resolve_precision, resolve_source
from forge_trl.models.skeleton import preflight_injection
from forge_trl.tasks import get_task

log = logging.getLogger("forge_trl")


def choose_injection(cfg: ForgeConfig, source: ModelSource) -> Injection:
    """The injection this run trains with. A chained checkpoint's own injection wins over the config's."""
    if cfg.task.full_parameter:
        if cfg.injection.name != "full":
            log.info("task.full_parameter=true: training every weight; injection=%s is not applied", cfg.injection.name)
        return FullInjection(FullConfig())
    requested = get_injection(cfg.injection.name)(cfg.injection)
    from_checkpoint = source.checkpoint_injection
    if from_checkpoint is None:
        return requested
    if from_checkpoint.name != requested.name:
        log.warning(
            "model.name_or_path is a %s checkpoint: training its %s adapter further (injection=%s is not applied)",
            from_checkpoint.name,
            from_checkpoint.name,
            requested.name,
        )
    elif from_checkpoint.settings() != requested.settings():
        ours, theirs = requested.settings(), from_checkpoint.settings()
        differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        log.warning(
            "model.name_or_path is a %s checkpoint; its injection settings win over the config's (%s)",
            from_checkpoint.name,
            ", ".join(f"{k}: {theirs.get(k)!r} instead of {ours.get(k)!r}" for k in differing),
        )
    return from_checkpoint.with_schedule_of(cfg.injection)


def prepare_output_dir(cfg: ForgeConfig) -> Path:
    output_dir = Path(cfg.output_dir)
    final = output_dir / "final"
    if final.exists() and not cfg.overwrite:
        raise ConfigError(f"{final} already exists; pass overwrite=true to replace it, or set another output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def resolve_resume(resume: str | None, output_dir: Path) -> str | None:
    """`resume=true`: the newest complete checkpoint in output_dir; a path: that checkpoint, if complete.

    Half-written leftovers of a killed run are removed first; they are never resumed from."""
    from forge_trl.models.checkpoint import discard_partial_checkpoints, is_complete_checkpoint, list_checkpoints
    from forge_trl.models.loading import refuse_pickle_weights

    if distributed.is_main_process():
        for leftover in discard_partial_checkpoints(output_dir):
            log.warning("removed %s, a checkpoint or final/ whose writing was interrupted", leftover)
    if resume is None or str(resume).lower() in ("false", "none", ""):
        return None
    if str(resume).lower() == "true":
        found = list_checkpoints(output_dir)
        if not found:
            partial = list_checkpoints(output_dir, complete_only=False)
            detail = f" (only incomplete ones: {', '.join(p.name for p in partial)})" if partial else ""
            raise ConfigError(
                f"resume=true: no checkpoint-N directory in {output_dir}{detail}; set task.save_steps to write them"
            )
        chosen = found[-1]
    else:
        chosen = Path(resume)
        if not chosen.is_dir():
            raise ConfigError(f"resume: '{resume}' is not a checkpoint directory")
        if not is_complete_checkpoint(chosen):
            raise ConfigError(
                f"resume: '{resume}' is not a complete checkpoint (no trainer state); "
                "resume from an earlier checkpoint-N"
            )
    refuse_pickle_weights(chosen, "resume checkpoint")
    distributed.check_resume_launch(chosen)
    log.info("resuming from %s", chosen)
    return str(chosen)


def prepare_schedule(injection: Injection, model) -> list:
    """Preflight the phase schedule against the model's groups and build the schedule callbacks."""
    from forge_trl.schedule.handoff import HandoffCallback
    from forge_trl.schedule.phases import PhaseCallback, PhaseSchedule, check_phase_groups, warn_router_only_phases

    phases = injection.cfg.phases
    handoff = injection.cfg.handoff.fades()
    callbacks = []
    if phases:
        groups = injection.parameter_groups(model)
        check_phase_groups(phases, groups, injection.name)
        if injection.experts_share_base:
            warn_router_only_phases(phases, model, groups)
        schedule = PhaseSchedule(phases, groups, model)
        schedule.make_all_trainable()
        callbacks.append(PhaseCallback(schedule))
    if handoff:
        callbacks.append(HandoffCallback(handoff, model))
    return callbacks


def trainable_summary(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def evaluation_during_training(cfg: ForgeConfig, held_out, writer) -> tuple:
    """(the eval dataset the trainer gets, the best-checkpoint callback, the early-stopping callback), each None
    when not configured. Evaluation runs every `task.eval_steps` on the held-out split (`data.val_size` or
    `data.eval_path`); best/ and early stopping follow `task.metric_for_best`."""
    from forge_trl.models.checkpoint import BEST_DIR
    from forge_trl.trainers.callbacks import BestCheckpointCallback, EarlyStopping

    t = cfg.task
    if t.eval_steps is None:
        if held_out is not None:
            key = "data.val_size" if cfg.data.val_size is not None else "data.eval_path"
            log.warning("%s is set but task.eval_steps is null: the held-out rows are not evaluated", key)
        return None, None, None
    best = None
    if t.save_best:
        best = BestCheckpointCallback(
            t.metric_for_best,
            t.metric_greater_is_better,
            save=lambda model, step, metrics: writer.write(model, BEST_DIR, step, metrics, overwrite=True),
        )
    stopper = None
    if t.early_stopping_patience is not None:
        stopper = EarlyStopping(t.early_stopping_patience, t.early_stopping_threshold)
    return held_out, best, stopper


def discard_stale_best(output_dir: Path, resume_from: str | None) -> None:
    """A fresh run in an output_dir removes the best/ an earlier run left there: it would not be this run's best.
    A resumed run keeps it (its BestCheckpointCallback continues from the checkpoint's best metric)."""
    from forge_trl.models.checkpoint import BEST_DIR

    best = output_dir / BEST_DIR
    if resume_from is None and distributed.is_main_process() and best.is_dir():
        log.warning("removed %s, written by an earlier run in this output_dir", best)
        shutil.rmtree(best)


def run(raw_cfg, extra_callbacks: tuple = (), trainer_hook=None) -> Path:
    """Train one stage as configured and return the path of its `final/` checkpoint.

    `extra_callbacks` (TrainerCallbacks) run after forge's own; tests use them to watch parameters.
    `trainer_hook`, if given, is called with the built trainer right before training starts; `benchmarks/` uses
    it to wrap the trainer's data collator and count real tokens per step. Nothing in forge_trl passes it."""
    cfg = to_typed(raw_cfg)
    # Before anything is logged (under `accelerate launch` only rank 0 logs info lines), and before any collective.
    distributed.setup(cfg.distributed_timeout_s)
    task = get_task(cfg.task.name)()

    # Preflight: everything that can be checked without weights fails here, before a model loads.
    from forge_trl.data.dataset import resolve_layout

    layout = resolve_layout(task, cfg.data)
    output_dir = prepare_output_dir(cfg)
    # One run per output_dir: a second one would mix its checkpoints and metrics into this one's and discard this
    # one's staged checkpoint as an interrupted save. The main process holds the lock until final/ and the bench
    # are written; the other ranks of a launch share its run.
    with run_lock(output_dir) if distributed.is_main_process() else contextlib.nullcontext():
        return _train_in(output_dir, raw_cfg, cfg, task, layout, extra_callbacks, trainer_hook)


def _train_in(output_dir: Path, raw_cfg, cfg: ForgeConfig, task, layout, extra_callbacks: tuple, trainer_hook) -> Path:
    """The rest of `run`, once the preflight passed and the main process holds output_dir's lock."""
    from forge_trl.data.dataset import prepare_data

    resume_from = resolve_resume(cfg.resume, output_dir)
    discard_stale_best(output_dir, resume_from)
    source = resolve_source(cfg.model.name_or_path)
    injection = choose_injection(cfg, source)
    task.preflight(injection)
    # The model's structure (meta device, no weights) is enough to know whether the injection fits it.
    preflight_injection(source.base, injection, trust_remote_code=cfg.model.trust_remote_code)
    if resume_from and injection.trains_base_weights and distributed.is_sharded_checkpoint(resume_from):
        # accelerate's sharded checkpoint of a PEFT model holds the adapter only; the base FFN weights a base_ffn
        # phase trains would silently restart from the base model.
        raise ConfigError(
            f"resume: {resume_from} is a sharded (FSDP2) checkpoint and injection.phases train base_ffn, whose "
            "weights it does not hold yet; resume without FSDP2 or start a new stage from final/"
        )

    from transformers import set_seed

    from forge_trl.models.checkpoint import FINAL_DIR, CheckpointWriter
    from forge_trl.models.loading import load_injected, load_tokenizer
    from forge_trl.tasks.base import TaskContext
    from forge_trl.trainers.callbacks import NOT_FOLLOWED, MetricsFileCallback, plot_loss

    set_seed(cfg.seed)
    precision = resolve_precision(cfg.precision)
    tokenizer = load_tokenizer(source.tokenizer_path, trust_remote_code=cfg.model.trust_remote_code)
    data = prepare_data(layout, cfg.data, tokenizer, task_name=task.name)
    model = load_injected(source, injection, task.head, cfg.model, precision, tokenizer)
    schedule_callbacks = prepare_schedule(injection, model)
    trainable, total = trainable_summary(model)
    log.info(
        "task=%s injection=%s model=%s precision=%s: %s of %s parameters trainable (%.2f%%)",
        task.name,
        injection.name,
        source.requested,
        precision,
        f"{trainable:,}",
        f"{total:,}",
        100.0 * trainable / max(total, 1),
    )

    reward_model = getattr(cfg.task, "reward_model", None)  # only the RL tasks (ppo, grpo, rloo) have one
    reward_path = reward_model.checkpoint_path if reward_model is not None else None
    writer = CheckpointWriter(
        output_dir,
        injection,
        tokenizer,
        OmegaConf.to_yaml(raw_cfg, resolve=True),
        dict(
            task=task.name,
            head=task.head,
            base_model=source.base_id,
            parent=str(Path(source.checkpoint).resolve()) if source.checkpoint else None,
            injection=injection.settings() if injection.is_adapter else {"name": "full"},
            model=OmegaConf.to_container(raw_cfg.model, resolve=True),
            precision=precision,
            trainable_parameters=trainable,
            data=data.stats,
            reward_model=str(Path(reward_path).expanduser().resolve()) if reward_path else None,
        ),
    )
    eval_dataset, best, stopper = evaluation_during_training(cfg, data.eval, writer)
    callbacks = [*schedule_callbacks, MetricsFileCallback(output_dir), *(c for c in (best, stopper) if c is not None)]
    ctx = TaskContext(
        cfg=cfg,
        model=model,
        tokenizer=tokenizer,
        train_dataset=data.train,
        eval_dataset=eval_dataset,
        output_dir=output_dir,
        precision=precision,
        callbacks=[*callbacks, *extra_callbacks],
        source=source,
        injection=injection,
        routing=find_recorder(model),
    )
    trainer = task.build_trainer(ctx)
    if trainer_hook is not None:
        trainer_hook(trainer)
    result = trainer.train(resume_from_checkpoint=resume_from)
    guard = trainer.nonfinite_guard
    if guard is not None and guard.stopped_at is not None:
        from forge_trl.models.checkpoint import list_checkpoints

        saved = list_checkpoints(output_dir)
        raise TrainingError(
            f"stopped at step {guard.stopped_at} after {cfg.max_nonfinite_steps} optimizer steps in a row with a "
            f"non-finite loss or gradient; no final/ was written; last good checkpoint: "
            f"{saved[-1] if saved else 'none'}. Lower task.learning_rate or check the data"
        )
    metrics = dict(result.metrics)
    last_loss = next((r["loss"] for r in reversed(trainer.state.log_history) if "loss" in r), None)
    if last_loss is not None:
        metrics["last_loss"] = last_loss
        if not math.isfinite(last_loss):
            log.warning("the last logged loss is %s", last_loss)
    # The last evaluation's metrics (eval_loss, eval/score_mean, ...), which a sweep can optimise.
    last_eval: dict = next((r for r in reversed(trainer.state.log_history) if any(k.startswith("eval") for k in r)), {})
    metrics.update({k: v for k, v in last_eval.items() if k.startswith("eval") and k not in NOT_FOLLOWED})
    if best is not None and best.best_step is not None:
        metrics.update(best_step=best.best_step, best_metric=best.best)
    if stopper is not None and stopper.stopped_at is not None:
        metrics["stopped_early_at"] = stopper.stopped_at

    trained = trainer.model
    # The optimizer's state (AdamW: two moments per trained weight) is not needed once training is over; freed
    # first, it is not held beside the gathered weights.
    if trainer.optimizer is not None:
        trainer.optimizer.state.clear()
    final = writer.write(trained, FINAL_DIR, trainer.state.global_step, metrics, overwrite=cfg.overwrite)
    if cfg.plot and distributed.is_main_process():
        plot_loss(output_dir, f"{task.name} · {injection.name} · {source.requested}")
    log.info("wrote %s", final)
    from forge_trl.bench.runner import bench_after_training

    if bench_after_training(cfg.bench) and distributed.is_main_process():
        # The bench reads final/ from disk in this one process; the others are done and need not wait for it.
        from forge_trl.bench.runner import run_bench

        run_bench([str(final)], cfg.bench, cfg.bench.out or output_dir)
    return final
