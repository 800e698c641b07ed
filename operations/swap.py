"""Move the public floating IP from one environment to another.

    python -m operations.swap --from prod --to newidr [--snapshot] [--yes] [--public-ip IP] [--release-first]

The public IP answers nothing only while Neutron moves it from the old proxy's
port to the new one: one update. Each change below is one `pulumi up --target
<floating-IP association>` (through the Automation API, with the policy pack
and the message "swap prod -> newidr: step N of 5 (...)"), with the config
edits made by this command. The direct order (default):
  1. prod marks its association retain-on-delete (changes nothing in OpenStack),
  2. newidr releases its spare IP, which is not public: its proxy's port is free,
  3. newidr takes the public IP: Neutron moves it from prod's proxy in one update,
  4. prod forgets its association; retained, so the IP stays where it is,
  5. prod takes the spare IP.
The release-first order (--release-first, or when OpenStack refuses the direct
move, which the command then says) is the one of earlier versions: the public
IP answers nothing from its release in prod until newidr has taken it (two
updates, tens of seconds to minutes):
  1. newidr releases its spare IP, 2. prod releases the public IP,
  3. newidr takes it, 4. prod takes the spare IP.
The swap prints how long the public IP answered nothing (from asking OpenStack
to move it to its first answer) and records it in both stacks' swap record.
Rollback is the same command with the stacks swapped.

Where a swap stands is read from the two stacks' config (idr:floatingIp, and
the record `idrswap:state` the command writes to both), their Pulumi state
(the associations) and what OpenStack shows (which port holds each IP) -
never from a local file. Run again after a failure: it continues from there,
or says what to fix first.

What each step relies on (read in the sources, not assumed):
- Neutron moves an associated floating IP to another port in one update:
  PUT /v2.0/floatingips/{id} with the new port_id goes through
  `_update_floatingip` -> `_update_fip_assoc` -> `_check_and_get_fip_assoc`
  (neutron/db/l3_db.py), which sets the new fixed port in one DB transaction;
  it does not require the IP to be free. Its one refusal for a move is
  `FloatingIPPortAlreadyAssociated` (neutron_lib l3 exceptions, an `InUse`,
  HTTP 409 by neutron_lib/api/faults.py) when the target port's fixed IP
  already has a floating IP on that external network: hence step 2 first.
  `update_floatingip` then notifies the routers of the old and the new
  association; with OVN, `OVNClient.update_floatingip` deletes the old NAT
  rule and creates the new one in the same call.
- pulumi-openstack's `networking.FloatingIpAssociate` is the Terraform
  resource openstack_networking_floatingip_associate_v2
  (terraform-provider-openstack, resource_openstack_networking_floatingip_
  associate_v2.go): Create is `floatingips.Update` with the port ID (that PUT,
  so creating the association in newidr is the move), `floating_ip` forces a
  replacement, and Delete is `floatingips.Update` with an empty port ID: it
  unbinds the IP wherever it is by then - from newidr's proxy, after step 3.
- Pulumi does not call a provider's Delete for a resource with
  `retainOnDelete`, when deleting or replacing it: it only leaves the state
  (Pulumi docs, resource option retainOnDelete, and "Removing resources
  without deleting them"). The flag that counts is the one in the state
  (to delete a retained resource, it must be set false and `pulumi up` run
  first), so step 1 declares it (components/floatingip.py, while this
  swap's record is in progress) and the swap checks `pulumi stack export`
  shows it before the IP moves. Not `pulumi state delete`: a targeted
  update keeps the state consistent with what the program declares.
- `pulumi up --target <association>` deletes the association only if no
  resource depends on it: the engine keeps the old state of every untargeted
  resource and of the old resources it depends on (pkg/resource/deploy/
  step_generator.go, generateSteps / getDependencySteps, GenerateDeletes).
  The program declares no dependent (components/floatingip.py, Bastion); the
  swap refuses a state that has one (check_no_dependents) and reads every
  stack's state back after each update.
- Where a cloud refuses the direct move anyway (a vendor plugin or policy
  answering the association's update with an error), the association's create
  fails in step 3 and nothing moved: the command says so and continues in the
  release-first order, whose every change is an unbind or a bind of a free IP.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from components.settings import KEYS

from .common import (ASSOCIATION_TYPE, PROJECT, FloatingIpHolder, OpenStack, OperationError, Pulumi,
                     PulumiError, association_urn, confirm, connect, short_stack,
                     stack_environment)

# Takes snapshots of a stack's essential volumes; True when all are available
# (operations.backup.snapshot_stack, given by main for --snapshot).
Snapshotter = Callable[[str], bool]

FLOATING_IP = f"{PROJECT}:floatingIp"
BASTION = f"{PROJECT}:sshBastion"
HEALTH_PATH = f"{PROJECT}:healthCheckPath"
RECORD = "idrswap:state"  # outside the idr: namespace, which Pulumi.yaml declares key by key
IN_PROGRESS, DONE = "in-progress", "done"
DIRECT, RELEASE_FIRST = "direct", "release-first"
# The engine's line when the association's step starts (non-interactive
# display: "<op> <type> <name> creating (0s)"): the moment OpenStack is asked.
STEP_STARTS = re.compile(r"\b(creating|updating|deleting|replacing)\b")
# The provider's words when Neutron refuses the association's PUT; the one
# refusal the swap itself prevents (step 2) is left out.
REFUSED = "Error associating openstack_networking_floatingip_associate_v2"
PORT_TAKEN = "already has a floating IP"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _since(stamp: str) -> Optional[float]:
    try:
        then = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt.datetime.now(dt.timezone.utc) - then).total_seconds()


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

    def but(self, **changes) -> "Record":
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, text: str) -> Optional["Record"]:
        if not text:
            return None
        try:
            r = cls(**json.loads(text))
        except (ValueError, TypeError):
            r = None
        if r is None or r.status not in (IN_PROGRESS, DONE) or r.order not in (DIRECT, RELEASE_FIRST):
            raise OperationError(f"config {RECORD} = {text!r} is not a swap record; remove it with "
                                 f"`pulumi config rm {RECORD} -s <stack>` after checking both stacks by hand")
        return r


@dataclass
class Side:
    """One stack as the swap sees it."""
    stack: str
    config: dict
    resources: list

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
        return Record.load(self.config.get(RECORD, ""))

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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None   # the answer itself is what is judged


def http_ok(ip: str, port: int, path: str, timeout: float = 10.0) -> tuple[bool, str]:
    """200 on plain HTTP, or (idr:httpsRedirect) a redirect to HTTPS: an IP
    has no certificate of its own to verify, and the proxy answering the
    redirect is what shows it serves."""
    url = f"http://{ip}{'' if port == 80 else f':{port}'}{path}"
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=timeout) as response:
            return response.status == 200, f"{url} answered {response.status}"
    except urllib.error.HTTPError as error:
        location = error.headers.get("Location", "") if error.headers else ""
        if error.code in (301, 302, 307, 308) and location.startswith("https://"):
            return True, f"{url} answered {error.code} to {location}"
        return False, f"{url} answered {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, f"{url} did not answer ({getattr(error, 'reason', error)})"


@dataclass(frozen=True)
class Step:
    title: str                                          # "move 203.0.113.10 to newidr (one Neutron update)"
    run: Callable[[Record, str], Optional[Record]]      # (swap record, update message) -> a changed record
    done: Callable[[Record], bool]                      # whether the stacks and OpenStack show it done


class _AlreadyDone(Exception):
    def __init__(self, ip: str):
        self.ip = ip


class _FallBack(Exception):
    """OpenStack refused the direct move: continue in the release-first order."""

    def __init__(self, record: Record):
        self.record = record


class Swap:
    def __init__(self, pulumi: Pulumi, openstack: OpenStack, old: str, new: str, *,
                 public_ip: Optional[str] = None, assume_yes: bool = False, http_port: int = 80,
                 wait_seconds: float = 120.0, say: Callable[[str], None] = print,
                 snapshot: Optional[Snapshotter] = None, release_first: bool = False,
                 poll_seconds: float = 0.25, smoke: Optional[Callable[[str], list[str]]] = None):
        if short_stack(old) == short_stack(new):
            raise OperationError("--from and --to must be two different stacks")
        self.pulumi, self.os, self.old_stack, self.new_stack = pulumi, openstack, old, new
        self.public_ip_arg = public_ip
        self.assume_yes, self.http_port, self.wait_seconds, self.say = assume_yes, http_port, wait_seconds, say
        self.snapshot = snapshot
        self.release_first = release_first
        self.poll_seconds = poll_seconds
        # The release gate: IDR's smoke checks of the new environment at its
        # spare IP (operations/smoke.py), failures named; None: skipped, said.
        self.smoke = smoke
        self.command = f"python -m operations.swap --from {old} --to {new}"
        self.rollback = f"python -m operations.swap --from {new} --to {old}"
        self.r: Optional[Record] = None
        self._asked: Optional[float] = None   # time.monotonic() when this run asked OpenStack to move the IP
        self._asked_at = ""                    # the same, as UTC time
        self._measured_once = False

    # ------------------------------------------------------------ reading
    def read(self) -> None:
        self.old = Side(self.old_stack, self.pulumi.config(self.old_stack), self.pulumi.resources(self.old_stack))
        self.new = Side(self.new_stack, self.pulumi.config(self.new_stack), self.pulumi.resources(self.new_stack))

    def reload(self, side: Side) -> None:
        side.resources = self.pulumi.resources(side.stack)

    def holder(self, ip: str) -> FloatingIpHolder:
        return self.os.floating_ip(ip)

    def holds(self, side: Side, ip: str) -> bool:
        return self.holder(ip).port_name == side.port

    def _record(self) -> Optional[Record]:
        """The swap in progress, if any; refuses one between other stacks or directions."""
        records = [r for r in (self.old.record, self.new.record) if r]
        active = [r for r in records if r.status == IN_PROGRESS]
        if not active:
            return None
        r = active[0]
        if (short_stack(r.from_stack), short_stack(r.to_stack)) != (short_stack(self.old_stack),
                                                                    short_stack(self.new_stack)):
            finish = f"python -m operations.swap --from {r.from_stack} --to {r.to_stack}"
            back = f"python -m operations.swap --from {r.to_stack} --to {r.from_stack}"
            raise OperationError(
                f"a swap of {r.public_ip} from {r.from_stack} to {r.to_stack} is in progress "
                f"(config {RECORD}). Finish it first: `{finish}`; to undo it afterwards: `{back}`")
        if self.public_ip_arg and self.public_ip_arg != r.public_ip:
            raise OperationError(f"--public-ip {self.public_ip_arg} differs from the swap in progress, which "
                                 f"moves {r.public_ip}: run `{self.command}` without --public-ip")
        return r

    def _new_record(self) -> Record:
        public = self.public_ip_arg or self.old.ip
        if self.public_ip_arg and self.new.ip == public and self.old.ip != public:
            raise _AlreadyDone(public)
        done = [r for r in (self.old.record, self.new.record) if r and r.status == DONE
                and r.to_stack == self.new_stack and r.public_ip == self.new.ip]
        if not self.public_ip_arg and done and self.old.ip == done[0].spare_ip:
            raise _AlreadyDone(self.new.ip)
        if not public:
            raise OperationError(f"{self.old_stack} holds no floating IP (idr:floatingIp is empty): nothing to "
                                 f"move. Give the public IP with --public-ip if you know where it is")
        if self.old.ip != public:
            raise OperationError(f"{self.old_stack}'s idr:floatingIp is {self.old.ip or 'empty'}, not the public "
                                 f"IP {public}: check the stacks (`pulumi config -s {self.old_stack}`)")
        if not self.new.ip:
            raise OperationError(
                f"{self.new_stack} holds no spare floating IP, so it cannot be tested before going live: "
                f"`pulumi config set idr:floatingIp <spare IP> -s {self.new_stack}` and "
                f"`pulumi up -s {self.new_stack} --policy-pack policy` first")
        if self.new.ip == public:
            raise OperationError(f"both stacks' idr:floatingIp is {public}: fix one of them by hand")
        return Record(self.old_stack, self.new_stack, public, self.new.ip, IN_PROGRESS,
                      order=RELEASE_FIRST if self.release_first else DIRECT, from_env=self.old.env)

    # ------------------------------------------------------- where it stands
    def steps(self, r: Record) -> list[Step]:
        """The swap's changes in order. The plan shown, each update's message
        and its number come from this list; `next_step` says where it stands."""
        P, S, old, new = r.public_ip, r.spare_ip, self.old_stack, self.new_stack
        free = Step(f"free the {new} proxy port: {new} releases its spare {S}", self.release_spare,
                    self._spare_released)
        give = Step(f"give {S} to {old}", self.give_spare, self._spare_given)
        if r.order == DIRECT:
            return [Step(f"mark the {old} association of {P} retain-on-delete; nothing changes in OpenStack",
                         self.mark_retained, self._marked),
                    free,
                    Step(f"move {P} from the {old} proxy to the {new} proxy: one Neutron update", self.move_public,
                         self._taken),
                    Step(f"{old} forgets its association of {P}, retained: {P} stays with {new}",
                         self.forget_public, self._forgotten),
                    give]
        return [free,
                Step(f"release {P} in {old}: it answers nothing until step 3 is done", self.release_public,
                     self._released),
                Step(f"take {P} in {new}", self.take_public, self._taken),
                give]

    # The steps' "done", read from config, state and OpenStack.
    def _marked(self, r: Record) -> bool:
        return not (self.old.assoc_ip == r.public_ip and not self.old.retained)

    def _spare_released(self, r: Record) -> bool:
        return self.new.ip != r.spare_ip and self.new.assoc_ip != r.spare_ip and not self.holds(self.new, r.spare_ip)

    def _taken(self, r: Record) -> bool:
        return self.new.assoc_ip == r.public_ip and self.holds(self.new, r.public_ip)

    def _forgotten(self, r: Record) -> bool:
        return self.old.ip != r.public_ip and self.old.assoc_ip != r.public_ip

    def _released(self, r: Record) -> bool:
        return self._forgotten(r) and not self.holds(self.old, r.public_ip)

    def _spare_given(self, r: Record) -> bool:
        return self.old.ip == r.spare_ip and self.old.assoc_ip == r.spare_ip and self.holds(self.old, r.spare_ip)

    def story(self, r: Record) -> str:
        hP, hS = self.holder(r.public_ip), self.holder(r.spare_ip)
        state = {s.stack: (s.assoc_ip or "none") + (" (retained)" if s.retained else "") for s in (self.old, self.new)}
        return (f"{self.old_stack}: idr:floatingIp={self.old.ip or '(none)'}, association in state: "
                f"{state[self.old_stack]}; {self.new_stack}: idr:floatingIp={self.new.ip or '(none)'}, association "
                f"in state: {state[self.new_stack]}; OpenStack: {hP.describe()}, {hS.describe()}")

    def next_step(self, r: Record) -> int:
        """Number of the first step not done (len + 1 when all are), after
        checking that config, Pulumi state and OpenStack tell one story."""
        P, S = r.public_ip, r.spare_ip
        old, new = self.old, self.new
        hP, hS = self.holder(P), self.holder(S)

        def expect(ok: bool, what: str):
            if not ok:
                raise OperationError(f"the stacks and OpenStack disagree ({what}). {self.story(r)}. Nothing was "
                                     f"changed by this run; fix that by hand, then run `{self.command}` again")

        for h in (hP, hS):
            expect(h.port_name in ("", old.port, new.port),
                   f"{h.address} is bound to port {h.port_name or h.port_id}, which belongs to neither stack")
        expect(old.ip in (P, S, ""), f"{old.stack}'s idr:floatingIp is {old.ip}, neither {P} nor {S}")
        expect(new.ip in (P, S, ""), f"{new.stack}'s idr:floatingIp is {new.ip}, neither {P} nor {S}")
        expect(not (old.ip == new.ip == S), f"both stacks' idr:floatingIp is {S}")
        expect(hP.port_name != new.port or new.ip == P,
               f"{P} is on {new.port} but {new.stack}'s config does not name it")
        expect(hS.port_name != old.port or old.ip == S,
               f"{S} is on {old.port} but {old.stack}'s config does not name it")
        expect(hP.port_name != old.port or old.assoc_ip == P or r.order == RELEASE_FIRST,
               f"{P} is on {old.port} but {old.stack}'s state has no association for it")
        expect(hS.port_name != new.port or new.assoc_ip == S or new.ip != S,
               f"{S} is on {new.port} but {new.stack}'s state has no association for it")
        expect(not (old.assoc_ip == P and hP.port_name == ""),
               f"{old.stack}'s state holds {P} but OpenStack shows it free (`pulumi refresh -s {old.stack}`?)")
        expect(not (new.assoc_ip == P and hP.port_name == ""),
               f"{new.stack}'s state holds {P} but OpenStack shows it free (`pulumi refresh -s {new.stack}`?)")
        steps = self.steps(r)
        done = [s.done(r) for s in steps]
        return next((n for n, d in enumerate(done, 1) if not d), len(steps) + 1)

    # ------------------------------------------------------------ running
    def run(self) -> int:
        self.read()
        try:
            r = self._record() or self._new_record()
        except _AlreadyDone as done:
            self.say(f"{done.ip} is already held by {self.new_stack}: nothing to move.")
            return self.final_check(done.ip)
        resuming = any(x and x.status == IN_PROGRESS for x in (self.old.record, self.new.record))
        self.check_no_dependents()
        P, S = r.public_ip, r.spare_ip
        if self.release_first and r.order == DIRECT and self.holds(self.old, P):
            self.say(f"--release-first: the public IP has not moved yet, so the swap continues in the "
                     f"release-first order.")
            r = r.but(order=RELEASE_FIRST)
        self.r = r
        if not resuming:
            for side, ip in ((self.old, P), (self.new, S)):
                if side.assoc_ip != ip and self.holds(side, ip):
                    raise OperationError(f"{side.stack}'s Pulumi state has no floating-IP association although "
                                         f"{ip} is on its proxy: run `pulumi up -s {side.stack} --policy-pack policy` "
                                         f"first")
        n = self.next_step(r)
        # The new environment answers before the public IP moves, checked in
        # this run: through its spare IP, given back to it first if it gave it up.
        rebind = self.holds(self.old, P) and not self.holds(self.new, S)
        if not rebind:
            self.check_new(r, changed=resuming)
        steps = self.steps(r)
        self.say(("Resuming:" if resuming else "Plan:") +
                 f" move public IP {P} from {self.old_stack} to {self.new_stack}, and spare "
                 f"{S} from {self.new_stack} to {self.old_stack}, in the {r.order} order.")
        if rebind:
            self.say(f"   0. give {S} back to {self.new_stack} so that it is checked before {P} moves")
        for k, step in enumerate(steps, 1):
            self.say(f"   {k}. {step.title}" + ("  (done)" if k < n else ""))
        self.say(self.downtime(r.order))
        if self.snapshot:
            question = f"Snapshot {self.old_stack}'s data volumes now, then swap?"
        else:
            self.say(f"Snapshot the volumes first: `python -m operations.backup snapshot --stack {self.old_stack}` "
                     f"(or run this command with --snapshot).")
            question = "Have the instances' volumes been snapshotted, and shall the swap go ahead?"
        if not confirm(question, self.assume_yes):
            self.say("Stopped: nothing changed.")
            return 1
        if self.snapshot and not self.snapshot(self.old_stack):
            raise OperationError(f"not every snapshot of {self.old_stack} is available (see above), so the swap "
                                 f"went no further: this run changed neither stack. Fix that, then run "
                                 f"`{self.command} --snapshot` again (today's available snapshots are kept, "
                                 f"not taken twice)")
        try:
            self._write(r)
            if rebind:
                self.rebind_spare(r)
                self.check_new(r, changed=True)
                n = self.next_step(r)
            while n <= len(steps):
                step = steps[n - 1]
                try:
                    step.run(self.r, f"swap {self.old_stack} -> {self.new_stack}: step {n} of {len(steps)} "
                                     f"({step.title})")
                except _FallBack as fallback:
                    self._write(fallback.record)
                    steps = self.steps(self.r)
                    n = self.next_step(self.r)
                    self.say("New plan, in the release-first order:")
                    for k, s in enumerate(steps, 1):
                        self.say(f"   {k}. {s.title}" + ("  (done)" if k < n else ""))
                    continue
                self.say(f"step {n} done: {step.title}")
                n += 1
            if self.r.unbound_seconds is None and not self._measured_once:
                self.measure(self.r)
            self._write(self.r.but(status=DONE))
        except PulumiError as error:
            self._save_asked()
            raise OperationError(f"{error}\n\nThe swap stopped part-way. Run `{self.command}` again: it "
                                 f"continues from here (or says what to fix first).") from None
        except OperationError:
            self._save_asked()
            raise
        self.say(f"Swapped: {self.new_stack} holds {P}, {self.old_stack} holds {S}.")
        if self.r.unbound_seconds is not None:
            self.say(f"{P} answered nothing for at most {self.r.unbound_seconds:.1f} s ({self.r.order} order; "
                     f"recorded in {RECORD} of both stacks).")
        self.say("Commit Pulumi.*.yaml so the repository shows the new holders.")
        return self.final_check(P)

    def check_no_dependents(self) -> None:
        """Each step is `pulumi up --target <association>`; the engine keeps
        the old state of every untargeted resource and of what it depends on
        (Pulumi step_generator.go, generateSteps / getDependencySteps), so an
        association that anything depends on is never deleted. The program
        declares none (components/floatingip.py, Bastion); a stack last
        deployed by an earlier version has them in its state until its next
        full update, which stores the new dependencies and re-runs nothing."""
        for side in (self.old, self.new):
            deps = side.dependents
            if deps:
                raise OperationError(
                    f"{len(deps)} resource(s) in {side.stack}'s state depend on its floating-IP association "
                    f"({', '.join(deps[:3])}{', ...' if len(deps) > 3 else ''}): a `pulumi up --target` of the "
                    f"association would keep it, and its IP bound. Nothing was changed. Run `pulumi up -s "
                    f"{side.stack} --policy-pack policy` once with this version of the program (it stores the new "
                    f"dependencies and re-runs no remote command), then `{self.command}` again")

    @staticmethod
    def downtime(order: str) -> str:
        if order == DIRECT:
            return ("Downtime: the public IP answers nothing only while Neutron moves it to the new proxy's "
                    "port (one update, step 3).")
        return ("Downtime: the public IP answers nothing from its release (step 2) until the new stack has "
                "taken it (step 3): two updates.")

    def _write(self, r: Record) -> None:
        """The record, in both stacks (only where it differs)."""
        self.r = r
        for side in (self.old, self.new):
            if side.config.get(RECORD) != r.dump():
                self._set(side, RECORD, r.dump())

    def _save_asked(self) -> None:
        """After a failure: keep in both records when this run asked OpenStack
        to move the public IP (if it has left the old proxy) and how long it
        answered nothing, if known, so that the run that finishes can say."""
        r = self.r
        if r is None:
            return
        if r.unbound_seconds is None and self._asked is not None and r.asked_at != self._asked_at:
            try:
                if self.holds(self.old, r.public_ip):
                    return   # nothing left the old proxy
            except OperationError:
                return
            r = r.but(asked_at=self._asked_at)
        if not (r.asked_at or r.unbound_seconds is not None):
            return
        try:
            self._write(r)
        except OperationError:
            pass

    # -------------------------------------------------------------- health
    def check_new(self, r: Record, changed: bool) -> None:
        """The new environment answers on its spare IP, while it holds it and
        the public IP is still with the old one or free."""
        P, S = r.public_ip, r.spare_ip
        hP = self.holder(P).port_name
        if hP == self.new.port:
            return
        if not self.holds(self.new, S):
            self.say(f"({self.new_stack} holds no IP to be checked on now; it was checked before {P} was "
                     f"released)")
            return
        ok, detail = http_ok(S, self.http_port, self.new.health_path)
        if ok and self.smoke is None:
            self.say("WARNING: smoke checks skipped (--skip-smoke): only the health check gates this swap")
        elif ok:
            failures = self.smoke(S)
            if failures:
                ok, detail = False, f"{len(failures)} smoke check(s) failed: " + "; ".join(failures)
            else:
                detail += "; smoke checks passed"
        if ok:
            self.say(f"check: {detail}")
            return
        if hP == self.old.port:
            if not changed:
                raise OperationError(f"{self.new_stack} is not healthy on its spare IP: {detail}. Nothing was "
                                     f"changed")
            raise OperationError(
                f"{self.new_stack} is not healthy on its spare IP: {detail}. {P} has not moved: {self.old_stack} "
                f"still serves it. Fix {self.new_stack} and run `{self.command}` again, or end the swap here:\n"
                + "\n".join(f"  {line}" for line in self._abandon_lines(r)))
        q = shlex.quote
        raise OperationError(
            f"{self.new_stack} is not healthy on its spare IP: {detail}, and {self.old_stack} has "
            f"already released {P}. Fix {self.new_stack} and run `{self.command}` again, or "
            f"give {P} back to {self.old_stack}:\n"
            f"  pulumi config set {FLOATING_IP} {P} -s {self.old_stack}\n"
            f"  pulumi up -s {self.old_stack} --policy-pack policy --target {q(self.old.urn)}\n"
            f"  pulumi config rm {RECORD} -s {self.old_stack}\n"
            f"  pulumi config rm {RECORD} -s {self.new_stack}")

    def _abandon_lines(self, r: Record) -> list[str]:
        q = shlex.quote
        lines = []
        if self.new.ip != r.spare_ip or not self.holds(self.new, r.spare_ip):
            lines += [f"pulumi config set {FLOATING_IP} {r.spare_ip} -s {self.new_stack}",
                      f"pulumi config set {BASTION} {r.spare_ip} -s {self.new_stack}",
                      f"pulumi up -s {self.new_stack} --policy-pack policy --target {q(self.new.urn)}"]
        lines += [f"pulumi config rm {RECORD} -s {self.old_stack}",
                  f"pulumi config rm {RECORD} -s {self.new_stack}"]
        if self.old.retained:  # marked for the move: without the record, its next update clears the flag
            lines.append(f"pulumi up -s {self.old_stack} --policy-pack policy --target {q(self.old.urn)}")
        return lines

    def measure(self, r: Record) -> None:
        """How long the public IP answered nothing: from the moment this run
        asked OpenStack to move (or unbind) it, or the recorded moment of an
        earlier run, to its first answer after the move."""
        self._measured_once = True
        P = r.public_ip
        deadline = time.monotonic() + self.wait_seconds
        while True:
            ok, detail = http_ok(P, self.http_port, self.new.health_path,
                                 timeout=max(1.0, min(10.0, self.wait_seconds)))
            if ok or time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))
        if self._asked is not None:
            asked_at, seconds, since = self._asked_at, time.monotonic() - self._asked, f"at {self._asked_at}"
        elif r.asked_at:
            asked_at, seconds, since = r.asked_at, _since(r.asked_at), f"at {r.asked_at}, in an earlier run"
        else:
            asked_at, seconds, since = "", None, ""
        if not ok:
            self.say(f"WARNING: {P} does not answer yet: {detail}")
            self._write(r.but(asked_at=asked_at))
            return
        if seconds is None:
            self.say(f"{P} answers again ({detail}); how long it answered nothing is not known (the run that "
                     f"moved it stopped before it could say)")
            return
        seconds = round(seconds, 1)
        self.say(f"{P} answered nothing for at most {seconds:.1f} s: the swap asked OpenStack to move it {since}, "
                 f"and {detail} {seconds:.1f} s later.")
        self._write(r.but(asked_at=asked_at, unbound_seconds=seconds))

    def _watch(self, side: Side) -> Callable[[str], None]:
        """Notes when the engine starts the association's step: that is when
        OpenStack is asked (each stack has one association)."""
        name = f"{side.env}-proxy-floating-ip"

        def watch(line: str) -> None:
            if self._asked is None and name in line and STEP_STARTS.search(line):
                self._asked, self._asked_at = time.monotonic(), utc_now()
        return watch

    def _up_asking(self, side: Side, message: str) -> None:
        """The update that moves or unbinds the public IP, timed."""
        self._asked = None
        start, start_at = time.monotonic(), utc_now()
        urn = side.urn
        try:
            self.pulumi.up_target(side.stack, urn, message, watch=self._watch(side))
        finally:
            if self._asked is None:  # the step's line was not seen: count from the update's start
                self._asked, self._asked_at = start, start_at
        self.reload(side)

    # ------------------------------------------------------------- changes
    def _set(self, side: Side, key: str, value: str) -> None:
        self.pulumi.config_set(side.stack, key, value)
        side.config[key] = value

    def _rm(self, side: Side, key: str) -> None:
        self.pulumi.config_rm(side.stack, key)
        side.config.pop(key, None)

    def _pin_bastion(self, side: Side, address: str, following: tuple[str, ...]) -> None:
        """idr:sshBastion defaults to idr:floatingIp; keep it pointing at the
        address the stack's own proxy has once this swap is done (an explicit
        DNS name is left alone)."""
        if side.bastion in ("", *following) and side.bastion != address:
            self._set(side, BASTION, address)

    def _unprotect(self, side: Side) -> None:
        if side.association and side.association.get("protect"):
            self.pulumi.unprotect(side.stack, side.urn)
            side.association["protect"] = False

    def _name_ip(self, side: Side, ip: str, other: str) -> None:
        """idr:floatingIp of the side becomes `ip` (its bastion follows, away from `other`)."""
        if side.ip != ip:
            self._pin_bastion(side, ip, (other,))
            self._set(side, FLOATING_IP, ip)

    def _drop_ip(self, side: Side, ip: str, bastion: str) -> None:
        """idr:floatingIp `ip` leaves the side's config (its bastion moves to `bastion`);
        the association may go only once unprotected."""
        if side.ip == ip:
            self._pin_bastion(side, bastion, (ip,))
            self._unprotect(side)
            self._rm(side, FLOATING_IP)

    def _still_bound(self, side: Side, ip: str) -> OperationError:
        return OperationError(f"{ip} is still bound to {side.port} although {side.stack}'s state has no "
                              f"association: unbind it with `openstack floating ip unset --port {ip}`, then run "
                              f"`{self.command}` again")

    def _up(self, side: Side, message: str) -> None:
        """A targeted update of the side's association, then the state read
        back (`pulumi stack export`): what the swap judges next is what the
        engine left, not what it was asked for."""
        self.pulumi.up_target(side.stack, side.urn, message)
        self.reload(side)

    def _check_released(self, side: Side, ip: str) -> None:
        """After an update that was to remove the side's association of `ip`:
        it has left the state, and OpenStack has `ip` off the side's proxy."""
        if side.assoc_ip:
            deps = side.dependents
            kept = (f"; {len(deps)} resource(s) in the state depend on it ({', '.join(deps[:3])}"
                    f"{', ...' if len(deps) > 3 else ''}), and a targeted update keeps what untargeted "
                    f"resources depend on" if deps else "")
            raise OperationError(
                f"`pulumi up` of {side.stack} finished, but its state still holds the association of "
                f"{side.assoc_ip}{kept}. OpenStack: {self.holder(ip).describe()}. Run `pulumi up -s {side.stack} "
                f"--policy-pack policy` (it stores what the program declares now), then `{self.command}` again")
        if self.holds(side, ip):
            raise self._still_bound(side, ip)

    def rebind_spare(self, r: Record) -> None:
        """The new stack gave up its spare IP, but the public one has not
        moved yet: it takes the spare back, so that it is checked first."""
        new, S = self.new, r.spare_ip
        self.say(f"{self.new_stack} gave up {S} but {r.public_ip} has not moved: {self.new_stack} takes {S} back "
                 f"so that it is checked before {r.public_ip} moves.")
        self._pin_bastion(new, S, (r.public_ip,))
        if new.ip != S:
            if new.assoc_ip:
                self._unprotect(new)
            self._set(new, FLOATING_IP, S)
        if not self.holds(new, S):
            self._up(new, f"swap {self.old_stack} -> {self.new_stack}: give {S} back to {self.new_stack} for its "
                          f"check")

    def mark_retained(self, r: Record, message: str) -> None:
        old = self.old
        if not old.association or old.retained:
            return
        self._up(old, message)
        if old.assoc_ip == r.public_ip and not old.retained:
            self.say(f"{self.old_stack}'s state does not show its association as retained on delete after the "
                     f"update, so removing it would unbind {r.public_ip} from {self.new_stack}: the swap uses the "
                     f"release-first order instead.")
            raise _FallBack(self._switch(r))

    def release_spare(self, r: Record, message: str) -> None:
        new, S = self.new, r.spare_ip
        self._drop_ip(new, S, r.public_ip)
        if new.assoc_ip:
            self._unprotect(new)
            if new.retained:
                raise OperationError(f"{self.new_stack}'s association is retained on delete, so its update would "
                                     f"not release {S}: run `pulumi up -s {self.new_stack} --policy-pack policy` "
                                     f"with idr:floatingIp {S} first, then `{self.command}` again")
            self._up(new, message)
        self._check_released(new, S)

    def move_public(self, r: Record, message: str) -> None:
        new, P = self.new, r.public_ip
        self._name_ip(new, P, r.spare_ip)
        if self._taken(r):
            return self._measured(r)
        if self.holds(self.old, P) and not (self.old.assoc_ip == P and self.old.retained):
            raise OperationError(f"{self.old_stack}'s association of {P} is not retained on delete in its state: "
                                 f"run `{self.command}` again (step 1 marks it)")
        others = self.os.floating_ips_of_port(new.port)
        if others:
            raise OperationError(f"{new.port} still holds {', '.join(others)}, and Neutron binds one floating IP "
                                 f"per fixed IP (FloatingIPPortAlreadyAssociated): unbind it "
                                 f"(`openstack floating ip unset --port <ip>`), then run `{self.command}` again")
        try:
            self._up_asking(new, message)
        except PulumiError as error:
            text = str(error.error)
            if REFUSED in text and PORT_TAKEN not in text and self.holds(self.old, P) and \
                    not self.os.floating_ips_of_port(new.port):
                self._asked = None
                tail = "\n".join(f"    {line}" for line in text.strip().splitlines()[-4:])
                self.say(f"OpenStack refused to move {P} from {self.old.port} to {new.port} in one update:\n{tail}\n"
                         f"Nothing moved; {self.old_stack} still serves {P}. Falling back to the release-first "
                         f"order: {P} answers nothing from its release in {self.old_stack} until "
                         f"{self.new_stack} has taken it (two updates).")
                self.reload(new)
                raise _FallBack(self._switch(r)) from None
            raise
        if not self._taken(r):
            raise OperationError(f"`pulumi up` of {self.new_stack} finished but OpenStack shows "
                                 f"{self.holder(P).describe()}: run `{self.command}` again")
        self._measured(r)

    def _measured(self, r: Record) -> None:
        if self.r.unbound_seconds is None and not self._measured_once:
            self.measure(self.r)

    def _switch(self, r: Record) -> Record:
        self.r = self.r.but(order=RELEASE_FIRST) if self.r else r.but(order=RELEASE_FIRST)
        return self.r

    def forget_public(self, r: Record, message: str) -> None:
        old, P = self.old, r.public_ip
        if old.assoc_ip == P and not old.retained:
            raise OperationError(f"{self.old_stack}'s association of {P} is not retained on delete in its state, so "
                                 f"removing it would unbind {P} from {self.new_stack}. Mark it by hand: "
                                 f"`pulumi stack export -s {self.old_stack} > state.json`, set \"retainOnDelete\": "
                                 f"true on {old.urn}, `pulumi stack import -s {self.old_stack} < state.json`; then "
                                 f"run `{self.command}` again")
        self._drop_ip(old, P, r.spare_ip)
        if old.assoc_ip:
            self._unprotect(old)
            self._up(old, message)
        if old.assoc_ip:
            self._check_released(old, P)
        if not self.holds(self.new, P):
            raise OperationError(f"{P} is no longer on {self.new.port} after {self.old_stack} forgot its association "
                                 f"({self.holder(P).describe()}): give it back to {self.new_stack} with `pulumi up -s "
                                 f"{self.new_stack} --policy-pack policy --target {shlex.quote(self.new.urn)}`")

    def release_public(self, r: Record, message: str) -> None:
        old, P = self.old, r.public_ip
        if old.assoc_ip == P and old.retained:
            # Marked for a direct move that did not happen: unmark it first
            # (the program declares it only while idr:floatingIp names it).
            if old.ip != P:
                self._set(old, FLOATING_IP, P)
            self._up(old, message + ": clear retain-on-delete first")
            if old.retained:
                raise OperationError(f"{self.old_stack}'s association of {P} is still retained on delete after the "
                                     f"update, so removing it would not release {P}: check `pulumi stack export -s "
                                     f"{self.old_stack}`, then run `{self.command}` again")
        self._drop_ip(old, P, r.spare_ip)
        if old.assoc_ip:
            self._unprotect(old)
            if self.holds(old, P):
                self._up_asking(old, message)
            else:
                self._up(old, message)
        self._check_released(old, P)

    def take_public(self, r: Record, message: str) -> None:
        new, P = self.new, r.public_ip
        self._name_ip(new, P, r.spare_ip)
        if not self._taken(r):
            self._up(new, message)
            if not self._taken(r):
                raise OperationError(f"`pulumi up` of {self.new_stack} finished but OpenStack shows "
                                     f"{self.holder(P).describe()}: run `{self.command}` again")
        self._measured(r)

    def give_spare(self, r: Record, message: str) -> None:
        old, S = self.old, r.spare_ip
        self._name_ip(old, S, r.public_ip)
        if not self.holds(old, S):
            spare = self.holder(S)
            if spare.port_id:
                raise OperationError(f"{spare.describe()}, so {old.stack} cannot take it: {self.new_stack}'s "
                                     f"update should have released it; check `pulumi stack -s {self.new_stack}`, "
                                     f"then run `{self.command}` again")
            self._up(old, message)

    def final_check(self, public_ip: str) -> int:
        path = self.new.health_path
        deadline = time.monotonic() + self.wait_seconds
        while True:
            ok, detail = http_ok(public_ip, self.http_port, path)
            if ok or time.monotonic() >= deadline:
                break
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if ok:
            self.say(f"check: {detail}")
            return 0
        self.say(f"WARNING: the public IP does not answer: {detail}. To roll back: `{self.rollback}`")
        return 1


def smoke_gate(pulumi: Pulumi, stack: str, scheme: str) -> Callable[[str], list[str]]:
    """The smoke checks of `stack` at an address it holds, as its
    idr:serverName (TLS verified unless its certificate is self-signed)."""
    def check(ip: str) -> list[str]:
        from . import smoke
        host, verify = smoke.stack_name_and_tls(pulumi, stack, scheme)
        return [str(f) for f in smoke.run_checks(f"{scheme}://{ip}", host, verify_tls=verify)]
    return check


def main(argv=None, openstack_client: Optional[OpenStack] = None, conn=None) -> int:
    """`openstack_client` answers the floating-IP questions and `conn` (an
    openstacksdk connection) takes the snapshots; by default both come from
    one connection made from --os-cloud / OS_*."""
    parser = argparse.ArgumentParser(prog="python -m operations.swap", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="old", required=True, help="stack that holds the public IP now")
    parser.add_argument("--to", dest="new", required=True, help="stack that takes it (holds a spare IP now)")
    parser.add_argument("--public-ip", help="the public IP (default: the --from stack's idr:floatingIp)")
    parser.add_argument("--snapshot", action="store_true",
                        help="snapshot the --from stack's data volumes first (operations.backup snapshot) and "
                             "stop unless every snapshot becomes available")
    parser.add_argument("--snapshot-timeout", type=float, default=3600.0,
                        help="seconds the snapshots may take to become available (default 3600)")
    parser.add_argument("--release-first", action="store_true",
                        help="release the public IP in the --from stack before the --to stack takes it (the order "
                             "of earlier versions; longer downtime), for a cloud that refuses to move an associated "
                             "floating IP in one update")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--http-port", type=int, default=80, help="port of the health checks (default 80)")
    parser.add_argument("--skip-smoke", action="store_true",
                        help="do not run the smoke checks (operations.smoke) against the --to stack before the "
                             "public IP moves; only the health check gates the swap (said in its output)")
    parser.add_argument("--smoke-scheme", choices=("https", "http"), default="https",
                        help="scheme of the smoke checks at the --to stack's spare IP (default https)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds the public IP may take to answer")
    parser.add_argument("--os-cloud", help="clouds.yaml entry (default: OS_CLOUD or OS_* variables)")
    args = parser.parse_args(argv)
    if args.snapshot_timeout < 0:
        parser.error("--snapshot-timeout takes a number of seconds >= 0")
    try:
        if openstack_client is None:
            conn = conn or connect(args.os_cloud)
        client = openstack_client or OpenStack(conn)
        pulumi = Pulumi(say=print)
        snapshot = None
        if args.snapshot:
            from . import backup

            def snapshot(stack: str) -> bool:
                return backup.snapshot_stack(pulumi, conn or connect(args.os_cloud), stack,
                                             timeout=args.snapshot_timeout)
        swap = Swap(pulumi, client, args.old, args.new, public_ip=args.public_ip, assume_yes=args.yes,
                    http_port=args.http_port, wait_seconds=args.wait, snapshot=snapshot,
                    release_first=args.release_first,
                    smoke=None if args.skip_smoke else smoke_gate(pulumi, args.new, args.smoke_scheme))
        return swap.run()
    except OperationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
