"""A forge PPO run that records what tests/test_ppo_distributed.py compares, in one process or launched.

    python -m accelerate.commands.launch --config_file conf/accelerate/fsdp2.yaml -m tests.ppo_probe PROBE_DIR \
        task=ppo output_dir=... [overrides]

`probe_run` trains with `forge_trl.train.run` as `python -m forge_trl` does, and writes into PROBE_DIR:
- `initial.safetensors` (process 0): the trainable state before the first step (after a resume: as resumed),
  gathered whole;
- `gradients.safetensors` (process 0): every trainable gradient of the first optimizer update, whole (gathered
  when sharded), as the optimizer sees it (averaged over the processes and clipped);
- `rank<r>.safetensors` (each process): the trainable tensors this process holds after training, as they are
  (a shard stays a shard), and `rank<r>.json`: which of them are shards, and the process count;
- `whole.safetensors` (process 0): the trainable state after training, gathered whole.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from forge_trl.rl.ppo_parallel import is_shard, whole

INITIAL = "initial.safetensors"
GRADIENTS = "gradients.safetensors"
WHOLE = "whole.safetensors"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class PPOProbe(TrainerCallback):
    def __init__(self, probe_dir: Path):
        self.probe_dir = Path(probe_dir)
        self.trainer = None
        self.recorded_gradients = False

    def attach(self, trainer) -> None:  # run()'s trainer_hook
        self.trainer = trainer

    def _trainable(self):
        assert self.trainer is not None, "PPOProbe.attach was not called"
        return self.trainer.models.trainable_parameters()

    def on_train_begin(self, args, state, control, **kwargs):
        initial = {name: whole(p) for name, p in self._trainable()}  # a collective
        if _rank() == 0:
            _save(initial, self.probe_dir / INITIAL)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.recorded_gradients:
            return
        self.recorded_gradients = True
        gradients = {name: whole(p.grad) for name, p in self._trainable() if p.grad is not None}  # a collective
        if _rank() == 0:
            _save(gradients, self.probe_dir / GRADIENTS)

    def record_weights(self) -> None:
        """After training: this process's tensors, and (process 0) the gathered whole state."""
        from safetensors.torch import save_file

        held = {name: (p.to_local() if is_shard(p) else p).detach().cpu().clone() for name, p in self._trainable()}
        save_file(held, str(self.probe_dir / f"rank{_rank()}.safetensors"))
        shards = sorted(name for name, p in self._trainable() if is_shard(p))
        info = {"world_size": self.trainer.args.world_size, "shards": shards}
        (self.probe_dir / f"rank{_rank()}.json").write_text(json.dumps(info), encoding="utf-8")
        gathered = {name: whole(p) for name, p in self._trainable()}  # a collective
        if _rank() == 0:
            _save(gathered, self.probe_dir / WHOLE)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def probe_run(probe_dir: Path, overrides: list[str]) -> Path:
    """One forge run with the probe attached; returns its final/."""
    from forge_trl.commands.compose import compose
    from forge_trl.train import run

    probe_dir = Path(probe_dir)
    probe_dir.mkdir(parents=True, exist_ok=True)
    probe = PPOProbe(probe_dir)
    final = run(compose(overrides), extra_callbacks=(probe,), trainer_hook=probe.attach)
    probe.record_weights()
    return final


if __name__ == "__main__":
    from forge_trl.commands.console import setup_logging

    setup_logging()  # forge's log lines, as `python -m forge_trl` prints them
    probe_run(Path(sys.argv[1]), sys.argv[2:])
