"""How remote commands reach a host: SSH through the proxy as bastion."""
from __future__ import annotations

from typing import Any, Optional

import pulumi
import pulumi_command as command

from .layout import Host
from .settings import Settings

# A new server answers SSH a minute or two after OpenStack calls it ACTIVE.
DIAL: dict[str, Any] = {"dial_error_limit": 40, "per_dial_timeout": 15}


def connection_for(settings: Settings, host: Host,
                   bastion: Optional[pulumi.Input[str]] = None) -> command.remote.ConnectionArgs:
    """Direct to the proxy at the bastion address; any other host by its fixed
    IP through the proxy. The bastion's host key is pinned when
    `idr:sshBastionHostKey` is set; internal hosts are only reachable through
    it (docs/design.md, "Remote commands and host keys"). `bastion`: the address as a value that
    resolves once it can be dialled (floatingip.Bastion); its text is always
    idr:sshBastion, so no stored connection changes with it."""
    host_key = settings.ssh_bastion_host_key or None
    if bastion is None:
        bastion = settings.ssh_bastion
    if host.role == "proxy":
        return command.remote.ConnectionArgs(
            host=bastion, user=settings.ssh_user,
            private_key=settings.ssh_private_key, host_key=host_key, **DIAL,
        )
    return command.remote.ConnectionArgs(
        host=host.fixed_ip, user=settings.ssh_user, private_key=settings.ssh_private_key, **DIAL,
        proxy=command.remote.ProxyConnectionArgs(
            host=bastion, user=settings.ssh_user,
            private_key=settings.ssh_private_key, host_key=host_key, **DIAL,
        ),
    )
