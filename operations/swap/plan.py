"""The swap's plan, as pure functions of what was observed: which swap to run
(`start`), its steps in either order (`steps`), whether the stacks and
OpenStack tell one story (`check`) and the first step not done (`next_step`).
The orders and why they are safe: docs/operations/new-release.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from components.swap_record import CONFIG_KEY as RECORD, DIRECT, DONE, IN_PROGRESS, RELEASE_FIRST, Record

from ..common import OperationError, short_stack
from .observe import Observed, Side


def swap_command(old: str, new: str) -> str:
    return f"python -m operations.swap --from {old} --to {new}"


@dataclass(frozen=True)
class Step:
    title: str                                # "move 203.0.113.10 from the prod proxy to the newidr proxy: ..."
    action: str                               # the change that does it (operations/swap/steps.py ACTIONS)
    done: Callable[[Observed, Record], bool]  # whether the stacks and OpenStack show it done


# Each step's "done", read from config, state and OpenStack.
def marked(o: Observed, r: Record) -> bool:
    return not (o.old.assoc_ip == r.public_ip and not o.old.retained)


def spare_released(o: Observed, r: Record) -> bool:
    return o.new.ip != r.spare_ip and o.new.assoc_ip != r.spare_ip and not o.holds(o.new, r.spare_ip)


def taken(o: Observed, r: Record) -> bool:
    return o.new.assoc_ip == r.public_ip and o.holds(o.new, r.public_ip)


def forgotten(o: Observed, r: Record) -> bool:
    return o.old.ip != r.public_ip and o.old.assoc_ip != r.public_ip


def released(o: Observed, r: Record) -> bool:
    return forgotten(o, r) and not o.holds(o.old, r.public_ip)


def spare_given(o: Observed, r: Record) -> bool:
    return o.old.ip == r.spare_ip and o.old.assoc_ip == r.spare_ip and o.holds(o.old, r.spare_ip)


# The sources each order relies on (docs/design.md says why in prose):
# - Neutron moves an associated IP in one update: PUT /v2.0/floatingips/{id}
#   with a new port_id (neutron/db/l3_db.py _update_fip_assoc), refused only by
#   FloatingIPPortAlreadyAssociated (409) when the target port has one: step 2.
# - FloatingIpAssociate (terraform-provider-openstack
#   resource_openstack_networking_floatingip_associate_v2.go): Create is that
#   PUT, Delete a PUT with an empty port wherever the IP is: steps 1 and 4.
# - Pulumi skips Delete for a resource retained in its *state* (resource option
#   retainOnDelete), and `up --target` keeps what untargeted resources depend on
#   (pkg/resource/deploy/step_generator.go): dependents_problem.
def steps(r: Record, old: str, new: str) -> list[Step]:
    """The swap's changes in order. The plan shown, each update's message and
    its number come from this list."""
    P, S = r.public_ip, r.spare_ip
    free = Step(f"free the {new} proxy port: {new} releases its spare {S}", "release_spare", spare_released)
    give = Step(f"give {S} to {old}", "give_spare", spare_given)
    if r.order == DIRECT:
        return [Step(f"mark the {old} association of {P} retain-on-delete; nothing changes in OpenStack",
                     "mark_retained", marked),
                free,
                Step(f"move {P} from the {old} proxy to the {new} proxy: one Neutron update", "move_public", taken),
                Step(f"{old} forgets its association of {P}, retained: {P} stays with {new}", "forget_public",
                     forgotten),
                give]
    return [free,
            Step(f"release {P} in {old}: it answers nothing until step 3 is done", "release_public", released),
            Step(f"take {P} in {new}", "take_public", taken),
            give]


def check(o: Observed, r: Record) -> list[str]:
    """What config, Pulumi state and OpenStack disagree on (nothing: one story)."""
    P, S, old, new, hP, hS = r.public_ip, r.spare_ip, o.old, o.new, o.public, o.spare
    expectations = [
        *((h.port_name in ("", old.port, new.port),
           f"{h.address} is bound to port {h.port_name or h.port_id}, which belongs to neither stack")
          for h in (hP, hS)),
        (old.ip in (P, S, ""), f"{old.stack}'s idr:floatingIp is {old.ip}, neither {P} nor {S}"),
        (new.ip in (P, S, ""), f"{new.stack}'s idr:floatingIp is {new.ip}, neither {P} nor {S}"),
        (not (old.ip == new.ip == S), f"both stacks' idr:floatingIp is {S}"),
        (hP.port_name != new.port or new.ip == P, f"{P} is on {new.port} but {new.stack}'s config does not name it"),
        (hS.port_name != old.port or old.ip == S, f"{S} is on {old.port} but {old.stack}'s config does not name it"),
        (hP.port_name != old.port or old.assoc_ip == P or r.order == RELEASE_FIRST,
         f"{P} is on {old.port} but {old.stack}'s state has no association for it"),
        (hS.port_name != new.port or new.assoc_ip == S or new.ip != S,
         f"{S} is on {new.port} but {new.stack}'s state has no association for it"),
        (not (old.assoc_ip == P and hP.port_name == ""),
         f"{old.stack}'s state holds {P} but OpenStack shows it free (`pulumi refresh -s {old.stack}`?)"),
        (not (new.assoc_ip == P and hP.port_name == ""),
         f"{new.stack}'s state holds {P} but OpenStack shows it free (`pulumi refresh -s {new.stack}`?)"),
    ]
    return [what for ok, what in expectations if not ok]


def next_step(o: Observed, r: Record, plan: list[Step]) -> int:
    """Number of the first step not done (len + 1 when all are)."""
    return next((n for n, step in enumerate(plan, 1) if not step.done(o, r)), len(plan) + 1)


@dataclass(frozen=True)
class Start:
    """Where a run starts: the record of the swap to run, or the IP the new
    stack holds already (nothing to move)."""
    record: Optional[Record] = None
    resuming: bool = False
    held: str = ""


def start(old: Side, new: Side, public_ip: Optional[str], release_first: bool) -> Start:
    """The swap in progress (refusing one between other stacks or
    directions), or a new one; refuses stacks that cannot swap."""
    command = swap_command(old.stack, new.stack)
    active = [r for r in (old.record, new.record) if r and r.status == IN_PROGRESS]
    if active:
        r = active[0]
        if (short_stack(r.from_stack), short_stack(r.to_stack)) != (short_stack(old.stack), short_stack(new.stack)):
            raise OperationError(
                f"a swap of {r.public_ip} from {r.from_stack} to {r.to_stack} is in progress "
                f"(config {RECORD}). Finish it first: `{swap_command(r.from_stack, r.to_stack)}`; to undo it "
                f"afterwards: `{swap_command(r.to_stack, r.from_stack)}`")
        if public_ip and public_ip != r.public_ip:
            raise OperationError(f"--public-ip {public_ip} differs from the swap in progress, which "
                                 f"moves {r.public_ip}: run `{command}` without --public-ip")
        return Start(r, resuming=True)
    public = public_ip or old.ip
    if public_ip and new.ip == public and old.ip != public:
        return Start(held=public)
    done = [r for r in (old.record, new.record) if r and r.status == DONE
            and r.to_stack == new.stack and r.public_ip == new.ip]
    if not public_ip and done and old.ip == done[0].spare_ip:
        return Start(held=new.ip)
    if not public:
        raise OperationError(f"{old.stack} holds no floating IP (idr:floatingIp is empty): nothing to "
                             f"move. Give the public IP with --public-ip if you know where it is")
    if old.ip != public:
        raise OperationError(f"{old.stack}'s idr:floatingIp is {old.ip or 'empty'}, not the public "
                             f"IP {public}: check the stacks (`pulumi config -s {old.stack}`)")
    if not new.ip:
        raise OperationError(
            f"{new.stack} holds no spare floating IP, so it cannot be tested before going live: "
            f"`pulumi config set idr:floatingIp <spare IP> -s {new.stack}` and "
            f"`pulumi up -s {new.stack} --policy-pack policy` first")
    if new.ip == public:
        raise OperationError(f"both stacks' idr:floatingIp is {public}: fix one of them by hand")
    return Start(Record(old.stack, new.stack, public, new.ip, IN_PROGRESS,
                        order=RELEASE_FIRST if release_first else DIRECT, from_env=old.env))


def dependents_problem(sides: tuple[Side, Side], command: str) -> Optional[str]:
    """Each step is `pulumi up --target <association>`, and the engine never
    deletes an association that anything in the state depends on (docs/design.md,
    "Remote commands and host keys")."""
    for side in sides:
        if side.dependents:
            return (f"{len(side.dependents)} resource(s) in {side.stack}'s state depend on its floating-IP "
                    f"association ({side.dependents_named}): a `pulumi up --target` of the association would keep "
                    f"it, and its IP bound. Nothing was changed. Run `pulumi up -s {side.stack} --policy-pack "
                    f"policy` once with this version of the program (it stores the new dependencies and re-runs no "
                    f"remote command), then `{command}` again")
    return None


def unassociated_problem(o: Observed, r: Record) -> Optional[str]:
    """Before a new swap: an IP on a stack's proxy that its state does not hold."""
    for side, ip in ((o.old, r.public_ip), (o.new, r.spare_ip)):
        if side.assoc_ip != ip and o.holds(side, ip):
            return (f"{side.stack}'s Pulumi state has no floating-IP association although {ip} is on its proxy: "
                    f"run `pulumi up -s {side.stack} --policy-pack policy` first")
    return None


def downtime(order: str) -> str:
    if order == DIRECT:
        return ("Downtime: the public IP answers nothing only while Neutron moves it to the new proxy's "
                "port (one update, step 3).")
    return ("Downtime: the public IP answers nothing from its release (step 2) until the new stack has "
            "taken it (step 3): two updates.")


def plan_lines(plan: list[Step], n: int) -> list[str]:
    """The numbered steps, those before `n` marked done."""
    return [f"   {k}. {step.title}" + ("  (done)" if k < n else "") for k, step in enumerate(plan, 1)]
