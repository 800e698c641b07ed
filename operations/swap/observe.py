"""What the swap sees: both stacks (config and Pulumi state) and which port
OpenStack shows holding the two IPs. Read only; nothing here changes anything."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from components.settings import KEYS
from components.swap_record import CONFIG_KEY as RECORD, NotARecord, Record

from ..common import (ASSOCIATION_TYPE, PROJECT, FloatingIpHolder, OpenStack, OperationError, Pulumi,
                      association_urn, stack_environment)

FLOATING_IP = f"{PROJECT}:floatingIp"
BASTION = f"{PROJECT}:sshBastion"
HEALTH_PATH = f"{PROJECT}:healthCheckPath"


def load_record(text: str) -> Optional[Record]:
    """The record of a config value; a value that is not one stops the command."""
    try:
        return Record.parse(text)
    except NotARecord:
        raise OperationError(f"config {RECORD} = {text!r} is not a swap record; remove it with "
                             f"`pulumi config rm {RECORD} -s <stack>` after checking both stacks by hand") from None


@dataclass
class Side:
    """One stack as the swap sees it: its config and the resources of its
    state. The changes (operations/swap/changes.py) keep both up to date."""
    stack: str
    config: dict
    resources: list

    @classmethod
    def read(cls, pulumi: Pulumi, stack: str) -> Side:
        return cls(stack, pulumi.config(stack), pulumi.resources(stack))

    @property
    def env(self) -> str:
        return stack_environment(self.stack, self.config)

    @property
    def port(self) -> str:
        return f"{self.env}-proxy"

    @property
    def ip(self) -> str:
        return self.config.get(FLOATING_IP, "").strip()

    @property
    def bastion(self) -> str:
        return self.config.get(BASTION, "").strip()

    @property
    def record(self) -> Optional[Record]:
        return load_record(self.config.get(RECORD, ""))

    @property
    def association(self) -> Optional[dict]:
        found = [r for r in self.resources if r.get("type") == ASSOCIATION_TYPE]
        return found[0] if found else None

    @property
    def dependents(self) -> list[str]:
        """Names of the resources of the state that depend on the association
        (parent, dependencies, property dependencies, deleted-with)."""
        a = self.association
        if not a:
            return []
        urn = a["urn"]
        found = []
        for r in self.resources:
            props = [u for us in (r.get("propertyDependencies") or {}).values() for u in us]
            if urn in (r.get("parent"), *(r.get("dependencies") or []), *props, r.get("deletedWith")):
                found.append(r["urn"].split("::")[-1])
        return sorted(set(found))

    @property
    def assoc_ip(self) -> str:
        """The IP of the association in the stack's state ("" when it has none)."""
        a = self.association
        return ((a.get("inputs") or {}).get("floatingIp") or "(unknown)") if a else ""

    @property
    def retained(self) -> bool:
        a = self.association
        return bool(a and a.get("retainOnDelete"))

    @property
    def urn(self) -> str:
        return self.association["urn"] if self.association else association_urn(self.stack, self.env)

    @property
    def health_path(self) -> str:
        return self.config.get(HEALTH_PATH) or KEYS["healthCheckPath"].default

    @property
    def dependents_named(self) -> str:
        """The first few dependents, for a message."""
        deps = self.dependents
        return ", ".join(deps[:3]) + (", ..." if len(deps) > 3 else "")


@dataclass(frozen=True)
class Observed:
    """Both stacks and the holders of the record's two IPs, at one moment."""
    old: Side
    new: Side
    public: FloatingIpHolder
    spare: FloatingIpHolder

    def holds(self, side: Side, ip: str) -> bool:
        return self.holder(ip).port_name == side.port

    def holder(self, ip: str) -> FloatingIpHolder:
        return self.public if ip == self.public.address else self.spare

    def story(self) -> str:
        """Where each IP stands, for a message."""
        old, new = self.old, self.new
        state = {s.stack: (s.assoc_ip or "none") + (" (retained)" if s.retained else "") for s in (old, new)}
        return (f"{old.stack}: idr:floatingIp={old.ip or '(none)'}, association in state: "
                f"{state[old.stack]}; {new.stack}: idr:floatingIp={new.ip or '(none)'}, association "
                f"in state: {state[new.stack]}; OpenStack: {self.public.describe()}, {self.spare.describe()}")


def observe(old: Side, new: Side, openstack: OpenStack, record: Record) -> Observed:
    """The sides as they are now, with OpenStack asked for the record's IPs."""
    return Observed(old, new, openstack.floating_ip(record.public_ip), openstack.floating_ip(record.spare_ip))
