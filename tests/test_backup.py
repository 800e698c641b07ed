"""Backups against stubbed HTTP answers of the OpenStack API (`responses`):
a fake Keystone hands out a catalog whose Cinder and Neutron live in this
file's `FakeCloud`. openstacksdk runs for real; no request leaves the process
(responses refuses any URL not registered). The retention rule is checked
with hypothesis."""
from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from urllib.parse import parse_qs, urlparse

import openstack
import pytest
import responses
from hypothesis import given, settings, strategies as st

from operations import backup
from operations.backup import retained, snapshot_date, snapshot_name
from operations.common import OpenStack, OperationError
from tests.pulumi_standin import install

# openstacksdk warns about its own future API changes; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")

KEYSTONE = "http://127.0.0.1:5000/v3"
CINDER_ROOT = "http://127.0.0.1:8776"
CINDER = f"{CINDER_ROOT}/v3/proj1"
NEUTRON = "http://127.0.0.1:9696"


class FakeCloud:
    """Keystone + the Cinder snapshot API + Neutron floating IPs and ports."""

    def __init__(self, rsps: responses.RequestsMock):
        self.snapshots: dict[str, dict] = {}
        self.volumes = {}  # id -> size
        self.floating_ips: dict[str, str] = {}  # address -> port id or ""
        self.ports: dict[str, str] = {}  # id -> name
        self.requests = []
        endpoint = lambda kind, url: {"type": kind, "id": kind, "name": kind, "endpoints": [  # noqa: E731
            {"interface": "public", "region": "RegionOne", "region_id": "RegionOne", "url": url, "id": kind}]}
        token = {"token": {
            "methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z",
            "issued_at": "2024-01-01T00:00:00.000000Z",
            "user": {"id": "u1", "name": "ops", "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "proj1", "name": "idr", "domain": {"id": "default", "name": "Default"}},
            "catalog": [endpoint("identity", KEYSTONE), endpoint("volumev3", CINDER), endpoint("network", NEUTRON)]}}
        rsps.add(responses.GET, KEYSTONE, json={"version": {"id": "v3.14", "status": "stable",
                                                            "links": [{"rel": "self", "href": KEYSTONE + "/"}]}})
        rsps.add(responses.POST, f"{KEYSTONE}/auth/tokens", json=token, status=201,
                 headers={"X-Subject-Token": "token-1"})
        versions = {"versions": [{"id": "v3.0", "status": "CURRENT", "version": "3.60", "min_version": "3.0",
                                  "links": [{"rel": "self", "href": f"{CINDER_ROOT}/v3/"}]}]}
        for url in (f"{CINDER_ROOT}/", f"{CINDER_ROOT}/v3/", CINDER):
            rsps.add(responses.GET, url, json=versions)
        rsps.add(responses.GET, f"{NEUTRON}/", json={"versions": [
            {"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": f"{NEUTRON}/v2.0/"}]}]})
        rsps.add_callback(responses.GET, f"{CINDER}/snapshots/detail", self._list)
        rsps.add_callback(responses.POST, f"{CINDER}/snapshots", self._create)
        rsps.add_callback(responses.DELETE, re.compile(rf"{CINDER}/snapshots/[^/]+$"), self._delete)
        rsps.add_callback(responses.GET, f"{NEUTRON}/v2.0/floatingips", self._fips)
        rsps.add_callback(responses.GET, re.compile(rf"{NEUTRON}/v2.0/ports/[^/]+$"), self._port)

    def add_snapshot(self, volume_id, name, status="available"):
        sid = str(uuid.uuid4())
        self.snapshots[sid] = {"id": sid, "name": name, "volume_id": volume_id, "status": status,
                               "size": self.volumes.get(volume_id, 1), "created_at": "2024-01-01T00:00:00.000000",
                               "description": None, "metadata": {}}
        return sid

    def _list(self, request):
        self.requests.append(("list", None))
        return 200, {}, json.dumps({"snapshots": list(self.snapshots.values())})

    def _create(self, request):
        body = json.loads(request.body)["snapshot"]
        self.requests.append(("create", body))
        sid = self.add_snapshot(body["volume_id"], body["name"], status="creating")
        return 202, {}, json.dumps({"snapshot": self.snapshots[sid]})

    def _delete(self, request):
        sid = request.url.rsplit("/", 1)[1]
        self.requests.append(("delete", sid))
        if sid not in self.snapshots:
            return 404, {}, json.dumps({"itemNotFound": {"message": "no such snapshot", "code": 404}})
        del self.snapshots[sid]
        return 202, {}, ""

    def _fips(self, request):
        address = parse_qs(urlparse(request.url).query).get("floating_ip_address", [""])[0]
        found = [{"id": f"fip-{a}", "floating_ip_address": a, "port_id": p or None}
                 for a, p in self.floating_ips.items() if a == address]
        return 200, {}, json.dumps({"floatingips": found})

    def _port(self, request):
        pid = request.url.rsplit("/", 1)[1]
        if pid not in self.ports:
            return 404, {}, json.dumps({"NeutronError": {"message": "not found"}})
        return 200, {}, json.dumps({"port": {"id": pid, "name": self.ports[pid]}})


@pytest.fixture
def cloud():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeCloud(rsps)


@pytest.fixture
def conn(cloud):
    return openstack.connection.Connection(
        auth_url=KEYSTONE, username="ops", password="secret", project_name="idr", user_domain_name="Default",
        project_domain_name="Default", region_name="RegionOne")


@pytest.fixture
def world(tmp_path, monkeypatch, cloud):
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", "203.0.113.10")
    for role, size in (("omeroreadwrite", 1500), ("database", 800), ("proxy", 100)):
        cloud.volumes[f"vol-prod-{role}"] = size
    return w


DAY = dt.date(2024, 5, 17)


def test_snapshot_essential_volumes_with_force(world, cloud, conn, capsys):
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY) == 0
    created = [body for kind, body in cloud.requests if kind == "create"]
    assert [(b["volume_id"], b["name"], b["force"]) for b in created] == [
        ("vol-prod-omeroreadwrite", "prod-omeroreadwrite-data-20240517", True),
        ("vol-prod-database", "prod-database-data-20240517", True),
    ]
    assert ["stack", "output", "--json", "--stack", "prod", "--non-interactive"] in world.calls


def test_snapshot_includes_cache_on_request_and_is_idempotent(world, cloud, conn, capsys):
    assert backup.main(["snapshot", "--stack", "prod", "--include-cache"], conn=conn, today=DAY) == 0
    assert len(cloud.snapshots) == 3
    assert {s["name"] for s in cloud.snapshots.values()} >= {"prod-proxy-data-20240517"}
    cloud.requests.clear()
    assert backup.main(["snapshot", "--stack", "prod", "--include-cache"], conn=conn, today=DAY) == 0
    assert [k for k, _ in cloud.requests if k == "create"] == []
    assert "exists already" in capsys.readouterr().out


def test_list_shows_only_this_stacks_snapshots(world, cloud, conn, capsys):
    cloud.add_snapshot("vol-prod-database", "prod-database-data-20240101")
    cloud.add_snapshot("vol-other", "other-database-data-20240101")
    assert backup.main(["list", "--stack", "prod"], conn=conn) == 0
    out = capsys.readouterr().out
    assert "prod-database-data-20240101" in out and "other-" not in out


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
