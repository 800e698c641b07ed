"""The swap command: read both stacks, take the plan's next step until none
is left, and say what it did. Usage and what each step does:
docs/operations/new-release.md and rollback.md."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from components.swap_record import CONFIG_KEY as RECORD, DIRECT, DONE, RELEASE_FIRST, Record

from ..common import OpenStack, OperationError, Pulumi, PulumiError, confirm, connect, short_stack
from . import plan
from .changes import Run
from .health import check_new, final_check, measure, smoke_gate
from .observe import Side
from .steps import ACTIONS, rebind_spare

# Takes snapshots of a stack's essential volumes; True when all are available
# (operations.backup.snapshot_stack, given by main for --snapshot).
Snapshotter = Callable[[str], bool]


class Swap:
    """One run of `python -m operations.swap --from <old> --to <new>`."""

    def __init__(self, pulumi: Pulumi, openstack: OpenStack, old: str, new: str, *,
                 public_ip: Optional[str] = None, assume_yes: bool = False, http_port: int = 80,
                 wait_seconds: float = 120.0, say: Callable[[str], None] = print,
                 snapshot: Optional[Snapshotter] = None, release_first: bool = False,
                 poll_seconds: float = 0.25, smoke: Optional[Callable[[str], list[str]]] = None):
        if short_stack(old) == short_stack(new):
            raise OperationError("--from and --to must be two different stacks")
        self.pulumi, self.openstack, self.old_stack, self.new_stack = pulumi, openstack, old, new
        self.public_ip, self.assume_yes, self.snapshot = public_ip, assume_yes, snapshot
        self.release_first, self.say = release_first, say
        self.command = plan.swap_command(old, new)
        self.rollback = plan.swap_command(new, old)
        # How the run checks and reports (operations/swap/changes.py Run).
        self.http_port, self.wait_seconds, self.poll_seconds, self.smoke = http_port, wait_seconds, poll_seconds, smoke

    def run(self) -> int:
        """Read both stacks, then take every step not done yet; 0 when the public IP answers at the end."""
        run = Run(self.pulumi, self.openstack, Side.read(self.pulumi, self.old_stack),
                  Side.read(self.pulumi, self.new_stack), self.command, say=self.say, http_port=self.http_port,
                  wait_seconds=self.wait_seconds, poll_seconds=self.poll_seconds, smoke=self.smoke)
        start = plan.start(run.old, run.new, self.public_ip, self.release_first)
        if start.record is None:
            self.say(f"{start.held} is already held by {self.new_stack}: nothing to move.")
            return final_check(run, start.held, self.rollback)
        r = start.record
        problem = plan.dependents_problem((run.old, run.new), self.command)
        if problem:
            raise OperationError(problem)
        if self.release_first and r.order == DIRECT and run.holds(run.old, r.public_ip):
            self.say("--release-first: the public IP has not moved yet, so the swap continues in the "
                     "release-first order.")
            r = r.but(order=RELEASE_FIRST)
        seen = run.observe(r)
        problem = None if start.resuming else plan.unassociated_problem(seen, r)
        if problem:
            raise OperationError(problem)
        n = self._next_step(run, r)
        # The new environment answers before the public IP moves, checked in
        # this run: through its spare IP, given back to it first if it gave it up.
        rebind = seen.holds(run.old, r.public_ip) and not seen.holds(run.new, r.spare_ip)
        if not rebind:
            check_new(run, r, changed=start.resuming)
        if not self._agreed(r, n, rebind, start.resuming):
            self.say("Stopped: nothing changed.")
            return 1
        r = self._steps(run, r, rebind)
        self.say(f"Swapped: {self.new_stack} holds {r.public_ip}, {self.old_stack} holds {r.spare_ip}.")
        if r.unbound_seconds is not None:
            self.say(f"{r.public_ip} answered nothing for at most {r.unbound_seconds:.1f} s ({r.order} order; "
                     f"recorded in {RECORD} of both stacks).")
        self.say("Commit Pulumi.*.yaml so the repository shows the new holders.")
        return final_check(run, r.public_ip, self.rollback)

    def _next_step(self, run: Run, r: Record) -> int:
        """The plan's next step, after checking that config, Pulumi state and OpenStack tell one story."""
        seen = run.observe(r)
        problems = plan.check(seen, r)
        if problems:
            raise OperationError(f"the stacks and OpenStack disagree ({problems[0]}). {seen.story()}. Nothing was "
                                 f"changed by this run; fix that by hand, then run `{self.command}` again")
        return plan.next_step(seen, r, plan.steps(r, self.old_stack, self.new_stack))

    def _agreed(self, r: Record, n: int, rebind: bool, resuming: bool) -> bool:
        """The plan shown; the snapshot taken (--snapshot) or reminded of; the operator's yes."""
        P, S = r.public_ip, r.spare_ip
        self.say(("Resuming:" if resuming else "Plan:") +
                 f" move public IP {P} from {self.old_stack} to {self.new_stack}, and spare "
                 f"{S} from {self.new_stack} to {self.old_stack}, in the {r.order} order.")
        if rebind:
            self.say(f"   0. give {S} back to {self.new_stack} so that it is checked before {P} moves")
        for line in plan.plan_lines(plan.steps(r, self.old_stack, self.new_stack), n):
            self.say(line)
        self.say(plan.downtime(r.order))
        if self.snapshot:
            question = f"Snapshot {self.old_stack}'s data volumes now, then swap?"
        else:
            self.say(f"Snapshot the volumes first: `python -m operations.backup snapshot --stack {self.old_stack}` "
                     f"(or run this command with --snapshot).")
            question = "Have the instances' volumes been snapshotted, and shall the swap go ahead?"
        if not confirm(question, self.assume_yes):
            return False
        if self.snapshot and not self.snapshot(self.old_stack):
            raise OperationError(f"not every snapshot of {self.old_stack} is available (see above), so the swap "
                                 f"went no further: this run changed neither stack. Fix that, then run "
                                 f"`{self.command} --snapshot` again (today's available snapshots are kept, "
                                 f"not taken twice)")
        return True

    def _steps(self, run: Run, r: Record, rebind: bool) -> Record:
        """Every step not done yet, in order; the record as it ends, done. On
        a failure, what this run learnt of the move is kept (Run.save_asked)."""
        try:
            run.write(r)
            if rebind:
                rebind_spare(run, r)
                check_new(run, r, changed=True)
            steps = plan.steps(r, self.old_stack, self.new_stack)
            n = self._next_step(run, r)
            while n <= len(steps):
                step = steps[n - 1]
                outcome = ACTIONS[step.action](run, r, f"swap {self.old_stack} -> {self.new_stack}: step {n} of "
                                                       f"{len(steps)} ({step.title})")
                r = outcome.record
                if outcome.fall_back:
                    run.write(r)
                    steps = plan.steps(r, self.old_stack, self.new_stack)
                    n = self._next_step(run, r)
                    self.say("New plan, in the release-first order:")
                    for line in plan.plan_lines(steps, n):
                        self.say(line)
                    continue
                if outcome.moved:
                    r = self._measured(run, r)
                self.say(f"step {n} done: {step.title}")
                n += 1
            r = self._measured(run, r).but(status=DONE)
            run.write(r)
            return r
        except PulumiError as error:
            run.save_asked(r)
            raise OperationError(f"{error}\n\nThe swap stopped part-way. Run `{self.command}` again: it "
                                 f"continues from here (or says what to fix first).") from None
        except OperationError:
            run.save_asked(r)
            raise

    @staticmethod
    def _measured(run: Run, r: Record) -> Record:
        """The record with how long the public IP answered nothing, measured
        once per run (and written) unless an earlier run did."""
        if r.unbound_seconds is None and not run.asked.measured:
            r = measure(run, r)
            run.write(r)
        return r

def main(argv=None, openstack_client: Optional[OpenStack] = None, conn=None) -> int:
    """`openstack_client` answers the floating-IP questions and `conn` (an
    openstacksdk connection) takes the snapshots; by default both come from
    one connection made from --os-cloud / OS_*."""
    parser = argparse.ArgumentParser(prog="python -m operations.swap",
                                     description="Move the public floating IP from one environment to another.")
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
            from .. import backup

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
