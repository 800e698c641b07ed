"""Backups against stubbed HTTP answers of the OpenStack API (`responses`):
the fake Cloud of tests/support/fake_cloud.py, with openstacksdk running for
real. Stack outputs come through pulumi.automation from the stand-in
`pulumi`. The retention rule is checked with hypothesis."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import given, settings, strategies as st

from operations import backup
from operations.backup import retained, snapshot_date, snapshot_name
from operations.common import OpenStack, OperationError
from tests.support.backup_metrics import prod_world
from tests.support.fake_cloud import cloud, conn, quick_polls  # noqa: F401  (fixtures; quick_polls is autouse)
from tests.support.fake_world import install

# openstacksdk warns about its own future API changes; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


@pytest.fixture
def world(tmp_path, monkeypatch, cloud):
    return prod_world(tmp_path, monkeypatch, cloud)


DAY = dt.date(2024, 5, 17)


def test_snapshot_essential_volumes_with_force(world, cloud, conn, capsys):
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY) == 0
    created = [body for kind, body in cloud.requests if kind == "create"]
    assert [(b["volume_id"], b["name"], b["force"]) for b in created] == [
        ("vol-prod-omeroreadwrite", "prod-omeroreadwrite-data-20240517", True),
        ("vol-prod-database", "prod-database-data-20240517", True),
    ]
    # The volumes come from the stack's outputs, read through pulumi.automation.
    assert ("stack", "output") in [c.args for c in world.parsed]
    out = capsys.readouterr().out
    assert "prod-omeroreadwrite-data-20240517: available, 1500 GB" in out
    assert "prod-database-data-20240517: available, 800 GB" in out
    assert "2 snapshot(s) of prod available, 2300 GB in all" in out


def test_snapshot_includes_cache_on_request_and_is_idempotent(world, cloud, conn, capsys):
    assert backup.main(["snapshot", "--stack", "prod", "--include-cache"], conn=conn, today=DAY) == 0
    assert len(cloud.snapshots) == 3
    assert {s["name"] for s in cloud.snapshots.values()} >= {"prod-proxy-data-20240517"}
    cloud.requests.clear()
    assert backup.main(["snapshot", "--stack", "prod", "--include-cache"], conn=conn, today=DAY) == 0
    assert [k for k, _ in cloud.requests if k == "create"] == []
    assert "exists already" in capsys.readouterr().out


def test_snapshot_waits_until_each_is_available(world, cloud, conn, capsys):
    cloud.lives["vol-prod-omeroreadwrite"] = ["creating", "creating", "available"]
    cloud.lives["vol-prod-database"] = ["creating", "available"]
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY) == 0
    data = cloud.by_name("prod-omeroreadwrite-data-20240517")
    db = cloud.by_name("prod-database-data-20240517")
    assert (cloud.polls[data], cloud.polls[db]) == (3, 2)
    assert {s["status"] for s in cloud.snapshots.values()} == {"available"}
    out = capsys.readouterr().out.splitlines()
    # Started both, then waited; each reported when available, with its size.
    assert out == [
        f"prod-omeroreadwrite-data-20240517: started ({data}) from prod-omeroreadwrite-data "
        f"(vol-prod-omeroreadwrite, 1500 GB)",
        f"prod-database-data-20240517: started ({db}) from prod-database-data (vol-prod-database, 800 GB)",
        "waiting up to 3600 s for 2 snapshot(s) to be available",
        f"prod-omeroreadwrite-data-20240517: available, 1500 GB ({data})",
        f"prod-database-data-20240517: available, 800 GB ({db})",
        "2 snapshot(s) of prod available, 2300 GB in all",
    ]


def test_snapshot_that_errors_and_one_never_available(world, cloud, conn, capsys):
    import time
    cloud.lives["vol-prod-omeroreadwrite"] = ["creating", "error"]
    cloud.lives["vol-prod-database"] = ["creating"]  # forever
    started = time.monotonic()
    assert backup.main(["snapshot", "--stack", "prod", "--timeout", "0.5"], conn=conn, today=DAY) == 1
    assert time.monotonic() - started < 10, "the timeout bounds the wait"
    data = cloud.by_name("prod-omeroreadwrite-data-20240517")
    db = cloud.by_name("prod-database-data-20240517")
    assert cloud.polls[db] >= 3, "polled until the timeout"
    captured = capsys.readouterr()
    assert f"prod-omeroreadwrite-data-20240517: FAILED: status error ({data})" in captured.out
    assert f"prod-database-data-20240517: NOT AVAILABLE: timed out after 0.5 s (status creating) ({db})" \
        in captured.out
    assert captured.err.splitlines() == [
        "error: 2 of 2 snapshot(s) of prod are not available:",
        f"  prod-omeroreadwrite-data-20240517: status error ({data})",
        f"  prod-database-data-20240517: timed out after 0.5 s (status creating) ({db})",
        "Delete a failed snapshot (`openstack volume snapshot delete <id>`) and run the command again to take "
        "it anew.",
        "One still creating may yet finish: run `python -m operations.backup snapshot --stack prod` again to "
        "wait for it (it is not taken twice), or see `python -m operations.backup list --stack prod`.",
    ]

    # The slow one finishes later: running the command again waits for it
    # and takes nothing twice; the failed one still fails until deleted.
    cloud.snapshots[db]["life"] = ["available"]
    cloud.requests.clear()
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY) == 1
    assert [k for k, _ in cloud.requests if k == "create"] == []
    captured = capsys.readouterr()
    assert f"prod-database-data-20240517: available, 800 GB ({db})" in captured.out
    assert "1 of 2 snapshot(s) of prod are not available" in captured.err
    del cloud.snapshots[data]  # `openstack volume snapshot delete`
    cloud.lives.clear()  # and this time Cinder succeeds
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY) == 0
    assert cloud.snapshots[cloud.by_name("prod-omeroreadwrite-data-20240517")]["status"] == "available"


def test_snapshot_refused_by_cinder_is_named(world, cloud, conn, capsys):
    cloud.refuse["vol-prod-database"] = (413, "SnapshotLimitExceeded: Maximum number of snapshots allowed (10) "
                                              "exceeded")
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY) == 1
    captured = capsys.readouterr()
    assert "prod-omeroreadwrite-data-20240517: available, 1500 GB" in captured.out  # the other one is taken
    assert "error: 1 of 2 snapshot(s) of prod are not available:" in captured.err
    assert "  prod-database-data-20240517: not started: " in captured.err
    assert "SnapshotLimitExceeded" in captured.err
    assert "One that did not start: fix the cause shown and run the command again." in captured.err


def test_timeout_must_be_a_duration(world, conn, capsys):
    with pytest.raises(SystemExit):
        backup.main(["snapshot", "--stack", "prod", "--timeout", "-1"], conn=conn, today=DAY)
    assert "--timeout" in capsys.readouterr().err


def test_list_shows_only_this_stacks_snapshots(world, cloud, conn, capsys):
    cloud.add_snapshot("vol-prod-database", "prod-database-data-20240101")
    cloud.add_snapshot("vol-other", "other-database-data-20240101")
    assert backup.main(["list", "--stack", "prod"], conn=conn) == 0
    out = capsys.readouterr().out
    assert "prod-database-data-20240101" in out and "other-" not in out


def test_list_shows_status_size_and_age(world, cloud, conn, capsys):
    now = dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.timezone.utc)
    old = cloud.add_snapshot("vol-prod-omeroreadwrite", "prod-omeroreadwrite-data-20240507",
                             created_at="2024-05-07T11:00:00.000000")
    new = cloud.add_snapshot("vol-prod-database", "prod-database-data-20240517", status="creating",
                             created_at="2024-05-17T11:35:00.000000")
    mid = cloud.add_snapshot("vol-prod-database", "prod-database-data-20240516", status="error",
                             created_at="2024-05-16T06:00:00.000000")
    assert backup.main(["list", "--stack", "prod"], conn=conn, now=now) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["ROLE", "SNAPSHOT", "STATUS", "SIZE", "AGE", "ID"],
        ["omeroreadwrite", "prod-omeroreadwrite-data-20240507", "available", "1500", "GB", "10", "d", old],
        ["database", "prod-database-data-20240516", "error", "800", "GB", "30", "h", mid],
        ["database", "prod-database-data-20240517", "creating", "800", "GB", "25", "min", new],
    ]


def test_age():
    now = dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.timezone.utc)
    assert backup.age("2024-05-17T11:59:30.000000", now) == "0 min"
    assert backup.age("2024-05-17T11:00:00Z", now) == "1 h"
    assert backup.age("2024-05-15T12:00:01", now) == "47 h"
    assert backup.age("2024-05-15T12:00:00+00:00", now) == "2 d"
    assert backup.age(None, now) == backup.age("yesterday", now) == "?"


def test_prune_deletes_what_the_rule_drops(world, cloud, conn, capsys):
    vol = "vol-prod-database"
    names = [snapshot_name("prod-database-data", DAY - dt.timedelta(days=n)) for n in range(60)]
    ids = {cloud.add_snapshot(vol, name): name for name in names}
    manual = cloud.add_snapshot(vol, "before-upgrade")  # not ours: never pruned
    busy = cloud.add_snapshot(vol, snapshot_name("prod-database-data", DAY - dt.timedelta(days=400)), "creating")
    dated = [(sid, snapshot_date("prod-database-data", n)) for sid, n in ids.items()]
    expected_keep = retained(dated + [(busy, DAY - dt.timedelta(days=400))], 3, 2, 2)

    assert backup.main(["prune", "--stack", "prod", "--keep-daily", "3", "--keep-weekly", "2",
                        "--keep-monthly", "2", "--dry-run"], conn=conn) == 0
    assert not [r for r in cloud.requests if r[0] == "delete"]

    assert backup.main(["prune", "--stack", "prod", "--keep-daily", "3", "--keep-weekly", "2",
                        "--keep-monthly", "2", "--yes"], conn=conn) == 0
    deleted = {sid for kind, sid in cloud.requests if kind == "delete"}
    assert deleted == set(ids) - expected_keep
    assert manual in cloud.snapshots and busy in cloud.snapshots  # busy: dropped by the rule but not deletable now
    assert "skipped" in capsys.readouterr().out
    assert DAY.strftime("%Y%m%d") in {cloud.snapshots[s]["name"][-8:] for s in cloud.snapshots}


def test_prune_asks_before_deleting(world, cloud, conn, monkeypatch):
    for n in range(10):
        cloud.add_snapshot("vol-prod-omeroreadwrite", snapshot_name("prod-omeroreadwrite-data", DAY - dt.timedelta(n)))
    monkeypatch.setattr("builtins.input", lambda q: "no")
    assert backup.main(["prune", "--stack", "prod", "--keep-daily", "1", "--keep-weekly", "0",
                        "--keep-monthly", "0"], conn=conn) == 1
    assert len(cloud.snapshots) == 10


def test_undeployed_stack_is_explained(tmp_path, monkeypatch, cloud, conn, capsys):
    w = install(tmp_path, monkeypatch)
    w.add_stack("empty")
    state = w.stack("empty")
    state["resources"] = []
    (w.home / "stacks" / "empty.json").write_text(json.dumps(state))
    assert backup.main(["snapshot", "--stack", "empty"], conn=conn, today=DAY) == 2
    assert "has it been deployed" in capsys.readouterr().err


def test_floating_ip_holder_through_openstacksdk(cloud, conn):
    """The lookup the swap command makes: floating IP -> port -> port name."""
    cloud.floating_ips = {"203.0.113.10": "p1", "203.0.113.20": ""}
    cloud.ports = {"p1": "prod-proxy"}
    client = OpenStack(conn)
    held = client.floating_ip("203.0.113.10")
    assert (held.port_id, held.port_name, held.environment) == ("p1", "prod-proxy", "prod")
    free = client.floating_ip("203.0.113.20")
    assert (free.port_id, free.environment) == ("", None) and free.describe() == "203.0.113.20 is free"
    with pytest.raises(OperationError, match="not allocated"):
        client.floating_ip("203.0.113.99")


# ----------------------------------------------------------- retention rule

dates = st.lists(st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2026, 12, 31)), max_size=60)
counts = st.integers(min_value=0, max_value=12)


def keyed(days):
    return [(i, d) for i, d in enumerate(days)]


@settings(max_examples=300, deadline=None)
@given(dates, counts, counts, counts)
def test_retention_properties(days, daily, weekly, monthly):
    items = keyed(days)
    keep = retained(items, daily, weekly, monthly)
    assert keep <= {k for k, _ in items}
    if items:
        newest = max(d for _, d in items)
        assert any(d == newest for k, d in items if k in keep), "the newest backup always stays"
        assert len(keep) <= max(1, daily + weekly + monthly) + 1
    else:
        assert keep == set()
    # Applying the rule again keeps the same set (a second prune deletes nothing).
    assert retained([(k, d) for k, d in items if k in keep], daily, weekly, monthly) == keep
    # At most one kept snapshot per day.
    kept_days = [d for k, d in items if k in keep]
    assert len(kept_days) == len(set(kept_days))


@settings(max_examples=200, deadline=None)
@given(dates, counts, counts, counts, st.sampled_from(["daily", "weekly", "monthly"]))
def test_retention_is_monotonic(days, daily, weekly, monthly, which):
    """Asking to keep more never deletes a snapshot that fewer would keep."""
    items = keyed(days)
    more = dict(keep_daily=daily, keep_weekly=weekly, keep_monthly=monthly)
    more[f"keep_{which}"] += 1
    assert retained(items, daily, weekly, monthly) <= retained(items, **more)


@settings(max_examples=200, deadline=None)
@given(dates, st.integers(min_value=1, max_value=12))
def test_each_recent_day_keeps_one(days, daily):
    """With only a daily rule, the newest of each of the last `daily` days with backups stays."""
    items = keyed(days)
    keep = retained(items, daily, 0, 0)
    recent_days = sorted({d for _, d in items}, reverse=True)[:daily]
    for day in recent_days:
        newest_that_day = max((k for k, d in items if d == day), key=str)
        assert newest_that_day in keep
    assert len(keep) == len(recent_days)


def test_snapshot_names_round_trip():
    assert snapshot_name("prod-database-data", DAY) == "prod-database-data-20240517"
    assert snapshot_date("prod-database-data", "prod-database-data-20240517") == DAY
    assert snapshot_date("prod-database-data", "prod-database-data-20241399") is None
    assert snapshot_date("prod-database-data", "newidr-database-data-20240517") is None
    assert snapshot_date("prod-database-data", "before-upgrade") is None
