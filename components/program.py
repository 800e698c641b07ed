"""The whole program: settings -> IdrEnvironment -> stack outputs.

`__main__.py` (pulumi up) hands `main` to `pulumi.run`, the SDK's async
entrypoint, and `components.offline` (tests, offline render) awaits the same
`main()`, so what is tested is what is deployed.
"""
from __future__ import annotations

import pulumi

from . import identity
from . import settings as settings_module
from .environment import IdrEnvironment, IdrEnvironmentArgs


async def main() -> dict:
    s = settings_module.load()
    # Before any other resource: what is deployed refuses what would harm it
    # (awaited: nothing else is declared until the stack's own outputs are read).
    deployed = identity.deployed_from(await identity.read_deployed())
    identity.check(s, deployed)
    env = IdrEnvironment(s.environment, IdrEnvironmentArgs(s, deployed))
    outputs = {**env.outputs, identity.OUTPUT: identity.recorded(s)}
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
