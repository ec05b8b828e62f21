"""The non-finite guard: a bad step is skipped without touching the weights; a run that stays bad stops."""

import pytest
import torch
from transformers import TrainerCallback

from forge_trl.errors import TrainingError
from forge_trl.models.checkpoint import list_checkpoints
from tests.injection_support import ParamWatcher, train_in_process


class PoisonLoss(TrainerCallback):
    """Makes the model's output NaN during the optimizer steps listed in `steps` (0-based global steps)."""

    def __init__(self, steps):
        self.steps, self.current = set(steps), -1

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def poison(_module, _args, output):
            return output * float("nan") if self.current in self.steps else output

        model.get_base_model().model.norm.register_forward_hook(poison)  # TRL fuses lm_head; poison before it

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = state.global_step


def test_one_non_finite_step_is_skipped_and_leaves_the_weights_alone(tmp_path):
    watcher = ParamWatcher()
    final, _, metrics = train_in_process(
        tmp_path,
        "task=sft",
        "data=demo_sft",
        "task.learning_rate=1e-3",
        "task.warmup_steps=0",
        "task.lr_scheduler_type=constant",
        steps=4,
        callbacks=(PoisonLoss({1}), watcher),
    )
    assert final.is_dir()
    assert [bool(changed) for changed in watcher.changed_per_step] == [True, False, True, True]
    assert max(r.get("nonfinite_skipped", 0) for r in metrics) == 1
    assert all(torch.isfinite(p).all() for p in watcher.model.parameters())


def test_a_run_that_stays_non_finite_stops_without_a_final(tmp_path):
    with pytest.raises(TrainingError, match="stopped at step 3 after 2 optimizer steps in a row") as failure:
        train_in_process(
            tmp_path,
            "task=sft",
            "data=demo_sft",
            "max_nonfinite_steps=2",
            "task.save_steps=1",
            steps=6,
            callbacks=(PoisonLoss({1, 2, 3, 4, 5}),),
        )
    assert not (tmp_path / "final").exists()
    # Skipped steps leave the weights as they were, so the newest checkpoint is a good one, and it is named.
    newest = list_checkpoints(tmp_path)[-1]
    assert f"last good checkpoint: {newest}" in str(failure.value)
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(newest / "adapter_model.safetensors")).values())
