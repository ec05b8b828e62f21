"""Injection strategies: how trainable parameters are added to a base model.

Each strategy is one module in this package, registered by name with `@INJECTIONS.register(...)`, plus
`conf/injection/<name>.yaml`. The contract is `forge_trl.injection.base.Injection`.
"""

from forge_trl.registry import Registry

INJECTIONS = Registry("injection", __name__)


def get_injection(name: str):
    return INJECTIONS.get(name)
