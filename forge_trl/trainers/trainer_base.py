"""The base class of the trainer mixins, for the type checker only.

Each mixin sits in front of a transformers `Trainer` in the MRO and uses its attributes (`args`, `state`,
`accelerator`, `model`, ...). The type checker sees `transformers.Trainer` as the mixins' base, so those are
declared; at runtime the base is `object`, so a mixin adds nothing to the MRO of the trainers built from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import Trainer as TrainerBase
else:
    TrainerBase = object

__all__ = ["TrainerBase"]
