"""Move the public floating IP from one environment to another.

    python -m operations.swap --from prod --to newidr [--snapshot] [--yes] [--public-ip IP]

Safe order, one `pulumi up --target <association>` per step (through the
Automation API, with the policy pack and the message
"swap prod -> newidr: step N of 3 (...)"), config edited by this command:
  1. release the public IP in the old stack (config rm idr:floatingIp),
  2. take it in the new stack (its spare IP is released by the same update),
  3. give the new stack's former spare IP to the old stack.
Rollback is the same command with the stacks swapped.

Where a swap stands is read from the two stacks' config (idr:floatingIp, and
the record `idrswap:state` the command writes to both) and from what
OpenStack shows (which port holds each IP) - never from a local file. Run
again after a failure: it continues from there, or says what to do.
"""
from __future__ import annotations

import argparse
import json
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


@dataclass(frozen=True)
class Record:
    """What a swap moves, written to both stacks before its first change."""
    from_stack: str
    to_stack: str
    public_ip: str
    spare_ip: str
    status: str

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def load(cls, text: str) -> Optional["Record"]:
        if not text:
            return None
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            raise OperationError(f"config {RECORD} = {text!r} is not a swap record; remove it with "
                                 f"`pulumi config rm {RECORD} -s <stack>` after checking both stacks by hand")


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


class Swap:
    def __init__(self, pulumi: Pulumi, openstack: OpenStack, old: str, new: str, *,
                 public_ip: Optional[str] = None, assume_yes: bool = False, http_port: int = 80,
                 wait_seconds: float = 120.0, say: Callable[[str], None] = print,
                 snapshot: Optional[Snapshotter] = None):
        if short_stack(old) == short_stack(new):
            raise OperationError("--from and --to must be two different stacks")
        self.pulumi, self.os, self.old_stack, self.new_stack = pulumi, openstack, old, new
        self.public_ip_arg = public_ip
        self.assume_yes, self.http_port, self.wait_seconds, self.say = assume_yes, http_port, wait_seconds, say
        self.snapshot = snapshot
        self.command = f"python -m operations.swap --from {old} --to {new}"
        self.rollback = f"python -m operations.swap --from {new} --to {old}"

    # ------------------------------------------------------------ reading
    def read(self) -> None:
        self.old = Side(self.old_stack, self.pulumi.config(self.old_stack), self.pulumi.resources(self.old_stack))
        self.new = Side(self.new_stack, self.pulumi.config(self.new_stack), self.pulumi.resources(self.new_stack))

    def holder(self, ip: str) -> FloatingIpHolder:
        return self.os.floating_ip(ip)

    def holds(self, side: Side, ip: str) -> bool:
        return self.holder(ip).port_name == f"{side.env}-proxy"

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
        return Record(self.old_stack, self.new_stack, public, self.new.ip, IN_PROGRESS)

    def phase(self, r: Record) -> int:
        """Number of steps whose config edit is made (0-3), after checking
        that config, Pulumi state and OpenStack tell one consistent story."""
        P, S = r.public_ip, r.spare_ip
        a, b = self.old.ip, self.new.ip
        hP, hS = self.holder(P), self.holder(S)
        old_port, new_port = f"{self.old.env}-proxy", f"{self.new.env}-proxy"
        story = (f"{self.old_stack}: idr:floatingIp={a or '(none)'}; {self.new_stack}: "
                 f"idr:floatingIp={b or '(none)'}; OpenStack: {hP.describe()}, {hS.describe()}")

        def expect(ok: bool, what: str):
            if not ok:
                raise OperationError(f"the stacks and OpenStack disagree ({what}). {story}. Nothing was changed "
                                     f"by this run; fix that by hand, then run `{self.command}` again")

        for h in (hP, hS):
            expect(h.port_name in ("", old_port, new_port),
                   f"{h.address} is bound to port {h.port_name or h.port_id}, which belongs to neither stack")
        if (a, b) == (P, S):
            expect(hP.port_name == old_port, f"{self.old_stack} should hold {P}")
            expect(hS.port_name == new_port, f"{self.new_stack} should hold {S}")
            return 0
        if (a, b) == ("", S):
            expect(hP.port_name in ("", old_port), f"{P} should be free or still with {self.old_stack}")
            expect(hS.port_name == new_port, f"{self.new_stack} should still hold {S}")
            return 1
        if (a, b) == ("", P):
            expect(self.old.association is None or hP.port_name != new_port,
                   f"{self.old_stack}'s state still has a floating-IP association")
            expect(hP.port_name in ("", new_port), f"{P} should be free or with {self.new_stack}")
            expect(hS.port_name in ("", new_port), f"{S} should be free or still with {self.new_stack}")
            return 2
        if (a, b) == (S, P):
            expect(hP.port_name == new_port, f"{self.new_stack} should hold {P}")
            expect(hS.port_name in ("", old_port), f"{S} should be free or with {self.old_stack}")
            return 3
        raise OperationError(f"the stacks' config matches no stage of moving {P} from {self.old_stack} to "
                             f"{self.new_stack} (spare {S}): {story}. Set idr:floatingIp of each stack to the "
                             f"IP its proxy holds in OpenStack, then run `{self.command}` again")

    # ------------------------------------------------------------ running
    def run(self) -> int:
        self.read()
        try:
            r = self._record() or self._new_record()
        except _AlreadyDone as done:
            self.say(f"{done.ip} is already held by {self.new_stack}: nothing to move.")
            return self.final_check(done.ip)
        resuming = any(x and x.status == IN_PROGRESS for x in (self.old.record, self.new.record))
        phase = self.phase(r)
        for side, ip in ((self.old, r.public_ip), (self.new, r.spare_ip)):
            if phase == 0 and side.association is None:
                raise OperationError(f"{side.stack}'s Pulumi state has no floating-IP association although "
                                     f"{ip} is on its proxy: run `pulumi up -s {side.stack} --policy-pack policy` first")
        if phase <= 1:  # the new environment must answer before it takes the public IP
            ok, detail = http_ok(r.spare_ip, self.http_port, self.new.health_path)
            if not ok and phase == 0:
                raise OperationError(f"{self.new_stack} is not healthy on its spare IP: {detail}. "
                                     f"Nothing was changed")
            if not ok:  # the public IP is already released: say how to go back
                q = shlex.quote
                raise OperationError(
                    f"{self.new_stack} is not healthy on its spare IP: {detail}, and {self.old_stack} has "
                    f"already released {r.public_ip}. Fix {self.new_stack} and run `{self.command}` again, or "
                    f"give {r.public_ip} back to {self.old_stack}:\n"
                    f"  pulumi config set {FLOATING_IP} {r.public_ip} -s {self.old_stack}\n"
                    f"  pulumi up -s {self.old_stack} --policy-pack policy --target {q(self.old.urn)}\n"
                    f"  pulumi config rm {RECORD} -s {self.old_stack}\n"
                    f"  pulumi config rm {RECORD} -s {self.new_stack}")
            self.say(f"check: {detail}")
        self.say(("Resuming:" if resuming else "Plan:") +
                 f" move public IP {r.public_ip} from {self.old_stack} to {self.new_stack}, and spare "
                 f"{r.spare_ip} from {self.new_stack} to {self.old_stack}.")
        steps = self.steps(r)
        for n, step in enumerate(steps, 1):
            self.say(f"   {n}. {step.title}" + ("  (started)" if n == phase else "  (done)" if n < phase else ""))
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
            for side in (self.old, self.new):
                if side.record != r:
                    self._set(side, RECORD, r.dump())
            for n, step in enumerate(steps, 1):
                step.run(r, f"swap {self.old_stack} -> {self.new_stack}: step {n} of {len(steps)} ({step.title})")
                self.say(f"step {n} done: {step.title}")
            done = Record(r.from_stack, r.to_stack, r.public_ip, r.spare_ip, DONE)
            for side in (self.old, self.new):
                self._set(side, RECORD, done.dump())
        except PulumiError as error:
            raise OperationError(f"{error}\n\nThe swap stopped part-way. Run `{self.command}` again: it "
                                 f"continues from here (or says what to fix first).") from None
        self.say(f"Swapped: {self.new_stack} holds {r.public_ip}, {self.old_stack} holds {r.spare_ip}.")
        self.say("Commit Pulumi.*.yaml so the repository shows the new holders.")
        return self.final_check(r.public_ip)

    def steps(self, r: Record) -> list["Step"]:
        """The swap's updates in order. The plan shown, each update's message
        and its number come from this list; phase() says how many of them
        have their config edit made."""
        return [Step(f"release {r.public_ip} in {self.old_stack}", self.release),
                Step(f"take {r.public_ip} in {self.new_stack}", self.take),
                Step(f"give {r.spare_ip} to {self.old_stack}", self.give_spare)]

    def _set(self, side: Side, key: str, value: str) -> None:
        self.pulumi.config_set(side.stack, key, value)
        side.config[key] = value

    def _rm(self, side: Side, key: str) -> None:
        self.pulumi.config_rm(side.stack, key)
        side.config.pop(key, None)

    def _pin_bastion(self, side: Side, address: str, following: tuple[str, ...]) -> None:
        """idr:sshBastion defaults to idr:floatingIp; keep it pointing at the
        stack's own proxy (an explicit DNS name is left alone)."""
        if side.bastion in ("", *following) and side.bastion != address:
            self._set(side, BASTION, address)

    def _unprotect(self, side: Side) -> None:
        if side.association and side.association.get("protect"):
            self.pulumi.unprotect(side.stack, side.urn)

    def release(self, r: Record, message: str) -> None:
        old = self.old
        if old.ip == r.public_ip:
            self._pin_bastion(old, r.public_ip, ())
            self._unprotect(old)
            self._rm(old, FLOATING_IP)
        elif old.ip:  # already past this step
            return
        if old.association is not None:
            self.pulumi.up_target(old.stack, old.urn, message)
        if self.holds(old, r.public_ip):
            raise OperationError(f"{r.public_ip} is still bound to {old.env}-proxy although "
                                 f"{old.stack}'s state has no association: unbind it with "
                                 f"`openstack floating ip unset --port {r.public_ip}`, then run `{self.command}` again")

    def take(self, r: Record, message: str) -> None:
        new = self.new
        if new.ip != r.public_ip:
            self._pin_bastion(new, r.public_ip, (r.spare_ip,))
            self._unprotect(new)
            self._set(new, FLOATING_IP, r.public_ip)
        if not self.holds(new, r.public_ip):
            self.pulumi.up_target(new.stack, new.urn, message)
            if not self.holds(new, r.public_ip):
                raise OperationError(f"`pulumi up` of {new.stack} finished but OpenStack shows "
                                     f"{self.holder(r.public_ip).describe()}: run `{self.command}` again")

    def give_spare(self, r: Record, message: str) -> None:
        old = self.old
        if old.ip != r.spare_ip:
            self._pin_bastion(old, r.spare_ip, (r.public_ip,))
            self._set(old, FLOATING_IP, r.spare_ip)
        if not self.holds(old, r.spare_ip):
            spare = self.holder(r.spare_ip)
            if spare.port_id:
                raise OperationError(f"{spare.describe()}, so {old.stack} cannot take it: {self.new_stack}'s "
                                     f"update should have released it; check `pulumi stack -s {self.new_stack}`, "
                                     f"then run `{self.command}` again")
            self.pulumi.up_target(old.stack, old.urn, message)

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


@dataclass(frozen=True)
class Step:
    title: str                              # "take 203.0.113.10 in newidr"
    run: Callable[[Record, str], None]      # (swap record, update message)


class _AlreadyDone(Exception):
    def __init__(self, ip: str):
        self.ip = ip


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
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--http-port", type=int, default=80, help="port of the health checks (default 80)")
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
                    http_port=args.http_port, wait_seconds=args.wait, snapshot=snapshot)
        return swap.run()
    except OperationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
