"""The floating-IP swap's record and the association it moves: one schema for
the swap command (operations/swap/, which writes it to both stacks' config),
the program's guard (components/floatingip.py, which reads it) and the tests'
stand-in `pulumi`. Standard library only: the stand-in imports it too.
Why a swap keeps a record: docs/operations/new-release.md and docs/design.md."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Optional

from . import PROJECT

NAMESPACE, KEY = "idrswap", "state"
CONFIG_KEY = f"{NAMESPACE}:{KEY}"  # outside the idr: namespace, which Pulumi.yaml declares key by key
IN_PROGRESS, DONE = "in-progress", "done"
DIRECT, RELEASE_FIRST = "direct", "release-first"

ASSOCIATION_TYPE = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"
ENVIRONMENT_TYPE = "idr:environment:IdrEnvironment"


def short_stack(stack: object) -> str:
    """'organization/idr/prod' -> 'prod' (URNs and stack files use this)."""
    return str(stack or "").split("/")[-1]


def association_name(environment: str) -> str:
    """Name of the proxy's floating-IP association (components/floatingip.py associate)."""
    return f"{environment}-proxy-floating-ip"


def association_urn(stack: str, environment: str, project: str = PROJECT) -> str:
    """URN of the proxy's floating-IP association, a child of the environment component."""
    return (f"urn:pulumi:{short_stack(stack)}::{project}::{ENVIRONMENT_TYPE}${ASSOCIATION_TYPE}"
            f"::{association_name(environment)}")


class NotARecord(ValueError):
    """The config value is not a swap record."""


@dataclass(frozen=True)
class Record:
    """What a swap moves, written to both stacks before its first change."""
    from_stack: str
    to_stack: str
    public_ip: str
    spare_ip: str
    status: str
    # Records written before the direct move existed used the release-first order.
    order: str = RELEASE_FIRST
    from_env: str = ""       # the environment of from_stack: whose proxy the program lets to_stack take the IP from
    asked_at: str = ""       # UTC time the swap asked OpenStack to move (or unbind) the public IP
    unbound_seconds: Optional[float] = None  # from asked_at to the public IP's first answer after the move

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def but(self, **changes: object) -> Record:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> Optional[Record]:
        """None for an empty value; NotARecord for one that is not a record."""
        if not text:
            return None
        try:
            record = cls(**json.loads(text))
        except (ValueError, TypeError):
            raise NotARecord(text) from None
        if record.status not in (IN_PROGRESS, DONE) or record.order not in (DIRECT, RELEASE_FIRST):
            raise NotARecord(text)
        return record

    @property
    def moving_directly(self) -> bool:
        """A swap in progress in the direct order: the one the program's guard lets through."""
        return self.status == IN_PROGRESS and self.order == DIRECT

    def takes_over(self, stack: str, ip: str, holder_env: Optional[str]) -> bool:
        """`stack` is the one this swap moves `ip` to, from the proxy of environment `holder_env`."""
        return short_stack(self.to_stack) == stack and self.public_ip == ip and bool(holder_env) \
            and self.from_env == holder_env

    def hands_over(self, stack: str, ip: str) -> bool:
        """`stack` is the one this swap moves `ip` away from."""
        return short_stack(self.from_stack) == stack and self.public_ip == ip


def moving_directly(text: Optional[str]) -> Optional[Record]:
    """The record in config value `text` when it is a swap in progress in the
    direct order, else None (one that does not parse is ignored here; the swap
    command and the project's tests refuse it)."""
    try:
        record = Record.parse(text or "")
    except NotARecord:
        return None
    return record if record is not None and record.moving_directly else None
