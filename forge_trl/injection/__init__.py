"""Injection strategies: how trainable parameters are added to a base model.

Each strategy is one module in this package, registered by name with `@INJECTIONS.register(...)`, plus
`conf/injection/<name>.yaml`. The contract is `forge_trl.injection.base.Injection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forge_trl.registry import Registry

if TYPE_CHECKING:
    from forge_trl.injection.base import Injection

INJECTIONS: Registry[type[Injection]] = Registry("injection", __name__)


def get_injection(name: str) -> type[Injection]:
    return INJECTIONS.get(name)
