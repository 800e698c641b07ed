"""Settings for tests, built as the program builds them (build_settings).

One factory (`settings_for`), so that a change of how Settings are made
changes one place; the presets shared by several test modules call it.
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


# Secret vars the deployment step accepts (components/validators.py
# REQUIRED_SECRET_VARS), for settings built with the step on.
SECRET_VARS = ("omero_server_rootpassword: root-pw\nidr_secret_postgresql_password: pg-pw\n"
               "idr_secret_postgresql_password_ro: ro-pw\n")

# The Bio-Formats cache regeneration's tests: a "test" stack, three read-only servers.
BFCACHE_RAW = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY test", "sshBastion": "203.0.113.10",
               "omeroreadonlyCount": "3", "bfcacheGeneration": "2",
               # The deployment step's checkout (a pinned commit); tests of the
               # 'waiting' behaviour turn deploymentEnabled off.
               "deploymentRef": "0123456789abcdef0123456789abcdef01234567", "deploymentSecretVars": SECRET_VARS}


def bfcache_settings(**raw) -> Settings:
    """BFCACHE_RAW with `raw` over it (values as str())."""
    values = {**BFCACHE_RAW, **{k: str(v) if not isinstance(v, str) else v for k, v in raw.items()}}
    return settings_for("test", base=values, secret=lambda k: "KEY" if k == "sshPrivateKey" else None)


# The proxy's tests (tests/support/nginx.py): a "test" stack, two read-only servers.
PROXY_RAW = {
    "sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY test",
    "sshBastion": "203.0.113.10",
    "omeroreadonlyCount": "2",
    "deploymentEnabled": "false",     # the playbooks' step is not the proxy's concern
}


def proxy_settings(stack: str = "test", secrets: dict | None = None, **raw) -> Settings:
    """PROXY_RAW with `raw` over it, as Pulumi would hand them (booleans
    "true"/"false"); `secrets` are the secret keys' values (idr:tlsPrivateKey)."""
    values = {**PROXY_RAW, **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in raw.items()}}
    return settings_for(stack, base=values, secret={"sshPrivateKey": "PRIVATE KEY", **(secrets or {})}.get)
