"""Training tasks: one module per task, registered by name with `@TASKS.register(...)`, plus
`conf/task/<name>.yaml`. The contract is `forge_trl.tasks.base.Task`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forge_trl.registry import Registry

if TYPE_CHECKING:
    from forge_trl.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task", __name__)


def get_task(name: str) -> type[Task]:
    return TASKS.get(name)
