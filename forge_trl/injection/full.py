"""Full fine-tuning: every weight trains and `final/` is a complete HF model directory.

Pretraining uses it (`task.full_parameter=true`); `injection=full` selects it for any task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from forge_trl.config import InjectionConfig
from forge_trl.injection import INJECTIONS
from forge_trl.injection.base import Injection


@dataclass
class FullConfig(InjectionConfig):
    name: str = "full"


@INJECTIONS.register("full")
class FullInjection(Injection[FullConfig]):
    name = "full"
    schema = FullConfig
    is_adapter = False

    def apply(self, model, head):
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def parameter_groups(self, model: torch.nn.Module) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {"base": [], "score": []}
        for name, _ in model.named_parameters():
            groups["score" if name.startswith("score.") else "base"].append(name)
        return {k: v for k, v in groups.items() if v}

    def save(self, model, out_dir: Path, state_dict=None) -> None:
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)

    def load_weights(self, model, ckpt_dir: Path) -> None:
        # A full checkpoint is loaded as the base model itself; there is no separate delta.
        return None

    def merged(self, model: torch.nn.Module) -> torch.nn.Module:
        return model
