"""Settings for tests, built as the program builds them (build_settings).

One helper, so that a change of how Settings are made changes one place.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Mapping, Optional

from components.offline import effective_config
from components.settings import Settings, build_settings


@lru_cache(maxsize=None)
def _stack_config(stack: str) -> tuple[tuple[str, str], ...]:
    # Read once per stack: hypothesis builds settings hundreds of times.
    return tuple(effective_config(stack, {})[0].items())


def settings_for(stack: str = "prod", overrides: Optional[Mapping[str, Optional[str]]] = None, *,
                 base: Optional[Mapping[str, str]] = None,
                 secret: Callable[[str], Any] = lambda name: "secret") -> Settings:
    """Settings of `stack`: its real config (Pulumi.yaml's defaults, then
    Pulumi.<stack>.yaml), or only `base` when given (keys without the idr:
    prefix, over the model's defaults); then `overrides` (strings as the CLI
    passes them; None removes a key). `secret(name)` is a secret key's value."""
    config = ({f"idr:{k}": v for k, v in base.items()} if base is not None else dict(_stack_config(stack)))
    for key, value in (overrides or {}).items():
        if value is None:
            config.pop(f"idr:{key}", None)
        else:
            config[f"idr:{key}"] = value
    return build_settings(stack, lambda name: config.get(f"idr:{name}"), secret)
