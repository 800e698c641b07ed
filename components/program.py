"""The whole program: settings -> IdrEnvironment -> stack outputs.

`__main__.py` (pulumi up) and `components.offline` (tests, offline render)
both call `main()`, so what is tested is what is deployed.
"""
from __future__ import annotations

import pulumi

from . import settings as settings_module
from .environment import IdrEnvironment, IdrEnvironmentArgs


def main() -> dict:
    s = settings_module.load()
    env = IdrEnvironment(s.environment, IdrEnvironmentArgs(s))
    for key, value in env.outputs.items():
        pulumi.export(key, value)
    return env.outputs
