"""Forge checkpoints: `final/` = weights (safetensors) + tokenizer + resolved_config.yaml + forge_run.json
(a RunInfo, written and read by models/run_info.py). `best/` (`task.save_best`) has the same format, written at the
evaluation with the best metric.

`final/` (and `best/`) is written into a temporary sibling and renamed into place, so it is either complete or absent:
a crash or a bad input never leaves a half-written `final/`. Intermediate `checkpoint-N/` directories are staged
the same way (forge's Trainer hook in tasks/base.py, and forge's PPO), so a process killed while saving leaves the
previous checkpoint as the newest one that `resume=true` finds.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable

from forge_trl import distributed
from forge_trl.files import leftovers, restore_interrupted_swaps, write_dir_atomically
from forge_trl.injection.base import Injection
from forge_trl.models.run_info import RESOLVED_CONFIG_FILE, RunInfo, write_run_info

FINAL_DIR = "final"
BEST_DIR = "best"


def write_final(
    output_dir: Path,
    *,
    save_weights: Callable[[Path], None],
    tokenizer,
    resolved_config_yaml: str,
    run_info: RunInfo,
    overwrite: bool,
    name: str = FINAL_DIR,
) -> Path:
    """Write `<output_dir>/<name>/` (final/, or best/ with `name=BEST_DIR`) atomically: complete or absent."""

    def fill(tmp: Path) -> None:
        save_weights(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RESOLVED_CONFIG_FILE).write_text(resolved_config_yaml, encoding="utf-8")
        write_run_info(tmp, run_info)

    return write_dir_atomically(Path(output_dir) / name, fill, overwrite=overwrite)


class CheckpointWriter:
    """Writes this run's forge checkpoints, final/ and best/, from the live model: weights, tokenizer, resolved
    config and forge_run.json (`run_info` holds its fields that do not change while the run trains)."""

    def __init__(self, output_dir: Path, injection: Injection, tokenizer, resolved_config_yaml: str, run_info: dict):
        self.output_dir = output_dir
        self.injection = injection
        self.tokenizer = tokenizer
        self.resolved_config_yaml = resolved_config_yaml
        self.run_info = run_info

    def write(self, model, name: str, step: int, metrics: dict, *, overwrite: bool) -> Path:
        """Write `<output_dir>/<name>/` atomically; a collective: every process of the run calls it.

        Sharded (FSDP2), each process holds a shard of every weight: all of them take part in gathering what the
        injection writes onto the main process, which writes the directory from it in the same format as a
        one-process run; the others wait until it exists."""
        sharded = distributed.is_sharded(model)
        gathered = distributed.full_state_dict(model, self.injection.saved_parameter_names(model))
        if sharded:
            logging.getLogger("forge_trl").info(
                "FSDP2: gathered the weights of %d processes for %s/", distributed.group_size(), name
            )
        info = RunInfo(
            **self.run_info,
            step=step,
            metrics=metrics,
            launch={"processes": distributed.group_size(), "sharded": sharded},
        )
        distributed.on_main_then_wait(
            lambda: write_final(
                self.output_dir,
                save_weights=lambda tmp: self.injection.save(model, tmp, state_dict=gathered),
                tokenizer=self.tokenizer,
                resolved_config_yaml=self.resolved_config_yaml,
                run_info=info,
                overwrite=overwrite,
                name=name,
            )
        )
        return self.output_dir / name


CHECKPOINT_PREFIX = "checkpoint-"
# The file each kind of checkpoint writes last: its presence means the checkpoint is complete even where it was
# written in place (by an older forge_trl, or by plain transformers). HF Trainer's state, and forge's PPO state.
COMPLETE_MARKERS = ("trainer_state.json", "ppo_state.json")
STAGING_SUFFIX = ".partial"


def checkpoint_step(path: Path) -> int:
    return int(Path(path).name[len(CHECKPOINT_PREFIX) :])


def is_complete_checkpoint(path: Path) -> bool:
    return any((Path(path) / marker).is_file() for marker in COMPLETE_MARKERS)


def list_checkpoints(output_dir: Path, *, complete_only: bool = True) -> list[Path]:
    """Intermediate `checkpoint-N` directories of a run, oldest first; by default only complete ones."""
    found = [
        p
        for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir()
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (not complete_only or is_complete_checkpoint(p))
    ]
    return sorted(found, key=checkpoint_step)


def staging_dir(output_dir: Path) -> Path:
    """Where a checkpoint is written before it is renamed into `output_dir`. The name carries no process id, so
    every rank of a multi-process run writes its shards into the same place; the leading dot keeps it out of
    `list_checkpoints` and out of transformers' own `checkpoint-N` search."""
    return Path(output_dir) / f".{CHECKPOINT_PREFIX}staging{STAGING_SUFFIX}"


def discard_partial_checkpoints(output_dir: Path) -> list[Path]:
    """Remove what a killed process left half-written: staged checkpoints and temporary `final/`, `best/` or PPO
    checkpoint siblings. Returns what was removed. A `final/`, `best/` or checkpoint that a process stopped in the
    middle of swapping left only as its `.old-` sibling is put back first (complete: it was the previous version)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    for restored in restore_interrupted_swaps(output_dir):
        logging.getLogger("forge_trl").warning(
            "restored %s, which an interrupted replacement had moved aside", restored
        )
    found = [p for p in output_dir.iterdir() if p.is_dir() and p.name.startswith(f".{CHECKPOINT_PREFIX}")]
    found += leftovers(output_dir, FINAL_DIR) + leftovers(output_dir, BEST_DIR)
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(found)
