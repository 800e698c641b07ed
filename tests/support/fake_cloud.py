"""A fake OpenStack cloud behind stubbed HTTP answers (`responses`): a fake
Keystone hands out a catalog whose Cinder and Neutron live in `FakeCloud`.
openstacksdk runs for real against it (its wait_for_status polls GET
/snapshots/<id>, where FakeCloud plays each snapshot's life: creating, then
available, error, or forever creating); no request leaves the process
(responses refuses any URL not registered). Fixtures `cloud`, `conn` (an
openstacksdk connection to it) and `quick_polls` (autouse where imported)."""
from __future__ import annotations

import json
import re
import uuid
from urllib.parse import parse_qs, urlparse

import openstack
import pytest
import responses

from operations import backup

KEYSTONE = "http://127.0.0.1:5000/v3"
CINDER_ROOT = "http://127.0.0.1:8776"
CINDER = f"{CINDER_ROOT}/v3/proj1"
NEUTRON = "http://127.0.0.1:9696"


class FakeCloud:
    """Keystone + the Cinder snapshot API + Neutron floating IPs and ports."""

    def __init__(self, rsps: responses.RequestsMock):
        self.snapshots: dict[str, dict] = {}
        self.volumes = {}  # id -> size
        # volume id -> statuses a new snapshot of it shows on successive GETs
        # (the last one stays); default: available at the first look.
        self.lives: dict[str, list[str]] = {}
        self.refuse: dict[str, tuple[int, str]] = {}  # volume id -> (HTTP status, message) for a create
        self.polls: dict[str, int] = {}  # snapshot id -> GETs
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
        rsps.add_callback(responses.POST, f"{CINDER}/snapshots", self._create, content_type="application/json")
        rsps.add_callback(responses.DELETE, re.compile(rf"{CINDER}/snapshots/[^/]+$"), self._delete)
        rsps.add_callback(responses.GET, re.compile(rf"{CINDER}/snapshots/(?!detail$)[^/]+$"), self._get)
        rsps.add_callback(responses.GET, f"{NEUTRON}/v2.0/floatingips", self._fips)
        rsps.add_callback(responses.GET, re.compile(rf"{NEUTRON}/v2.0/ports/[^/]+$"), self._port)

    def add_snapshot(self, volume_id, name, status="available", created_at="2024-01-01T00:00:00.000000"):
        sid = str(uuid.uuid4())
        self.snapshots[sid] = {"id": sid, "name": name, "volume_id": volume_id, "status": status,
                               "size": self.volumes.get(volume_id, 1), "created_at": created_at,
                               "description": None, "metadata": {}}
        return sid

    def _list(self, request):
        self.requests.append(("list", None))
        return 200, {}, json.dumps({"snapshots": [self.public(sid) for sid in self.snapshots]})

    def _create(self, request):
        body = json.loads(request.body)["snapshot"]
        self.requests.append(("create", body))
        if body["volume_id"] in self.refuse:
            status, message = self.refuse[body["volume_id"]]
            return status, {}, json.dumps({"overLimit": {"message": message, "code": status}})
        sid = self.add_snapshot(body["volume_id"], body["name"], status="creating",
                                created_at="2024-05-17T09:00:00.000000")
        self.snapshots[sid]["life"] = list(self.lives.get(body["volume_id"], ["available"]))
        return 202, {}, json.dumps({"snapshot": self.public(sid)})

    def public(self, sid):
        return {k: v for k, v in self.snapshots[sid].items() if k != "life"}

    def _get(self, request):
        sid = request.url.split("?")[0].rsplit("/", 1)[1]
        self.requests.append(("get", sid))
        if sid not in self.snapshots:
            return 404, {}, json.dumps({"itemNotFound": {"message": "no such snapshot", "code": 404}})
        snap = self.snapshots[sid]
        self.polls[sid] = self.polls.get(sid, 0) + 1
        life = snap.get("life")
        if life:
            snap["status"] = life.pop(0) if len(life) > 1 else life[0]
        return 200, {}, json.dumps({"snapshot": self.public(sid)})

    def by_name(self, name):
        (sid,) = [sid for sid, s in self.snapshots.items() if s["name"] == name]
        return sid

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


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    """The command looks at a snapshot every 5 s; the fake cloud answers at once."""
    monkeypatch.setattr(backup, "POLL_SECONDS", 0.01)
