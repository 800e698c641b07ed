"""The swap's steps (operations/swap/plan.py lists them), each a few changes
of operations/swap/changes.py, and the step that gives the new stack its
spare IP back. Each returns what the run goes on with (`Outcome`)."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable

from components.swap_record import RELEASE_FIRST, Record

from ..common import OperationError, PulumiError
from .changes import Run
from .observe import FLOATING_IP

# The provider's words when Neutron refuses the association's PUT; the one
# refusal the swap itself prevents (step 2) is left out.
REFUSED = "Error associating openstack_networking_floatingip_associate_v2"
PORT_TAKEN = "already has a floating IP"


@dataclass(frozen=True)
class Outcome:
    record: Record
    moved: bool = False      # the public IP is with the new stack now: time to measure how long it answered nothing
    fall_back: bool = False  # the direct move cannot be done: go on in the release-first order (`record` says so)


def _fall_back(r: Record) -> Outcome:
    return Outcome(r.but(order=RELEASE_FIRST), fall_back=True)


def _taken(run: Run, r: Record) -> bool:
    return run.new.assoc_ip == r.public_ip and run.holds(run.new, r.public_ip)


def mark_retained(run: Run, r: Record, message: str) -> Outcome:
    old = run.old
    if not old.association or old.retained:
        return Outcome(r)
    run.up(old, message)
    if old.assoc_ip == r.public_ip and not old.retained:
        run.say(f"{old.stack}'s state does not show its association as retained on delete after the "
                f"update, so removing it would unbind {r.public_ip} from {run.new.stack}: the swap uses the "
                f"release-first order instead.")
        return _fall_back(r)
    return Outcome(r)


def release_spare(run: Run, r: Record, message: str) -> Outcome:
    new, S = run.new, r.spare_ip
    run.drop_ip(new, S, r.public_ip)
    if new.assoc_ip:
        run.unprotect(new)
        if new.retained:
            raise OperationError(f"{new.stack}'s association is retained on delete, so its update would "
                                 f"not release {S}: run `pulumi up -s {new.stack} --policy-pack policy` "
                                 f"with idr:floatingIp {S} first, then `{run.command}` again")
        run.up(new, message)
    run.check_released(new, S)
    return Outcome(r)


def move_public(run: Run, r: Record, message: str) -> Outcome:
    old, new, P = run.old, run.new, r.public_ip
    run.name_ip(new, P, r.spare_ip)
    if _taken(run, r):
        return Outcome(r, moved=True)
    if run.holds(old, P) and not (old.assoc_ip == P and old.retained):
        raise OperationError(f"{old.stack}'s association of {P} is not retained on delete in its state: "
                             f"run `{run.command}` again (step 1 marks it)")
    others = run.openstack.floating_ips_of_port(new.port)
    if others:
        raise OperationError(f"{new.port} still holds {', '.join(others)}, and Neutron binds one floating IP "
                             f"per fixed IP (FloatingIPPortAlreadyAssociated): unbind it "
                             f"(`openstack floating ip unset --port <ip>`), then run `{run.command}` again")
    try:
        run.up_asking(new, message)
    except PulumiError as error:
        text = str(error.error)
        if not (REFUSED in text and PORT_TAKEN not in text and run.holds(old, P)
                and not run.openstack.floating_ips_of_port(new.port)):
            raise
        run.asked.at = None
        tail = "\n".join(f"    {line}" for line in text.strip().splitlines()[-4:])
        run.say(f"OpenStack refused to move {P} from {old.port} to {new.port} in one update:\n{tail}\n"
                f"Nothing moved; {old.stack} still serves {P}. Falling back to the release-first "
                f"order: {P} answers nothing from its release in {old.stack} until "
                f"{new.stack} has taken it (two updates).")
        new.resources = run.pulumi.resources(new.stack)
        return _fall_back(r)
    if not _taken(run, r):
        raise OperationError(f"`pulumi up` of {new.stack} finished but OpenStack shows "
                             f"{run.holder(P).describe()}: run `{run.command}` again")
    return Outcome(r, moved=True)


def forget_public(run: Run, r: Record, message: str) -> Outcome:
    old, new, P = run.old, run.new, r.public_ip
    if old.assoc_ip == P and not old.retained:
        raise OperationError(f"{old.stack}'s association of {P} is not retained on delete in its state, so "
                             f"removing it would unbind {P} from {new.stack}. Mark it by hand: "
                             f"`pulumi stack export -s {old.stack} > state.json`, set \"retainOnDelete\": "
                             f"true on {old.urn}, `pulumi stack import -s {old.stack} < state.json`; then "
                             f"run `{run.command}` again")
    run.drop_ip(old, P, r.spare_ip)
    if old.assoc_ip:
        run.unprotect(old)
        run.up(old, message)
    if old.assoc_ip:
        run.check_released(old, P)
    if not run.holds(new, P):
        raise OperationError(f"{P} is no longer on {new.port} after {old.stack} forgot its association "
                             f"({run.holder(P).describe()}): give it back to {new.stack} with `pulumi up -s "
                             f"{new.stack} --policy-pack policy --target {shlex.quote(new.urn)}`")
    return Outcome(r)


def release_public(run: Run, r: Record, message: str) -> Outcome:
    old, P = run.old, r.public_ip
    if old.assoc_ip == P and old.retained:
        # Marked for a direct move that did not happen: unmark it first
        # (the program declares it only while idr:floatingIp names it).
        if old.ip != P:
            run.set(old, FLOATING_IP, P)
        run.up(old, message + ": clear retain-on-delete first")
        if old.retained:
            raise OperationError(f"{old.stack}'s association of {P} is still retained on delete after the "
                                 f"update, so removing it would not release {P}: check `pulumi stack export -s "
                                 f"{old.stack}`, then run `{run.command}` again")
    run.drop_ip(old, P, r.spare_ip)
    if old.assoc_ip:
        run.unprotect(old)
        if run.holds(old, P):
            run.up_asking(old, message)
        else:
            run.up(old, message)
    run.check_released(old, P)
    return Outcome(r)


def take_public(run: Run, r: Record, message: str) -> Outcome:
    new, P = run.new, r.public_ip
    run.name_ip(new, P, r.spare_ip)
    if not _taken(run, r):
        run.up(new, message)
        if not _taken(run, r):
            raise OperationError(f"`pulumi up` of {new.stack} finished but OpenStack shows "
                                 f"{run.holder(P).describe()}: run `{run.command}` again")
    return Outcome(r, moved=True)


def give_spare(run: Run, r: Record, message: str) -> Outcome:
    old, S = run.old, r.spare_ip
    run.name_ip(old, S, r.public_ip)
    if not run.holds(old, S):
        spare = run.holder(S)
        if spare.port_id:
            raise OperationError(f"{spare.describe()}, so {old.stack} cannot take it: {run.new.stack}'s "
                                 f"update should have released it; check `pulumi stack -s {run.new.stack}`, "
                                 f"then run `{run.command}` again")
        run.up(old, message)
    return Outcome(r)


ACTIONS: dict[str, Callable[[Run, Record, str], Outcome]] = {
    f.__name__: f for f in (mark_retained, release_spare, move_public, forget_public, release_public, take_public,
                            give_spare)}


def rebind_spare(run: Run, r: Record) -> None:
    """The new stack gave up its spare IP, but the public one has not
    moved yet: it takes the spare back, so that it is checked first."""
    new, S = run.new, r.spare_ip
    run.say(f"{new.stack} gave up {S} but {r.public_ip} has not moved: {new.stack} takes {S} back "
            f"so that it is checked before {r.public_ip} moves.")
    run.pin_bastion(new, S, (r.public_ip,))
    if new.ip != S:
        if new.assoc_ip:
            run.unprotect(new)
        run.set(new, FLOATING_IP, S)
    if not run.holds(new, S):
        run.up(new, f"swap {run.old.stack} -> {new.stack}: give {S} back to {new.stack} for its check")
