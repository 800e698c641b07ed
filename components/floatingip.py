"""The proxy's floating IP: a guard, then the association.

Neutron moves an IP to whichever port asks, and the association's delete
unbinds the IP wherever it is by then. So one stack must never take an IP
another environment's port holds: the guard looks it up before anything is
declared, and the association is protected so that a plain `pulumi destroy`
of an environment holding an IP refuses (release it with the swap command).
"""
from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_openstack as openstack

from . import identity
from .settings import Settings


class FloatingIpHeld(pulumi.RunError):
    """The configured IP is bound to a port of another environment."""


def release_hint(holder_env: str, this_stack: str = "<this stack>") -> str:
    return (f"release it in the {holder_env} environment first: "
            f"`python -m operations.swap --from {holder_env} --to {this_stack}`, or by hand "
            f"`pulumi state unprotect -s {holder_env} <its floatingIpUrn output> && "
            f"pulumi config rm idr:floatingIp -s {holder_env} && pulumi up -s {holder_env} --policy-pack policy`")


def check_floating_ip(settings: Settings) -> None:
    """Refuse an IP whose port belongs to another environment (or to no proxy)."""
    ip = settings.floating_ip
    try:
        fip = openstack.networking.get_floating_ip(address=ip)
    except Exception as error:  # the provider's "no results" is an exception
        raise FloatingIpHeld(f"config idr:floatingIp = {ip!r}: not found among this project's floating IPs "
                             f"(allocate it first: openstack floating ip create --floating-ip-address {ip} "
                             f"{settings.external_network}); lookup said: {error}") from None
    if not fip.port_id:
        return
    port = openstack.networking.get_port(port_id=fip.port_id)
    ours = f"{settings.environment}-proxy"
    if port.name == ours:
        return
    holder_env = port.name[: -len("-proxy")] if port.name.endswith("-proxy") else None
    holder = f"port {port.name or '(unnamed)'} ({fip.port_id})"
    if holder_env and holder_env == identity.deployed_environment():
        # The holder is this very stack, deployed under another environment
        # name: releasing the IP "there" would tear this environment down.
        raise FloatingIpHeld(
            f"config idr:floatingIp = {ip!r} is held by {holder}: this stack's own proxy, deployed as environment "
            f"{holder_env}, while config now names it {settings.environment}. Nothing is released and nothing is "
            f"renamed: set `pulumi config set idr:environment {holder_env} -s {settings.stack}` to keep the running "
            f"environment; a differently named one is a new stack from this one's volumes and the swap command")
    if holder_env:
        raise FloatingIpHeld(f"config idr:floatingIp = {ip!r} is held by {holder} of environment "
                             f"{holder_env}; {release_hint(holder_env, settings.stack)}")
    raise FloatingIpHeld(f"config idr:floatingIp = {ip!r} is held by {holder}, which is no IDR proxy; "
                         f"free it with `openstack floating ip unset --port {ip}` once you are sure it is unused")


def associate(settings: Settings, port: openstack.networking.Port,
              parent: pulumi.Resource) -> Optional[openstack.networking.FloatingIpAssociate]:
    """Bind the configured IP to the proxy's port (call check_floating_ip first)."""
    if not settings.floating_ip:
        return None
    return openstack.networking.FloatingIpAssociate(
        f"{settings.environment}-proxy-floating-ip", floating_ip=settings.floating_ip, port_id=port.id,
        # Unbind before binding anew: an IP may be held by one association only.
        opts=pulumi.ResourceOptions(parent=parent, protect=True, delete_before_replace=True))
