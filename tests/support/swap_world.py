"""The swap tests' world: the stand-in `pulumi` (tests/support/fake_world.py)
with two deployed stacks, prod holding the public IP and newidr a spare, the
OpenStack client the swap gets (reading the stand-in's Neutron), and real
HTTP health checks answered by stub servers on loopback addresses that play
the two IPs: an address answers only while Neutron binds it to a proxy.
Fixtures `world` and `web`; helpers that run the swap and judge the result."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from components.swap_record import association_urn
from operations import swap
from operations.common import FloatingIpHolder
from tests.support.fake_world import install

PUBLIC, SPARE = "127.0.0.11", "127.0.0.12"
HEALTH_PATH = "/webclient/?experimenter=-1"  # Pulumi.yaml's default idr:healthCheckPath
CMD = ["--from", "prod", "--to", "newidr", "--yes", "--wait", "0"]


class NeutronFromFiles:
    """The OpenStack client the swap gets, reading the stand-in's Neutron."""

    def __init__(self, world):
        self.world = world
        self.asked = []

    def floating_ip(self, address):
        self.asked.append(address)
        name = self.world.neutron.get(address, "")
        return FloatingIpHolder(address, f"port-{name}" if name else "", name)

    def floating_ips_of_port(self, port_name):
        return sorted(ip for ip, name in self.world.neutron.items() if name == port_name)


class Web:
    """One stub web server per IP, all on the same port; status per IP. With
    a world, an IP answers only while the stand-in's Neutron binds it."""

    def __init__(self, world=None):
        self.status = {PUBLIC: 200, SPARE: 200}
        self.seen = []
        self.servers = []
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                ip = self.server.server_address[0]
                if world is not None and ip not in world.neutron:
                    self.close_connection = True  # nobody there: no answer at all
                    return
                web.seen.append((ip, self.path))
                self.send_response(web.status[ip])
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        for _ in range(20):  # find a port free on both addresses
            with socket.socket() as s:
                s.bind((PUBLIC, 0))
                self.port = s.getsockname()[1]
            try:
                self.servers = [ThreadingHTTPServer((ip, self.port), Handler) for ip in (PUBLIC, SPARE)]
                break
            except OSError:
                for server in self.servers:
                    server.server_close()
                self.servers = []
        for server in self.servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def world(tmp_path, monkeypatch):
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", SPARE, {"idr:cloneFromStack": "organization/idr/prod"})
    return w


@pytest.fixture
def web(world):
    w = Web(world)
    yield w
    w.close()


def run(world, web, *extra, argv=CMD):
    # The smoke gate has its own tests (test_swap_smoke_gate); the stand-in web answers the health check only.
    return swap.main([*argv, "--http-port", str(web.port), "--skip-smoke", *extra],
                     openstack_client=NeutronFromFiles(world))


def mutating(world):
    """The changes made, in order; every update checked for the policy pack and a message."""
    for call in world.parsed:
        if call.args == ("up",):
            assert call.values["policy-pack"] == ["policy"] and call.values["message"][0], call.argv
    return world.mutating()


def records(world):
    return [json.loads(world.config(s)["idrswap:state"]) for s in ("prod", "newidr")]


def assert_swapped(world, order="direct"):
    prod, newidr = world.config("prod"), world.config("newidr")
    assert prod["idr:floatingIp"] == SPARE and newidr["idr:floatingIp"] == PUBLIC
    assert world.neutron == {PUBLIC: "newidr-proxy", SPARE: "prod-proxy"}
    # Each stack reaches its own proxy for SSH after the swap.
    assert prod["idr:sshBastion"] == SPARE and newidr["idr:sshBastion"] == PUBLIC
    for stack, ip in (("prod", SPARE), ("newidr", PUBLIC)):
        assoc = world.association(stack)
        assert assoc["inputs"]["floatingIp"] == ip and assoc["protect"], "protected again by the program"
        assert not assoc["retainOnDelete"], "retained only while the swap hands an IP over"
    first, second = records(world)
    assert first == second
    assert {k: first[k] for k in ("from_stack", "to_stack", "public_ip", "spare_ip", "status", "order",
                                  "from_env")} == {"from_stack": "prod", "to_stack": "newidr", "public_ip": PUBLIC,
                                                   "spare_ip": SPARE, "status": "done", "order": order,
                                                   "from_env": "prod"}
    return first


def assert_only_moves(world):
    """In the direct order the public IP is never unbound but by a move."""
    assert [e["why"] for e in world.events if e["ip"] == PUBLIC] in ([], ["move from prod-proxy",
                                                                          "move to newidr-proxy"])


URN = association_urn("{0}", "{0}")  # URN.format(stack): the association of a stack named like its environment
RECORD = json.dumps({"asked_at": "", "from_env": "prod", "from_stack": "prod", "order": "direct",
                     "public_ip": PUBLIC, "spare_ip": SPARE, "status": "in-progress", "to_stack": "newidr",
                     "unbound_seconds": None}, sort_keys=True)



def full_run_calls(tmp_path_factory, monkeypatch, *extra, refuse=False):
    """Number of `pulumi` calls of an uninterrupted swap."""
    w = install(tmp_path_factory.mktemp("count"), monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", SPARE)
    w.refuse_moves(refuse)
    web = Web(w)
    try:
        assert run(w, web, *extra) == 0
    finally:
        web.close()
    return len(w.calls)


# Reads: select, config and export of each stack (6); the two records (2);
# step 1: up (+ the API's outputs x2 and history after every up) and export to
# see the flag (5); step 2: bastion, unprotect, config rm, up + 3, export (8);
# step 3: config set, up + 3, export, the two measured records (8); step 4 as
# step 2 (8); step 5: config set, up + 3, export (6); the two records (2).
# Every update is followed by an export: the swap judges the state the engine left.
FULL_RUN_CALLS = 45  # checked by test_every_failure_point_is_covered
READS = 6




def fail_then_finish(world, web, capsys, n, after, *extra):
    world.fail_at(n, after=after)
    first = run(world, web, *extra)
    err = capsys.readouterr().err
    world.fail_at(None)
    assert first == 2, err
    assert f"injected failure of call {n}" in err
    if n > READS:  # past the reads, a change may be half-made: the message says how to go on
        assert "Run `python -m operations.swap --from prod --to newidr` again" in err
    # Whatever happened, the public IP is never bound to two stacks' ports and
    # never lost to a port of neither stack.
    assert set(world.neutron.values()) <= {"prod-proxy", "newidr-proxy"}
    assert run(world, web, *extra) == 0, capsys.readouterr().err




def call_number(world, web, short, *extra) -> int:
    """Number of the call of an uninterrupted swap (on a copy of this world) with this Call.short()."""
    copy = world.home.parent / "copy"
    shutil.copytree(world.home, copy)
    try:
        assert run(world, web, *extra) == 0
        return 1 + [c.short() for c in world.parsed].index(short)
    finally:
        shutil.rmtree(world.home)
        copy.rename(world.home)




def follow(lines: str) -> None:
    """Run the printed command lines (`pulumi ...`, or a shell test before
    one) in the stand-in, each as written, through bash. Non-interactive as
    the stand-in is: PULUMI_SKIP_CONFIRMATIONS answers where an operator's
    terminal would ask (the real CLI honours it too)."""
    env = {**os.environ, "PULUMI_SKIP_CONFIRMATIONS": "true"}
    for line in lines.splitlines():
        line = line.strip()
        if line.startswith(("pulumi ", "[ ")):
            subprocess.run(["bash", "-c", line], check=True, env=env)
