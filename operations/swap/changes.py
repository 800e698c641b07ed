"""The small changes a swap makes to one stack (config, protection, a
targeted update), each announced and kept in the stack's `Side`, and the
checks of what an update left. What the steps are made of."""
from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from components.swap_record import CONFIG_KEY as RECORD, Record, association_name

from ..common import FloatingIpHolder, OpenStack, OperationError, Pulumi
from .observe import BASTION, FLOATING_IP, Observed, Side, observe

# The engine's line when the association's step starts (non-interactive
# display: "<op> <type> <name> creating (0s)"): the moment OpenStack is asked.
STEP_STARTS = re.compile(r"\b(creating|updating|deleting|replacing)\b")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Asked:
    """When this run asked OpenStack to move (or unbind) the public IP."""
    at: Optional[float] = None   # time.monotonic()
    utc: str = ""                # the same, as UTC time
    measured: bool = False       # this run has measured how long the public IP answered nothing


@dataclass
class Run:
    """The two stacks and the cloud one run of the swap works on, and how it checks and reports."""
    pulumi: Pulumi
    openstack: OpenStack
    old: Side
    new: Side
    command: str                                        # the command that continues this swap
    say: Callable[[str], None] = print
    http_port: int = 80
    wait_seconds: float = 120.0
    poll_seconds: float = 0.25
    smoke: Optional[Callable[[str], list[str]]] = None  # the release gate (operations/smoke.py); None: skipped
    asked: Asked = field(default_factory=Asked)

    # ------------------------------------------------------------ reading
    def holder(self, ip: str) -> FloatingIpHolder:
        return self.openstack.floating_ip(ip)

    def holds(self, side: Side, ip: str) -> bool:
        return self.holder(ip).port_name == side.port

    def observe(self, r: Record) -> Observed:
        return observe(self.old, self.new, self.openstack, r)

    # ------------------------------------------------------------ config
    def set(self, side: Side, key: str, value: str) -> None:
        self.pulumi.config_set(side.stack, key, value)
        side.config[key] = value

    def rm(self, side: Side, key: str) -> None:
        self.pulumi.config_rm(side.stack, key)
        side.config.pop(key, None)

    def write(self, r: Record) -> None:
        """The record, in both stacks (only where it differs)."""
        for side in (self.old, self.new):
            if side.config.get(RECORD) != r.dump():
                self.set(side, RECORD, r.dump())

    def pin_bastion(self, side: Side, address: str, following: tuple[str, ...]) -> None:
        """idr:sshBastion defaults to idr:floatingIp; keep it pointing at the
        address the stack's own proxy has once this swap is done (an explicit
        DNS name is left alone)."""
        if side.bastion in ("", *following) and side.bastion != address:
            self.set(side, BASTION, address)

    def name_ip(self, side: Side, ip: str, other: str) -> None:
        """idr:floatingIp of the side becomes `ip` (its bastion follows, away from `other`)."""
        if side.ip != ip:
            self.pin_bastion(side, ip, (other,))
            self.set(side, FLOATING_IP, ip)

    def drop_ip(self, side: Side, ip: str, bastion: str) -> None:
        """idr:floatingIp `ip` leaves the side's config (its bastion moves to `bastion`);
        the association may go only once unprotected."""
        if side.ip == ip:
            self.pin_bastion(side, bastion, (ip,))
            self.unprotect(side)
            self.rm(side, FLOATING_IP)

    # ------------------------------------------------------------- state
    def unprotect(self, side: Side) -> None:
        if side.association and side.association.get("protect"):
            self.pulumi.unprotect(side.stack, side.urn)
            side.association["protect"] = False

    def up(self, side: Side, message: str) -> None:
        """A targeted update of the side's association, then the state read
        back (`pulumi stack export`): what the swap judges next is what the
        engine left, not what it was asked for."""
        self.pulumi.up_target(side.stack, side.urn, message)
        side.resources = self.pulumi.resources(side.stack)

    def up_asking(self, side: Side, message: str) -> None:
        """The update that moves or unbinds the public IP, timed from the
        engine's line that starts the association's step."""
        self.asked.at = None
        start, start_at = time.monotonic(), utc_now()
        name = association_name(side.env)

        def watch(line: str) -> None:
            if self.asked.at is None and name in line and STEP_STARTS.search(line):
                self.asked.at, self.asked.utc = time.monotonic(), utc_now()
        try:
            self.pulumi.up_target(side.stack, side.urn, message, watch=watch)
        finally:
            if self.asked.at is None:  # the step's line was not seen: count from the update's start
                self.asked.at, self.asked.utc = start, start_at
        side.resources = self.pulumi.resources(side.stack)

    # ------------------------------------------------------------ checks
    def still_bound(self, side: Side, ip: str) -> OperationError:
        return OperationError(f"{ip} is still bound to {side.port} although {side.stack}'s state has no "
                              f"association: unbind it with `openstack floating ip unset --port {ip}`, then run "
                              f"`{self.command}` again")

    def check_released(self, side: Side, ip: str) -> None:
        """After an update that was to remove the side's association of `ip`:
        it has left the state, and OpenStack has `ip` off the side's proxy."""
        if side.assoc_ip:
            kept = (f"; {len(side.dependents)} resource(s) in the state depend on it ({side.dependents_named}), "
                    f"and a targeted update keeps what untargeted resources depend on" if side.dependents else "")
            raise OperationError(
                f"`pulumi up` of {side.stack} finished, but its state still holds the association of "
                f"{side.assoc_ip}{kept}. OpenStack: {self.holder(ip).describe()}. Run `pulumi up -s {side.stack} "
                f"--policy-pack policy` (it stores what the program declares now), then `{self.command}` again")
        if self.holds(side, ip):
            raise self.still_bound(side, ip)

    def save_asked(self, r: Optional[Record]) -> None:
        """After a failure: keep in both records when this run asked OpenStack
        to move the public IP (if it has left the old proxy) and how long it
        answered nothing, if known, so that the run that finishes can say."""
        if r is None:
            return
        if r.unbound_seconds is None and self.asked.at is not None and r.asked_at != self.asked.utc:
            try:
                if self.holds(self.old, r.public_ip):
                    return   # nothing left the old proxy
            except OperationError:
                return
            r = r.but(asked_at=self.asked.utc)
        if not (r.asked_at or r.unbound_seconds is not None):
            return
        try:
            self.write(r)
        except OperationError:
            pass
