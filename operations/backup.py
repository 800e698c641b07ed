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

After every action, when the stack has a management host (idr:monitoringEnabled),
the newest available snapshot of each volume (time, size) and their count
are written to that host's node_exporter textfile directory, over SSH
through the proxy as bastion (`metrics_text`, `deliver_metrics`): the
BackupTooOld alert and the dashboards read them. Only the metrics text
travels; no OpenStack credential leaves this machine. A failed delivery is
a warning and exit status 3; it never changes the backup's own result.
"""
from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

from openstack import exceptions as os_exceptions

from components import PROJECT
from components.render.monitoring import NODE_TEXTFILE_DIR
from components.render.deployment import known_hosts_file
from components.settings import DEFAULT_SSH_USER

from .common import OperationError, Pulumi, confirm, connect, stack_environment

ESSENTIAL_ROLES = ("omeroreadwrite", "database")
CACHE_ROLE = "proxy"
POLL_SECONDS = 5.0        # between two looks at a snapshot's status
DEFAULT_TIMEOUT = 3600.0  # for all of one run's snapshots to become available
_NAME_RE = re.compile(r"^(?P<volume>.+)-(?P<date>[0-9]{8})$")
METRICS_FILE = "idr_backup.prom"  # node_exporter reads *.prom; the temp file is not one
DELIVERY_FAILED = 3  # exit status: the backup went as reported, its metrics did not arrive
SSH_TIMEOUT = 120.0  # seconds for the whole delivery


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


def created(created_at: Optional[str]) -> Optional[dt.datetime]:
    """Cinder's created_at (UTC, no zone given) as an aware datetime, or None."""
    if not created_at:
        return None
    try:
        when = dt.datetime.fromisoformat(created_at)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def age(created_at: Optional[str], now: dt.datetime) -> str:
    """'45 min', '5 h', '12 d' since Cinder's created_at."""
    created_ = created(created_at)
    if created_ is None:
        return "?"
    minutes = max(0, int((now - created_).total_seconds() // 60))
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


# ------------------------------------------------------------ metrics

def metrics_text(environment: str, seen: Sequence[tuple[Volume, Sequence[Any]]], now: dt.datetime) -> str:
    """node_exporter textfile metrics of the snapshots seen, per volume:
    the newest *available* one's creation time and size, and how many are
    available. A volume without one has time 0 (so BackupTooOld fires: it
    has never been backed up). `essential` is false for the nginx cache,
    which can be regenerated (the alert ignores it)."""
    families = (
        ("idr_backup_last_snapshot_timestamp_seconds", "gauge",
         "Creation time of the newest available snapshot of the volume (0: none)."),
        ("idr_backup_last_snapshot_size_bytes", "gauge", "Size of the newest available snapshot of the volume."),
        ("idr_backup_snapshots", "gauge", "Available snapshots of the volume."),
    )
    samples: dict[str, list[str]] = {name: [] for name, _, _ in families}
    for volume, snapshots in seen:
        usable = [(when, s) for s in snapshots if s.status == "available"
                  for when in [created(s.created_at)] if when is not None]
        newest = max(usable, key=lambda ws: (ws[0], ws[1].id or ""), default=None)
        labels = (f'{{environment="{environment}",volume="{volume.role}",name="{volume.name}",'
                  f'essential="{str(volume.role in ESSENTIAL_ROLES).lower()}"}}')
        stamp = newest[0].timestamp() if newest else 0
        size = (newest[1].size or 0) * 2 ** 30 if newest else 0  # Cinder sizes are GiB
        samples["idr_backup_last_snapshot_timestamp_seconds"].append(f"{labels} {stamp:.0f}")
        samples["idr_backup_last_snapshot_size_bytes"].append(f"{labels} {size}")
        samples["idr_backup_snapshots"].append(f"{labels} {len(usable)}")
    lines = [f"# Written by python -m operations.backup at {now:%Y-%m-%dT%H:%M:%SZ}."]
    for name, kind, help_ in families:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *(name + s for s in samples[name])]
    lines += ["# HELP idr_backup_metrics_timestamp_seconds When operations.backup last wrote these metrics.",
              "# TYPE idr_backup_metrics_timestamp_seconds gauge",
              f'idr_backup_metrics_timestamp_seconds{{environment="{environment}"}} {now.timestamp():.0f}']
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MetricsTarget:
    """Where the metrics go: the management host, through the proxy."""
    environment: str
    host: str              # <env>-management
    address: str           # its fixed IP, reached through the bastion
    bastion: str           # idr:sshBastion (the stack's sshBastion output)
    user: str              # idr:sshUser
    bastion_host_key: str  # idr:sshBastionHostKey, "" when not pinned


def metrics_target(stack: str, outputs: dict, config: dict[str, str]) -> Optional[MetricsTarget]:
    """The stack's management host, or None when it has none (monitoring off)."""
    management = [h for h in outputs.get("hosts") or [] if h.get("role") == "management"]
    if not management:
        return None
    bastion = outputs.get("sshBastion") or outputs.get("floatingIp") or ""
    if not bastion:
        raise OperationError(f"stack {stack} names no bastion (sshBastion output): set idr:sshBastion")
    user = config.get(f"{PROJECT}:sshUser") or DEFAULT_SSH_USER
    return MetricsTarget(outputs.get("environment") or stack_environment(stack, config), management[0]["name"],
                         management[0]["fixedIp"], bastion, user, config.get(f"{PROJECT}:sshBastionHostKey", ""))


def ssh_config(target: MetricsTarget, identity: Path, known_hosts: Path, port: int = 22) -> str:
    """As the deployment step reaches hosts: the bastion's key pinned, or
    recorded on first contact per environment; the management host only
    through it, on the private subnet."""
    check = "yes" if target.bastion_host_key else "accept-new"
    return "\n".join([
        f"Host {target.bastion}", "    HostKeyAlias idr-bastion", f"    StrictHostKeyChecking {check}",
        f"    UserKnownHostsFile {known_hosts}",
        "Host *", "    StrictHostKeyChecking no", "    UserKnownHostsFile /dev/null", "    LogLevel ERROR",
        f"    IdentityFile {identity}", "    IdentitiesOnly yes", "    BatchMode yes", f"    Port {port}",
        "    ConnectTimeout 30", ""])


def remote_write(user: str, length: int) -> str:
    """Shell run on the management host: stdin into a temp file beside the
    metrics file, checked complete (a broken connection leaves a short file),
    then renamed over it, so node_exporter never reads half a file."""
    sudo = "" if user == "root" else "sudo -n "
    d, f = shlex.quote(NODE_TEXTFILE_DIR), shlex.quote(METRICS_FILE)
    return (f'set -eu; d={d}; {sudo}install -d -m 0755 "$d"; t=$({sudo}mktemp "$d/.{METRICS_FILE}.XXXXXX"); '
            f"trap '{sudo}rm -f \"$t\"' EXIT; {sudo}tee \"$t\" > /dev/null; "
            f'n=$({sudo}wc -c < "$t"); [ "$n" -eq {length} ] || {{ echo "got $n of {length} bytes" >&2; exit 1; }}; '
            f'{sudo}chmod 0644 "$t"; {sudo}mv -f "$t" "$d/"{f}')


def deliver_metrics(target: MetricsTarget, text: str, private_key: str, *, port: int = 22,
                    known_hosts: Optional[Path] = None, timeout: float = SSH_TIMEOUT) -> None:
    """Write `text` as the management host's backup metrics; OperationError
    says why it could not."""
    known_hosts = known_hosts or known_hosts_file(target.environment)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    with tempfile.TemporaryDirectory(prefix="idr-backup-ssh-") as work:
        identity = Path(work) / "id"
        identity.touch(mode=0o600)
        identity.write_text(private_key.rstrip("\n") + "\n")
        config = Path(work) / "ssh_config"
        pinned = Path(work) / "known_hosts"
        if target.bastion_host_key:
            pinned.write_text(f"idr-bastion {target.bastion_host_key}\n")
        config.write_text(ssh_config(target, identity, pinned if target.bastion_host_key else known_hosts, port))
        command = ["ssh", "-F", str(config), "-J", f"{target.user}@{target.bastion}",
                   f"{target.user}@{target.address}", remote_write(target.user, len(data))]
        try:
            result = subprocess.run(command, input=data, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OperationError(f"ssh did not finish within {timeout:g} s") from None
        except FileNotFoundError:
            raise OperationError("`ssh` (OpenSSH client) is not on PATH") from None
    if result.returncode != 0:
        why = result.stderr.decode(errors="replace").strip().splitlines()
        raise OperationError(f"ssh exited {result.returncode}: {why[-1] if why else 'no message'}")


def publish_metrics(pulumi: Pulumi, conn, stack: str, *, now: Optional[dt.datetime] = None,
                    private_key: Optional[str] = None, port: int = 22, say=print, warn=None) -> bool:
    """After an action: every data volume's snapshots, looked at afresh (a
    prune's deletions gone, today's snapshot in), as metrics on the
    management host. True when delivered or when there is nowhere to
    deliver (no management host); False when it failed (said on `warn`)."""
    warn = warn or (lambda text: print(text, file=sys.stderr))
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        outputs = pulumi.outputs(stack)
        target = metrics_target(stack, outputs, pulumi.config(stack))
        if target is None:  # idr:monitoringEnabled off: nothing reads them
            return True
        volumes = stack_volumes(pulumi, stack, CACHE_ROLE in (outputs.get("dataVolumes") or {}))
        every = list(conn.block_storage.snapshots(details=True))
        seen = [(v, [s for s in every if s.volume_id == v.id]) for v in volumes]
        text = metrics_text(target.environment, seen, now)
        key = private_key
        if key is None:
            key = pulumi.config(stack, secrets=True).get(f"{PROJECT}:sshPrivateKey", "")
        if not key:
            raise OperationError(f"stack {stack} has no {PROJECT}:sshPrivateKey to log in with")
        deliver_metrics(target, text, key, port=port)
    except (OperationError, os_exceptions.SDKException) as error:
        warn(f"warning: backup metrics of {stack} not delivered (the backup's own result above stands): {error}. "
             f"BackupTooOld and the dashboard keep the last delivered values; run "
             f"`python -m operations.backup list --stack {stack}` to deliver them again.")
        return False
    say(f"backup metrics written to {target.host}:{NODE_TEXTFILE_DIR}/{METRICS_FILE}")
    return True


def snapshot_stack(pulumi: Pulumi, conn, stack: str, *, include_cache: bool = False,
                   timeout: float = DEFAULT_TIMEOUT, today: Optional[dt.date] = None, say=print) -> bool:
    """Take and wait for the stack's snapshots; True when every one is available
    (otherwise the failures are reported to `say`). Used by `swap --snapshot`.
    The snapshots as they then are go to the management host's metrics, as
    after `snapshot`; a failed delivery is only warned about (it must not
    stop a swap)."""
    volumes = stack_volumes(pulumi, stack, include_cache)
    available = finish(stack, Backups(conn, say).snapshot(volumes, today or dt.date.today(), timeout), say)
    publish_metrics(pulumi, conn, stack, say=say)
    return available


def main(argv=None, conn=None, today: Optional[dt.date] = None, now: Optional[dt.datetime] = None,
         ssh_port: int = 22) -> int:
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
        pulumi = Pulumi()
        volumes = stack_volumes(pulumi, args.stack, args.include_cache or args.action != "snapshot")
        conn = conn or connect(args.os_cloud)
        backups = Backups(conn)
        status = 0
        if args.action == "snapshot":
            outcomes = backups.snapshot(volumes, today or dt.date.today(), args.timeout)
            if not finish(args.stack, outcomes, complain=lambda text: print(text, file=sys.stderr)):
                status = 1
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
                status = 1
        # Whatever the action's result, the snapshots as they now are
        # (a dry run or a refused prune changed nothing, still worth a look).
        if not publish_metrics(pulumi, conn, args.stack, now=now, port=ssh_port) and status == 0:
            status = DELIVERY_FAILED
        return status
    except OperationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
