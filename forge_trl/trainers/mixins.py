"""The one-job mixins every forge trainer is built from.

Each mixin takes its feature through the trainer's constructor (a keyword argument it consumes before calling
the next class's `__init__`), never as a flag set afterwards:

| mixin                         | keyword              | job                                                   |
|-------------------------------|----------------------|-------------------------------------------------------|
| `RoutingMixin`                | `routing`            | balancing loss of routed injections, routing metrics  |
| `NonFiniteGuardMixin`         | `max_nonfinite_steps`| skip optimizer steps with non-finite gradients        |
| `AtomicCheckpointMixin`       | -                    | `checkpoint-N/` complete or absent; base_ffn weights  |
| `PretokenizedPreferenceMixin` | -                    | train DPO from a `forge-trl preprocess` cache          |
| `ShardedLaunchMixin`          | -                    | an FSDP launch shards on CPU processes too             |
| `SplitPairsMixin` (split_pairs.py) | `split_pairs`   | chosen and rejected through the policy one at a time  |
| `PackedRowsMixin` (packing.py)     | `packed_rows`   | packed rows without flash attention                   |

`ForgeTrainerMixin` bundles the first three and `ShardedLaunchMixin`, which every trainer gets; the named trainer
classes in this package (`ForgeDPOTrainer`, ...) put it in front of TRL's trainer.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from forge_trl.distributed import mean_over_processes, write_launch_record
from forge_trl.files import is_storage_failure, publish, storage_error
from forge_trl.injection.base import EXTRA_TRAINABLE_FILE, restore_named_parameters
from forge_trl.injection.routing import RoutingRecorder
from forge_trl.models.checkpoint import CHECKPOINT_PREFIX, list_checkpoints, staging_dir
from forge_trl.trainers.callbacks import NonFiniteGuard
from forge_trl.trainers.trainer_base import TrainerBase

ROUTING_FILE = "routing.jsonl"


class RoutingMixin(TrainerBase):
    """Adds a routed injection's balancing loss to the task loss and its routing metrics to the training logs,
    whatever the TRL trainer's own MoE support. `routing=None` (no routed injection) leaves the trainer as it is."""

    def __init__(self, *args, routing: RoutingRecorder | None = None, **kwargs):
        self.routing = routing
        self._aux_values: list[torch.Tensor] = []
        super().__init__(*args, **kwargs)
        if routing is not None and self.is_world_process_zero():
            # A rerun starts a fresh per-expert share file.
            (Path(self.args.output_dir) / ROUTING_FILE).write_text("", encoding="utf-8")

    def compute_loss(self, model, inputs, *args, **kwargs):
        recorder = self.routing
        if recorder is None or not model.training:
            return super().compute_loss(model, inputs, *args, **kwargs)
        with recorder.collect():
            out = super().compute_loss(model, inputs, *args, **kwargs)
        aux = recorder.pop_loss()
        if aux is None:
            return out
        self._aux_values.append(aux.detach())  # averaged when logged: no device sync per step
        if recorder.coef == 0:
            return out
        weighted = recorder.coef * aux
        # Trainer divides the loss by the accumulation steps unless the loss was already normalised over the
        # whole accumulated batch (num_items_in_batch); the per-micro-batch aux loss then needs the division here.
        num_items = kwargs.get("num_items_in_batch")
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False) and num_items is not None) or (
                getattr(self, "compute_loss_func", None) is not None
            )
        if scaled:
            weighted = weighted / max(getattr(self, "current_gradient_accumulation_steps", 1), 1)
        if isinstance(out, tuple):
            return (out[0] + weighted, *out[1:])
        return out + weighted

    def log(self, logs, *args, **kwargs):
        if self.routing is not None and "loss" in logs:
            # Every process logs at the same steps: the aux loss is averaged and the routing statistics summed over
            # them, so a multi-process run logs global values (a DDP or FSDP2 rank sees one micro-batch of each
            # step; the mean over ranks is what one process with gradient accumulation logs).
            if self._aux_values:
                aux = mean_over_processes(torch.stack(self._aux_values).float().mean())
                logs["moe/aux_loss"] = float(aux)
                self._aux_values.clear()
            self.routing.sum_over_processes()
            shares = self.routing.expert_shares()
            logs.update(self.routing.pop_metrics())
            if shares and self.is_world_process_zero():
                # Per-layer, per-expert token shares are too many for the log line; they go to routing.jsonl.
                record = {"step": self.state.global_step, "expert_share": shares}
                with (Path(self.args.output_dir) / ROUTING_FILE).open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
        return super().log(logs, *args, **kwargs)


class NonFiniteGuardMixin(TrainerBase):
    """Skips optimizer steps whose gradients are not finite (see `NonFiniteGuard`) and counts them in the logs
    as `nonfinite_skipped`. `self.nonfinite_guard.stopped_at` tells the run whether training stopped for it."""

    def __init__(self, *args, max_nonfinite_steps: int | None = None, callbacks=None, **kwargs):
        self.nonfinite_guard = NonFiniteGuard(max_nonfinite_steps) if max_nonfinite_steps else None
        # After the run's own callbacks: a phase schedule drops frozen groups' gradients before the check.
        callbacks = [*(callbacks or []), *([self.nonfinite_guard] if self.nonfinite_guard else [])]
        super().__init__(*args, callbacks=callbacks, **kwargs)

    def log(self, logs, *args, **kwargs):
        if self.nonfinite_guard is not None and "loss" in logs and self.nonfinite_guard.skipped:
            logs["nonfinite_skipped"] = self.nonfinite_guard.skipped
        return super().log(logs, *args, **kwargs)


class AtomicCheckpointMixin(TrainerBase):
    """Makes intermediate checkpoints atomic and complete (see `_save_checkpoint`), including the base weights
    that `base_ffn` phases train and a PEFT adapter checkpoint leaves out."""

    _staging: Path | None = None  # set only while a checkpoint is being staged

    def _get_output_dir(self, trial):
        if self._staging is not None:
            return str(self._staging)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        """Write `checkpoint-N` as transformers does, but into a hidden staging directory, and rename it into
        place only once every file is there.

        transformers 5.23 writes straight into `checkpoint-N` (weights, then optimizer, RNG, trainer_state.json),
        so a process killed mid-save leaves a directory that looks like the newest checkpoint but lacks some of
        its state. Staged, a killed save leaves only the staging directory, which `resume=true` never considers
        and the next run discards. Rotation runs after the rename, so the previous checkpoint is deleted only
        once its successor is complete.

        The staged checkpoint is fsynced before its rename (see forge_trl.files), so it also survives a power cut.
        When the disk refuses a write (full, quota, I/O error), the staging directory is removed and the save
        fails with a one-line StorageError; the previous checkpoint stays the newest."""
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(super()._get_output_dir(trial))
        staging = staging_dir(run_dir)
        name = f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        staged, target = staging / name, run_dir / name
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            with self._optimizer_state_for_every_parameter():
                super()._save_checkpoint(model, trial)
            self._staging = None
            if self.args.should_save:
                write_launch_record(staged)
                self._save_extra_trainable(staged)
                self._point_best_checkpoint_at(run_dir, staged)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                publish(staged, target)  # a checkpoint-N saved again at the same step is swapped, never absent
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            newest = next(iter(list_checkpoints(run_dir)[-1:]), None)
            raise storage_error(exc, target, newest) from exc
        finally:
            self._staging = None
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def _optimizer_state_for_every_parameter(self):
        """While a sharded checkpoint is saved, give every optimized parameter an optimizer state.

        A parameter a phase schedule has not trained yet (base_ffn from step N, say) has none. One process saves
        that fine, but a sharded (DCP) optimizer checkpoint is loaded into a state that torch builds for every
        parameter that requires grad at load time (the schedule's whole union, before it enters the phase), and
        DCP refuses a checkpoint that lacks one of them. The stand-in is the state the optimizer starts from
        (zeros, step 0), which for AdamW continues exactly like no state. It is removed again after the save, so
        the running optimizer is unchanged."""
        from forge_trl.distributed import is_sharded

        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or not is_sharded(self.model):
            yield
            return
        stated = next((p for p, state in optimizer.state.items() if state), None)
        template = optimizer.state[stated] if stated is not None else {}
        # Only for optimizers whose per-parameter state is scalars and tensors shaped like the parameter (Adam's).
        shaped_like_param = all(
            not torch.is_tensor(v) or v.dim() == 0 or v.shape == stated.shape for v in template.values()
        )
        padded = []
        if template and shaped_like_param:
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if not optimizer.state.get(param):
                        optimizer.state[param] = {
                            k: (torch.zeros_like(param) if v.dim() else torch.zeros_like(v))
                            if torch.is_tensor(v)
                            else v
                            for k, v in template.items()
                        }
                        padded.append(param)
        try:
            yield
        finally:
            for param in padded:
                del optimizer.state[param]

    def _point_best_checkpoint_at(self, run_dir: Path, staged: Path) -> None:
        """transformers looked for the best checkpoint in the staging directory; record its final place."""
        best_step = self.state.best_global_step
        if not best_step:
            return
        best = run_dir / f"{CHECKPOINT_PREFIX}{best_step}"
        if best_step == self.state.global_step or best.is_dir():
            self.state.best_model_checkpoint = str(best)
            self.state.save_to_json(str(staged / "trainer_state.json"))

    def _extra_trainable(self, model) -> dict[str, torch.nn.Parameter]:
        """Parameters the optimizer updates that a PEFT adapter checkpoint leaves out: base weights trained by
        `base_ffn` phases. Without them a resumed run would restart those weights from the base model. (Anything
        not named `lora_` is taken, so a `modules_to_save` head is stored twice; it is small.)"""
        from peft import PeftModel

        from forge_trl.distributed import is_sharded

        if not isinstance(model, PeftModel) or self.optimizer is None or is_sharded(model):
            # Sharded (FSDP2), these would need gathering; resuming such a checkpoint is refused (train.py).
            return {}
        optimized = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        return {name: p for name, p in model.named_parameters() if id(p) in optimized and "lora_" not in name}

    def _save_extra_trainable(self, checkpoint: Path) -> None:
        from safetensors.torch import save_file

        extra = self._extra_trainable(self.accelerator.unwrap_model(self.model))
        if extra:
            tensors = {n: p.detach().contiguous().cpu() for n, p in extra.items()}
            save_file(tensors, str(checkpoint / EXTRA_TRAINABLE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / EXTRA_TRAINABLE_FILE
        if path.is_file():
            restore_named_parameters(model if model is not None else self.model, path)


class PretokenizedPreferenceMixin(TrainerBase):
    """A `forge-trl preprocess` preference cache is already tokenized exactly as DPOTrainer would do it; TRL 1.16
    has no switch to skip its own tokenization, which would look for text columns."""

    def _prepare_dataset(self, dataset, *args, **kwargs):
        from forge_trl.data.token_cache import is_pretokenized_preference

        if is_pretokenized_preference(dataset):
            return dataset
        return super()._prepare_dataset(dataset, *args, **kwargs)


class ShardedLaunchMixin(TrainerBase):
    """Under `accelerate launch --config_file conf/accelerate/fsdp2.yaml` on CPU processes, shard with FSDP2 as
    on GPUs (see `forge_trl.distributed.accelerate_fsdp_on_cpu`); any other launch is left as it is."""

    def create_accelerator_and_postprocess(self):
        from forge_trl.distributed import accelerate_fsdp_on_cpu

        with accelerate_fsdp_on_cpu():
            return super().create_accelerator_and_postprocess()


class ForgeTrainerMixin(ShardedLaunchMixin, RoutingMixin, NonFiniteGuardMixin, AtomicCheckpointMixin):
    """What every forge trainer adds to its TRL trainer."""
