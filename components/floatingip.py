"""The proxy's floating IP: a guard, then the association.

The guard refuses an IP another environment's port holds, and the association
is protected. One exception: while the swap (operations/swap/) runs in its
direct order, its record (components/swap_record.py) lets the stack it moves
the IP *to* take it, and the stack it moves it *from* declares its association
`retain_on_delete`. Why, with the Neutron and provider sources:
docs/design.md, "Safety rules built in" and "Why the swap moves the IP in one
Neutron update".
"""
from __future__ import annotations

import asyncio
from typing import Optional

import pulumi
import pulumi_openstack as openstack

from . import PROJECT
from .settings import Settings
from .swap_record import CONFIG_KEY as SWAP_RECORD, KEY as SWAP_KEY, NAMESPACE as SWAP_NAMESPACE, Record
from .swap_record import association_name, association_urn as _association_urn, moving_directly


class FloatingIpHeld(pulumi.RunError):
    """The configured IP is bound to a port of another environment."""


def association_urn(stack: str, environment: str) -> str:
    return _association_urn(stack, environment, pulumi.get_project() or PROJECT)


class Bastion:
    """The address remote commands reach the proxy at (idr:sshBastion).

    No resource may depend on the association (the swap removes it with
    `pulumi up --target`), yet the first remote command must not dial the IP
    before it is bound: when the bastion is that IP, `address` is an awaitable
    Input that resolves, to the same text, once the association is created,
    ordered by value with no dependency in the state. A host's first steps
    take it; every other step waits for those. Why: docs/design.md, "Remote
    commands and host keys"."""

    def __init__(self, settings: Settings):
        self.text = settings.ssh_bastion
        self.follows_ip = bool(settings.floating_ip) and settings.ssh_bastion == settings.floating_ip
        self._bound: Optional[asyncio.Future] = asyncio.get_event_loop().create_future() if self.follows_ip else None

    @property
    def address(self) -> pulumi.Input[str]:
        return self._bound if self._bound is not None else self.text

    def bound_by(self, association: Optional[openstack.networking.FloatingIpAssociate]) -> None:
        if self._bound is None:
            return
        if association is None:
            self._bound.set_result(self.text)
            return

        bound = self._bound

        async def registered() -> None:
            # Once the association's registration has returned, in a preview
            # too (with_unknowns). Its failure fails the steps that wait, so
            # that nothing waits for ever.
            try:
                await association.floating_ip.future(with_unknowns=True)
            except Exception as error:  # noqa: BLE001 - handed on, not swallowed
                if not bound.done():
                    bound.set_exception(error)
                    # Marked as seen: the association's own failure is the one
                    # reported; an unseen one would be logged when the future
                    # is collected, at any later point of the process.
                    bound.exception()
                return
            if not bound.done():
                bound.set_result(self.text)
        asyncio.ensure_future(registered())


def pin_bastion_command(stack: str, ip: str) -> str:
    """Sets idr:sshBastion to `ip` unless the stack names a bastion already.
    Not `pulumi config get ... || pulumi config set ...`: the key's default
    ('') makes `config get` succeed (config.go ApplyProjectConfig) and the
    set would never run."""
    return (f"[ -n \"$(pulumi config get idr:sshBastion -s {stack})\" ] || "
            f"pulumi config set idr:sshBastion {ip} -s {stack}")


def release_hint(holder_env: str, this_stack: str = "<this stack>", ip: str = "<the IP>") -> str:
    """How to release `ip` in the stack of environment `holder_env` (named
    like it, as this project's stacks are): a procedure that works as written."""
    s = holder_env
    urn = association_urn(s, holder_env)
    return (f"release it in the {holder_env} environment first. The swap command moves it here in one Neutron "
            f"update and gives {s} this stack's IP: `python -m operations.swap --from {s} --to {this_stack}`. "
            f"By hand, release it in {s} (the public IP then answers nothing until this stack has taken it):\n"
            f"  pulumi state unprotect -s {s} '{urn}'\n"
            f"  {pin_bastion_command(s, ip)}"
            f"   # required once idr:floatingIp is empty; point it at {s}'s proxy before its next full update\n"
            f"  pulumi config rm idr:floatingIp -s {s}\n"
            f"  pulumi up -s {s} --policy-pack policy --target '{urn}'\n"
            f"then run this update again")


def swap_in_progress() -> Optional[Record]:
    """The swap record of this stack's config when a swap in the direct
    order is in progress, else None (components/swap_record.py)."""
    return moving_directly(pulumi.Config(SWAP_NAMESPACE).get(SWAP_KEY))


def taking_over(settings: Settings, holder_env: str) -> bool:
    """This stack takes idr:floatingIp from environment `holder_env` in a swap in progress."""
    r = swap_in_progress()
    return r is not None and r.takes_over(settings.stack, settings.floating_ip, holder_env)


def handing_over(settings: Settings) -> bool:
    """This stack hands idr:floatingIp over in a swap in progress."""
    r = swap_in_progress()
    return r is not None and r.hands_over(settings.stack, settings.floating_ip)


def check_floating_ip(settings: Settings, deployed_environment: Optional[str]) -> None:
    """Refuse an IP whose port belongs to another environment (or to no proxy).
    `deployed_environment`: the environment this stack's last update deployed
    (identity.Deployed.environment; None before the first update)."""
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
    name = port.name or ""
    holder_env = name[: -len("-proxy")] if name.endswith("-proxy") else None
    holder = f"port {port.name or '(unnamed)'} ({fip.port_id})"
    if holder_env and holder_env == deployed_environment:
        # The holder is this very stack, deployed under another environment
        # name: releasing the IP "there" would tear this environment down.
        raise FloatingIpHeld(
            f"config idr:floatingIp = {ip!r} is held by {holder}: this stack's own proxy, deployed as environment "
            f"{holder_env}, while config now names it {settings.environment}. Nothing is released and nothing is "
            f"renamed: set `pulumi config set idr:environment {holder_env} -s {settings.stack}` to keep the running "
            f"environment; a differently named one is a new stack from this one's volumes and the swap command")
    if holder_env and taking_over(settings, holder_env):
        pulumi.log.info(f"idr:floatingIp {ip} is held by {holder} of environment {holder_env}: the swap in progress "
                        f"(config {SWAP_RECORD}) moves it to this stack's proxy in one Neutron update")
        return
    if holder_env:
        raise FloatingIpHeld(f"config idr:floatingIp = {ip!r} is held by {holder} of environment "
                             f"{holder_env}; {release_hint(holder_env, settings.stack, ip)}")
    raise FloatingIpHeld(f"config idr:floatingIp = {ip!r} is held by {holder}, which is no IDR proxy; "
                         f"free it with `openstack floating ip unset --port {ip}` once you are sure it is unused")


def associate(settings: Settings, port: openstack.networking.Port,
              parent: pulumi.Resource) -> Optional[openstack.networking.FloatingIpAssociate]:
    """Bind the configured IP to the proxy's port (call check_floating_ip first)."""
    if not settings.floating_ip:
        return None
    return openstack.networking.FloatingIpAssociate(
        association_name(settings.environment), floating_ip=settings.floating_ip, port_id=port.id,
        # Unbind before binding anew: an IP may be held by one association
        # only. Retained while a swap hands the IP over (module docstring).
        opts=pulumi.ResourceOptions(parent=parent, protect=True, delete_before_replace=True,
                                    retain_on_delete=handing_over(settings)))
