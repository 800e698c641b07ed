"""`swap --snapshot`: the swap takes the old stack's snapshots itself (the
backup command's code, against the fake Cinder of tests/test_backup.py with
openstacksdk running for real) and starts only when every one is available."""
from __future__ import annotations

import datetime as dt

import pytest

from operations import backup, swap
from tests.support.fake_cloud import cloud, conn, quick_polls  # noqa: F401  (fixtures; quick_polls is autouse)
from tests.support.swap_world import CMD, NeutronFromFiles, assert_swapped, web, world  # noqa: F401

# openstacksdk warns about its own future API changes; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")


@pytest.fixture
def today(monkeypatch):
    """The day the snapshots are named after, fixed for the test."""
    day = dt.date(2024, 5, 17)
    take = backup.snapshot_stack
    monkeypatch.setattr(backup, "snapshot_stack", lambda *args, **kwargs: take(*args, today=day, **kwargs))
    return day.strftime("%Y%m%d")


@pytest.fixture
def volumes(cloud):
    for role, size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100)):
        cloud.volumes[f"vol-prod-{role}"] = size


def run(world, web, conn, *extra, argv=CMD):
    return swap.main([*argv, "--http-port", str(web.port), "--skip-smoke", *extra], openstack_client=NeutronFromFiles(world),
                     conn=conn)


def test_snapshots_first_then_swaps(world, web, cloud, conn, volumes, today, capsys):
    cloud.lives["vol-prod-database"] = ["creating", "creating", "available"]
    assert run(world, web, conn, "--snapshot") == 0
    assert_swapped(world)
    created = sorted(body["name"] for kind, body in cloud.requests if kind == "create")
    assert created == [f"prod-database-data-{today}", f"prod-omeroreadwrite-data-{today}"]
    out = capsys.readouterr().out
    # Waited for both, reported with sizes, and only then changed the stacks.
    assert out.index(f"prod-database-data-{today}: available, 800 GB") \
        < out.index("2 snapshot(s) of prod available, 2300 GB in all") \
        < out.index("$ pulumi config set idrswap:state")
    assert "Snapshot the volumes first" not in out


@pytest.mark.parametrize("life,detail", [(["creating", "error"], "status error"),
                                         (["creating"], "timed out after 0.3 s (status creating)")],
                         ids=["errors", "never-available"])
def test_a_failed_snapshot_stops_the_swap(world, web, cloud, conn, volumes, today, capsys, life, detail):
    cloud.lives["vol-prod-omeroreadwrite"] = life
    before = world.snapshot()
    assert run(world, web, conn, "--snapshot", "--snapshot-timeout", "0.3") == 2
    captured = capsys.readouterr()
    assert f"  prod-omeroreadwrite-data-{today}: {detail}" in captured.out
    assert "error: not every snapshot of prod is available (see above), so the swap went no further: this run " \
           "changed neither stack" in captured.err
    assert "run `python -m operations.swap --from prod --to newidr --snapshot` again" in captured.err
    assert world.mutating() == [] and world.snapshot() == before


def test_declining_takes_no_snapshot(world, web, cloud, conn, volumes, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "no")
    assert run(world, web, conn, "--snapshot", argv=[a for a in CMD if a != "--yes"]) == 1
    assert asked == ["Snapshot prod's data volumes now, then swap? [yes/no] "]
    assert [k for k, _ in cloud.requests if k == "create"] == []
    assert world.mutating() == []


def test_the_snapshots_reach_the_backup_metrics_and_a_failed_delivery_does_not_stop_the_swap(
        world, web, cloud, conn, volumes, today, monkeypatch, capsys):
    """After its snapshots, the swap hands the old stack to the backup
    command's metrics delivery (tested over real sshd in
    tests/integration/test_backup_metrics.py); when that fails, the swap
    goes on: the metrics are only late."""
    delivered = []

    def publish(pulumi, conn_, stack, **kwargs):
        delivered.append((stack, sorted(body["name"] for kind, body in cloud.requests if kind == "create")))
        return False

    monkeypatch.setattr(backup, "publish_metrics", publish)
    assert run(world, web, conn, "--snapshot") == 0
    assert_swapped(world)
    assert delivered == [("prod", [f"prod-database-data-{today}", f"prod-omeroreadwrite-data-{today}"])]
