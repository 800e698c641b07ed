"""Volume snapshots of an environment's data: take, list, prune.

    python -m operations.backup snapshot --stack prod [--include-cache] [--timeout 3600]
    python -m operations.backup list --stack prod
    python -m operations.backup prune --stack prod [--keep-daily 7 --keep-weekly 4 --keep-monthly 6] [--dry-run|--yes]

Essential volumes (the page's "must be backed up"): omeroreadwrite:/data and
database:/var/lib/pgsql; the nginx cache (proxy) only with --include-cache,
as it can be regenerated. Snapshots are named `<volume name>-YYYYMMDD` (as
production names them) and taken with force, since the volumes are in use.
Volume IDs come from the stack's `dataVolumes` output. `snapshot` waits until
every snapshot is `available` (openstacksdk's wait_for_status), reports each
with its size, and exits 1 naming any that failed or did not finish within
--timeout seconds. Restoring is a config change:
`idr:<role>VolumeFromSnapshot` (docs/operations/backups.md, restore.md).
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

from openstack import exceptions as os_exceptions

from .common import OperationError, Pulumi, confirm, connect

ESSENTIAL_ROLES = ("omeroreadwrite", "database")
CACHE_ROLE = "proxy"
POLL_SECONDS = 5.0        # between two looks at a snapshot's status
DEFAULT_TIMEOUT = 3600.0  # for all of one run's snapshots to become available
_NAME_RE = re.compile(r"^(?P<volume>.+)-(?P<date>[0-9]{8})$")


def snapshot_name(volume_name: str, day: dt.date) -> str:
    return f"{volume_name}-{day:%Y%m%d}"


def snapshot_date(volume_name: str, snapshot_name_: str) -> Optional[dt.date]:
    """Date of a snapshot this command named for that volume, else None
    (snapshots named otherwise are never pruned)."""
    match = _NAME_RE.match(snapshot_name_ or "")
    if not match or match["volume"] != volume_name:
        return None
    try:
        return dt.datetime.strptime(match["date"], "%Y%m%d").date()
    except ValueError:
        return None


def retained(snapshots: Iterable[tuple[Hashable, dt.date]], keep_daily: int = 7, keep_weekly: int = 4,
             keep_monthly: int = 6) -> set:
    """Keys of the snapshots a retention rule keeps.

    For each rule, the newest snapshot of each of the N most recent periods
    (days, ISO weeks, months) that have a snapshot; the union of the rules,
    plus the newest snapshot of all, so pruning never leaves a volume without
    a backup. Ties on a date are broken by key, so the result is stable."""
    items = sorted(snapshots, key=lambda kv: (kv[1], str(kv[0])), reverse=True)
    if not items:
        return set()
    keep = {items[0][0]}
    periods = (
        (keep_daily, lambda d: d),
        (keep_weekly, lambda d: d.isocalendar()[:2]),
        (keep_monthly, lambda d: (d.year, d.month)),
    )
    for count, period in periods:
        seen: list[Hashable] = []
        for key, day in items:  # newest first: the first of a period is its newest
            p = period(day)
            if p in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(p)
            keep.add(key)
    return keep


@dataclass(frozen=True)
class Volume:
    role: str
    id: str
    name: str
    size: int


def stack_volumes(pulumi: Pulumi, stack: str, include_cache: bool) -> list[Volume]:
    outputs = pulumi.outputs(stack)
    data = outputs.get("dataVolumes") or {}
    roles = ESSENTIAL_ROLES + ((CACHE_ROLE,) if include_cache else ())
    missing = [r for r in roles if r not in data]
    if missing:
        raise OperationError(f"stack {stack} has no data volume for {', '.join(missing)} in its dataVolumes "
                             f"output: has it been deployed (`pulumi up -s {stack}`)?")
    return [Volume(r, data[r]["id"], data[r]["name"], int(data[r].get("size") or 0)) for r in roles]


@dataclass(frozen=True)
class Outcome:
    """How one snapshot of a run ended."""
    name: str
    id: str
    status: str          # Cinder's last status, or "not started"
    size: Optional[int]  # GB
    ok: bool
    detail: str          # "available", "status error", "timed out after 60 s (status creating)", ...


def age(created_at: Optional[str], now: dt.datetime) -> str:
    """'45 min', '5 h', '12 d' since Cinder's created_at (UTC, no zone given)."""
    if not created_at:
        return "?"
    try:
        created = dt.datetime.fromisoformat(created_at)
    except ValueError:
        return "?"
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    minutes = max(0, int((now - created).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // (24 * 60)} d"


class Backups:
    def __init__(self, conn, say=print, clock: Callable[[], float] = time.monotonic):
        self.conn = conn
        self.say = say
        self.clock = clock

    def snapshots_of(self, volume: Volume) -> list:
        return [s for s in self.conn.block_storage.snapshots(details=True) if s.volume_id == volume.id]

    def snapshot(self, volumes: list[Volume], today: dt.date, timeout: float = DEFAULT_TIMEOUT) -> list[Outcome]:
        """Start today's snapshot of each volume (an existing one is kept),
        then wait until each is available, within `timeout` seconds in all."""
        started = self.clock()
        pending, outcomes = [], []
        for v in volumes:
            name = snapshot_name(v.name, today)
            existing = [s for s in self.snapshots_of(v) if s.name == name]
            if existing:
                snap = existing[0]
                self.say(f"{name}: exists already ({snap.id}, {snap.status})")
                pending.append(snap)
                continue
            try:
                snap = self.conn.block_storage.create_snapshot(
                    volume_id=v.id, name=name, force=True,  # the volumes are attached and in use
                    description=f"IDR {v.role} data volume {v.name}, taken by operations.backup")
            except os_exceptions.SDKException as error:
                self.say(f"{name}: FAILED to start: {error}")
                outcomes.append(Outcome(name, "", "not started", v.size, False, f"not started: {error}"))
                continue
            self.say(f"{name}: started ({snap.id}) from {v.name} ({v.id}, {v.size} GB)")
            pending.append(snap)
        if pending:
            self.say(f"waiting up to {timeout:g} s for {len(pending)} snapshot(s) to be available")
        for snap in pending:
            outcomes.append(self._wait(snap, started + timeout, timeout))
        return outcomes

    def _wait(self, snap, deadline: float, timeout: float) -> Outcome:
        try:
            done = self.conn.block_storage.wait_for_status(
                snap, status="available", failures=["error", "error_deleting", "deleting"],
                interval=POLL_SECONDS, wait=max(0.0, deadline - self.clock()))
        except os_exceptions.ResourceTimeout:
            try:  # one last look, for the report
                snap = self.conn.block_storage.get_snapshot(snap.id)
            except os_exceptions.SDKException:
                pass
            if snap.status == "available":
                done = snap
            else:
                outcome = Outcome(snap.name, snap.id, snap.status, snap.size, False,
                                  f"timed out after {timeout:g} s (status {snap.status})")
                self.say(f"{snap.name}: NOT AVAILABLE: {outcome.detail} ({snap.id})")
                return outcome
        except os_exceptions.ResourceFailure:
            try:
                snap = self.conn.block_storage.get_snapshot(snap.id)
                status = snap.status
            except os_exceptions.NotFoundException:
                status = "gone"
            except os_exceptions.SDKException:
                status = "error"
            outcome = Outcome(snap.name, snap.id, status, snap.size, False, f"status {status}")
            self.say(f"{snap.name}: FAILED: {outcome.detail} ({snap.id})")
            return outcome
        except os_exceptions.SDKException as error:
            outcome = Outcome(snap.name, snap.id, snap.status, snap.size, False, f"could not be checked: {error}")
            self.say(f"{snap.name}: FAILED: {outcome.detail} ({snap.id})")
            return outcome
        self.say(f"{done.name}: available, {done.size if done.size is not None else '?'} GB ({done.id})")
        return Outcome(done.name, done.id, done.status, done.size, True, "available")

    def list(self, volumes: Sequence[Volume], now: Optional[dt.datetime] = None) -> Sequence[Any]:
        now = now or dt.datetime.now(dt.timezone.utc)
        rows: list[Any] = []
        header = f"{'ROLE':15} {'SNAPSHOT':45} {'STATUS':10} {'SIZE':>8}  {'AGE':>6}  ID"
        for v in volumes:
            for s in sorted(self.snapshots_of(v), key=lambda s: s.name or ""):
                if not rows:
                    self.say(header)
                rows.append(s)
                size = f"{s.size} GB" if s.size is not None else "? GB"
                self.say(f"{v.role:15} {s.name or '':45} {s.status or '?':10} {size:>8}  "
                         f"{age(s.created_at, now):>6}  {s.id}")
        if not rows:
            self.say("no snapshots")
        return rows

    def prune_plan(self, volumes: Sequence[Volume], keep_daily: int, keep_weekly: int,
                   keep_monthly: int) -> Sequence[Any]:
        doomed = []
        for v in volumes:
            dated = ((s, snapshot_date(v.name, s.name)) for s in self.snapshots_of(v))
            ours = [(s, d) for s, d in dated if d is not None]
            keep = retained(((s.id, d) for s, d in ours), keep_daily, keep_weekly, keep_monthly)
            for s, d in sorted(ours, key=lambda sd: sd[1]):
                verdict = "keep" if s.id in keep else "delete"
                self.say(f"{verdict:6} {s.name} ({s.id})")
                if verdict == "delete":
                    doomed.append(s)
        return doomed

    def delete(self, snapshots: Sequence[Any]) -> None:
        for s in snapshots:
            if s.status != "available":  # a snapshot being made or deleted cannot be deleted now
                self.say(f"skipped {s.name}: status {s.status}")
                continue
            self.conn.block_storage.delete_snapshot(s.id)
            self.say(f"deleted {s.name} ({s.id})")


def failures_message(stack: str, outcomes: list[Outcome]) -> Optional[str]:
    """What went wrong with a run's snapshots and what to do, or None when all are available."""
    bad = [o for o in outcomes if not o.ok]
    if not bad:
        return None
    lines = [f"{len(bad)} of {len(outcomes)} snapshot(s) of {stack} are not available:"]
    for o in bad:
        lines.append(f"  {o.name}: {o.detail}" + (f" ({o.id})" if o.id else ""))
    if any(o.id and o.status != "creating" for o in bad):
        lines.append("Delete a failed snapshot (`openstack volume snapshot delete <id>`) and run the command again "
                     "to take it anew.")
    if any(not o.id for o in bad):
        lines.append("One that did not start: fix the cause shown and run the command again.")
    if any(o.status == "creating" for o in bad):
        lines.append(f"One still creating may yet finish: run `python -m operations.backup snapshot --stack {stack}` "
                     f"again to wait for it (it is not taken twice), or see `python -m operations.backup list "
                     f"--stack {stack}`.")
    return "\n".join(lines)


def finish(stack: str, outcomes: list[Outcome], say=print, complain=None) -> bool:
    """Report a run's end; True when every snapshot is available."""
    problem = failures_message(stack, outcomes)
    if problem:
        (complain or say)(f"error: {problem}")
        return False
    say(f"{len(outcomes)} snapshot(s) of {stack} available, {sum(o.size or 0 for o in outcomes)} GB in all")
    return True


def snapshot_stack(pulumi: Pulumi, conn, stack: str, *, include_cache: bool = False,
                   timeout: float = DEFAULT_TIMEOUT, today: Optional[dt.date] = None, say=print) -> bool:
    """Take and wait for the stack's snapshots; True when every one is available
    (otherwise the failures are reported to `say`). Used by `swap --snapshot`."""
    volumes = stack_volumes(pulumi, stack, include_cache)
    return finish(stack, Backups(conn, say).snapshot(volumes, today or dt.date.today(), timeout), say)


def main(argv=None, conn=None, today: Optional[dt.date] = None, now: Optional[dt.datetime] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operations.backup", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("snapshot", "list", "prune"))
    parser.add_argument("--stack", required=True)
    parser.add_argument("--include-cache", action="store_true", help="also the nginx cache volume (proxy)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="snapshot: seconds the snapshots may take to become available (default 3600)")
    parser.add_argument("--keep-daily", type=int, default=7)
    parser.add_argument("--keep-weekly", type=int, default=4)
    parser.add_argument("--keep-monthly", type=int, default=6)
    parser.add_argument("--dry-run", action="store_true", help="prune: only show what would be deleted")
    parser.add_argument("--yes", action="store_true", help="prune: do not ask for confirmation")
    parser.add_argument("--os-cloud", help="clouds.yaml entry (default: OS_CLOUD or OS_* variables)")
    args = parser.parse_args(argv)
    if min(args.keep_daily, args.keep_weekly, args.keep_monthly) < 0:
        parser.error("--keep-* take a number >= 0")
    if args.timeout < 0:
        parser.error("--timeout takes a number of seconds >= 0")
    try:
        volumes = stack_volumes(Pulumi(), args.stack, args.include_cache or args.action != "snapshot")
        backups = Backups(conn or connect(args.os_cloud))
        if args.action == "snapshot":
            outcomes = backups.snapshot(volumes, today or dt.date.today(), args.timeout)
            if not finish(args.stack, outcomes, complain=lambda text: print(text, file=sys.stderr)):
                return 1
        elif args.action == "list":
            backups.list(volumes, now)
        else:
            doomed = backups.prune_plan(volumes, args.keep_daily, args.keep_weekly, args.keep_monthly)
            if not doomed:
                print("nothing to prune")
            elif args.dry_run:
                print(f"dry run: {len(doomed)} snapshot(s) would be deleted")
            elif confirm(f"Delete {len(doomed)} snapshot(s)?", args.yes):
                backups.delete(doomed)
            else:
                print("nothing deleted")
                return 1
        return 0
    except OperationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
