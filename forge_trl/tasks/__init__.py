"""Training tasks: one module per task, registered by name with `@TASKS.register(...)`, plus
`conf/task/<name>.yaml`. The contract is `forge_trl.tasks.base.Task`."""

from forge_trl.registry import Registry

TASKS = Registry("task", __name__)


def get_task(name: str):
    return TASKS.get(name)
