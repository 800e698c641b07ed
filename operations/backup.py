"""Volume snapshots of an environment's data: take, list, prune.

    python -m operations.backup snapshot --stack prod [--include-cache]
    python -m operations.backup list --stack prod
    python -m operations.backup prune --stack prod [--keep-daily 7 --keep-weekly 4 --keep-monthly 6] [--dry-run|--yes]

Essential volumes (the page's "must be backed up"): omeroreadwrite:/data and
database:/var/lib/pgsql; the nginx cache (proxy) only with --include-cache,
as it can be regenerated. Snapshots are named `<volume name>-YYYYMMDD` (as
production names them) and taken with force, since the volumes are in use.
Volume IDs come from the stack's `dataVolumes` output. Restoring is a config
change: `idr:<role>VolumeFromSnapshot` (README, Operating procedures).
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from dataclasses import dataclass
from typing import Hashable, Iterable, Optional

from .common import OperationError, Pulumi, confirm, connect

ESSENTIAL_ROLES = ("omeroreadwrite", "database")
CACHE_ROLE = "proxy"
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
        seen = []
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


class Backups:
    def __init__(self, conn, say=print):
        self.conn = conn
        self.say = say

    def snapshots_of(self, volume: Volume) -> list:
        return [s for s in self.conn.block_storage.snapshots(details=True) if s.volume_id == volume.id]

    def snapshot(self, volumes: list[Volume], today: dt.date) -> list:
        made = []
        for v in volumes:
            name = snapshot_name(v.name, today)
            existing = [s for s in self.snapshots_of(v) if s.name == name]
            if existing:
                self.say(f"{name}: exists already ({existing[0].id}, {existing[0].status}), skipped")
                continue
            snap = self.conn.block_storage.create_snapshot(
                volume_id=v.id, name=name, force=True,  # the volumes are attached and in use
                description=f"IDR {v.role} data volume {v.name}, taken by operations.backup")
            self.say(f"{name}: started ({snap.id}) from {v.name} ({v.id}, {v.size} GB)")
            made.append(snap)
        return made

    def list(self, volumes: list[Volume]) -> list:
        rows = []
        for v in volumes:
            for s in sorted(self.snapshots_of(v), key=lambda s: s.name or ""):
                rows.append(s)
                self.say(f"{v.role:15} {s.name:45} {s.status:10} {s.size or '?':>6} GB  {s.created_at or ''}  {s.id}")
        if not rows:
            self.say("no snapshots")
        return rows

    def prune_plan(self, volumes: list[Volume], keep_daily: int, keep_weekly: int, keep_monthly: int) -> list:
        doomed = []
        for v in volumes:
            ours = [(s, snapshot_date(v.name, s.name)) for s in self.snapshots_of(v)]
            ours = [(s, d) for s, d in ours if d is not None]
            keep = retained(((s.id, d) for s, d in ours), keep_daily, keep_weekly, keep_monthly)
            for s, d in sorted(ours, key=lambda sd: sd[1]):
                verdict = "keep" if s.id in keep else "delete"
                self.say(f"{verdict:6} {s.name} ({s.id})")
                if verdict == "delete":
                    doomed.append(s)
        return doomed

    def delete(self, snapshots: list) -> None:
        for s in snapshots:
            if s.status != "available":  # a snapshot being made or deleted cannot be deleted now
                self.say(f"skipped {s.name}: status {s.status}")
                continue
            self.conn.block_storage.delete_snapshot(s.id)
            self.say(f"deleted {s.name} ({s.id})")


def main(argv=None, conn=None, today: Optional[dt.date] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operations.backup", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("snapshot", "list", "prune"))
    parser.add_argument("--stack", required=True)
    parser.add_argument("--include-cache", action="store_true", help="also the nginx cache volume (proxy)")
    parser.add_argument("--keep-daily", type=int, default=7)
    parser.add_argument("--keep-weekly", type=int, default=4)
    parser.add_argument("--keep-monthly", type=int, default=6)
    parser.add_argument("--dry-run", action="store_true", help="prune: only show what would be deleted")
    parser.add_argument("--yes", action="store_true", help="prune: do not ask for confirmation")
    parser.add_argument("--os-cloud", help="clouds.yaml entry (default: OS_CLOUD or OS_* variables)")
    args = parser.parse_args(argv)
    if min(args.keep_daily, args.keep_weekly, args.keep_monthly) < 0:
        parser.error("--keep-* take a number >= 0")
    try:
        volumes = stack_volumes(Pulumi(), args.stack, args.include_cache or args.action != "snapshot")
        backups = Backups(conn or connect(args.os_cloud))
        if args.action == "snapshot":
            backups.snapshot(volumes, today or dt.date.today())
        elif args.action == "list":
            backups.list(volumes)
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
