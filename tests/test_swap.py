"""The floating-IP swap, through the real pulumi.automation driving a
stand-in `pulumi` (tests/pulumi_standin.py), a fake Neutron kept in the
stand-in's files, and real HTTP health checks answered by stub servers on
loopback addresses that play the two IPs."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from operations import swap
from operations.common import FloatingIpHolder, OperationError
from tests.pulumi_standin import install

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


class Web:
    """One stub web server per IP, all on the same port; status per IP."""

    def __init__(self):
        self.status = {PUBLIC: 200, SPARE: 200}
        self.seen = []
        self.servers = []
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                ip = self.server.server_address[0]
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
def web():
    w = Web()
    yield w
    w.close()


@pytest.fixture
def world(tmp_path, monkeypatch):
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", SPARE, {"idr:cloneFromStack": "organization/idr/prod"})
    return w


def run(world, web, *extra, argv=CMD):
    return swap.main([*argv, "--http-port", str(web.port), *extra], openstack_client=NeutronFromFiles(world))


def mutating(world):
    """The changes made, in order; every update checked for the policy pack and a message."""
    for call in world.parsed:
        if call.args == ("up",):
            assert call.values["policy-pack"] == ["policy"] and call.values["message"][0], call.argv
    return world.mutating()


def assert_swapped(world):
    prod, newidr = world.config("prod"), world.config("newidr")
    assert prod["idr:floatingIp"] == SPARE and newidr["idr:floatingIp"] == PUBLIC
    assert world.neutron == {PUBLIC: "newidr-proxy", SPARE: "prod-proxy"}
    # Each stack reaches its own proxy for SSH after the swap.
    assert prod["idr:sshBastion"] == SPARE and newidr["idr:sshBastion"] == PUBLIC
    for stack, ip in (("prod", SPARE), ("newidr", PUBLIC)):
        assoc = world.association(stack)
        assert assoc["inputs"]["floatingIp"] == ip and assoc["protect"], "protected again by the program"
    records = [json.loads(world.config(s)["idrswap:state"]) for s in ("prod", "newidr")]
    assert records[0] == records[1] == {"from_stack": "prod", "to_stack": "newidr", "public_ip": PUBLIC,
                                        "spare_ip": SPARE, "status": "done"}


URN = "urn:pulumi:{0}::idr::idr:environment:IdrEnvironment$openstack:networking/floatingIpAssociate:FloatingIpAssociate::{0}-proxy-floating-ip"
RECORD = json.dumps({"from_stack": "prod", "public_ip": PUBLIC, "spare_ip": SPARE, "status": "in-progress",
                     "to_stack": "newidr"}, sort_keys=True)


def test_swap_in_the_safe_order(world, web, capsys):
    assert run(world, web) == 0
    assert mutating(world) == [
        ("config", "set", "idrswap:state", RECORD, "prod"),
        ("config", "set", "idrswap:state", RECORD, "newidr"),
        # 1. release the public IP in the old stack
        ("config", "set", "idr:sshBastion", PUBLIC, "prod"),
        ("state", "unprotect", URN.format("prod"), "prod"),
        ("config", "rm", "idr:floatingIp", "prod"),
        ("up", URN.format("prod"), "prod"),
        # 2. take it in the new stack
        ("config", "set", "idr:sshBastion", PUBLIC, "newidr"),
        ("state", "unprotect", URN.format("newidr"), "newidr"),
        ("config", "set", "idr:floatingIp", PUBLIC, "newidr"),
        ("up", URN.format("newidr"), "newidr"),
        # 3. give the spare to the old stack
        ("config", "set", "idr:sshBastion", SPARE, "prod"),
        ("config", "set", "idr:floatingIp", SPARE, "prod"),
        ("up", URN.format("prod"), "prod"),
        ("config", "set", "idrswap:state", RECORD.replace("in-progress", "done"), "prod"),
        ("config", "set", "idrswap:state", RECORD.replace("in-progress", "done"), "newidr"),
    ]
    assert_swapped(world)
    # Health: the new environment on its spare IP before, the public IP after.
    assert web.seen == [(SPARE, HEALTH_PATH), (PUBLIC, HEALTH_PATH)]
    out = capsys.readouterr().out
    assert "python -m operations.backup snapshot --stack prod" in out  # the snapshot reminder


def test_second_run_changes_nothing(world, web, capsys):
    assert run(world, web) == 0
    before = world.snapshot()
    world.clear_calls()
    assert run(world, web) == 0
    assert mutating(world) == []
    assert world.snapshot() == before
    assert "already held by newidr" in capsys.readouterr().out


def test_rollback_is_the_same_command_reversed(world, web):
    assert run(world, web) == 0
    assert run(world, web, argv=["--from", "newidr", "--to", "prod", "--yes", "--wait", "0"]) == 0
    assert world.neutron == {PUBLIC: "prod-proxy", SPARE: "newidr-proxy"}
    assert world.config("prod")["idr:floatingIp"] == PUBLIC
    assert world.config("newidr")["idr:floatingIp"] == SPARE
    assert world.association("prod")["protect"] and world.association("newidr")["protect"]


def full_run_calls(tmp_path_factory, monkeypatch):
    """Number of `pulumi` calls of an uninterrupted swap."""
    w = install(tmp_path_factory.mktemp("count"), monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", SPARE)
    web = Web()
    try:
        assert run(w, web) == 0
    finally:
        web.close()
    return len(w.calls)


# Reads: select, config and export of each stack (6); the two records (2);
# step 1: bastion, unprotect, config rm, up (+ the API's outputs x2 and history
# after every up) (7); step 2: the same with config set (7); step 3: bastion,
# config set, up + 3 (6); the two records (2).
FULL_RUN_CALLS = 30  # checked by test_every_failure_point_is_covered
READS = 6


def test_every_failure_point_is_covered(tmp_path_factory, monkeypatch):
    assert full_run_calls(tmp_path_factory, monkeypatch) == FULL_RUN_CALLS


@pytest.mark.parametrize("after", [False, True], ids=["fails-before-its-work", "fails-after-its-work"])
@pytest.mark.parametrize("n", range(1, FULL_RUN_CALLS + 1))
def test_failure_at_any_call_then_rerun_finishes(world, web, capsys, n, after):
    world.fail_at(n, after=after)
    first = run(world, web)
    err = capsys.readouterr().err
    world.fail_at(None)
    assert first == 2, err
    assert f"injected failure of call {n}" in err
    if n > READS:  # past the reads, a change may be half-made: the message says how to go on
        assert "Run `python -m operations.swap --from prod --to newidr` again" in err
    # Whatever happened, the public IP is never bound to two stacks' ports and
    # never lost to a port of neither stack.
    assert set(world.neutron.values()) <= {"prod-proxy", "newidr-proxy"}
    assert run(world, web) == 0, capsys.readouterr().err
    assert_swapped(world)


def test_refuses_when_new_environment_is_unhealthy(world, web, capsys):
    web.status[SPARE] = 503
    before = world.snapshot()
    assert run(world, web) == 2
    assert f"newidr is not healthy on its spare IP: http://{SPARE}:{web.port}{HEALTH_PATH} answered 503" \
        in capsys.readouterr().err
    assert mutating(world) == [] and world.snapshot() == before


def test_refuses_when_config_and_openstack_disagree(world, web, capsys):
    world.set_neutron(PUBLIC, "someone-else")
    before = world.snapshot()
    assert run(world, web) == 2
    err = capsys.readouterr().err
    assert "the stacks and OpenStack disagree" in err and "belongs to neither stack" in err
    assert mutating(world) == [] and world.snapshot() == before


def test_refuses_when_public_ip_is_not_on_the_old_proxy(world, web, capsys):
    world.set_neutron(PUBLIC, None)
    assert run(world, web) == 2
    assert "prod should hold 127.0.0.11" in capsys.readouterr().err
    assert mutating(world) == []


def test_refuses_without_spare_ip(tmp_path, monkeypatch, web, capsys):
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", "", {"idr:sshBastion": "198.51.100.7"})
    assert run(w, web) == 2
    assert "newidr holds no spare floating IP" in capsys.readouterr().err
    assert mutating(w) == []


def test_asks_for_confirmation(world, web, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "no")
    argv = [a for a in CMD if a != "--yes"]
    assert run(world, web, argv=argv) == 1
    assert "snapshotted" in asked[0]
    assert mutating(world) == []
    monkeypatch.setattr("builtins.input", lambda q: "yes")
    assert run(world, web, argv=argv) == 0
    assert_swapped(world)


def call_number(world, web, short) -> int:
    """Number of the call of an uninterrupted swap (on a copy of this world) with this Call.short()."""
    import shutil
    copy = world.home.parent / "copy"
    shutil.copytree(world.home, copy)
    try:
        assert run(world, web) == 0
        return 1 + [c.short() for c in world.parsed].index(short)
    finally:
        shutil.rmtree(world.home)
        copy.rename(world.home)


def test_reverse_command_midway_says_finish_first(world, web, capsys):
    n = call_number(world, web, ("up", URN.format("newidr"), "newidr"))
    assert n == READS + 2 + 7 + 4  # the `up` of step 2: after the records, step 1, three calls of step 2
    world.fail_at(n)
    assert run(world, web) == 2
    world.fail_at(None)
    capsys.readouterr()
    world.clear_calls()
    assert run(world, web, argv=["--from", "newidr", "--to", "prod", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "a swap of 127.0.0.11 from prod to newidr is in progress" in err
    assert "Finish it first: `python -m operations.swap --from prod --to newidr`" in err
    assert mutating(world) == []


def test_end_check_failure_points_to_rollback(world, web, capsys):
    web.status[PUBLIC] = 502
    assert run(world, web) == 1
    out = capsys.readouterr().out
    assert "the public IP does not answer" in out
    assert "To roll back: `python -m operations.swap --from newidr --to prod`" in out
    assert_swapped(world)


def test_same_stack_twice_is_refused(world, web, capsys):
    assert run(world, web, argv=["--from", "prod", "--to", "prod", "--yes"]) == 2
    assert "two different stacks" in capsys.readouterr().err


def test_guard_of_stand_in_matches_the_danger(world):
    """The stand-in reproduces why the order matters: taking an IP another
    proxy holds is refused, and a delete unbinds the IP wherever it is."""
    import subprocess
    world.config("newidr")
    subprocess.run(["pulumi", "config", "set", "idr:floatingIp", PUBLIC, "-s", "newidr"], check=True)
    subprocess.run(["pulumi", "state", "unprotect", URN.format("newidr"), "-s", "newidr", "--yes"], check=True)
    refused = subprocess.run(["pulumi", "up", "--policy-pack", "policy", "--target", URN.format("newidr"),
                              "-s", "newidr", "--yes"],
                             capture_output=True, text=True)
    assert refused.returncode == 1 and "is held by port prod-proxy" in refused.stderr


def test_error_is_operation_error():
    with pytest.raises(OperationError):
        swap.Record.load("not json")


def test_urn_matches_the_program(prod_run):
    """The URN the swap targets is the one the program declares (offline run)."""
    from operations.common import association_urn
    (assoc,) = prod_run.of_type("openstack:networking/floatingIpAssociate:FloatingIpAssociate")
    assert association_urn("organization/idr/prod", "prod") == assoc.urn == prod_run.outputs["floatingIpUrn"]
    assert assoc.options.protect


def test_documented_commands_exist():
    """Every `python -m operations.X ...` line of the README uses flags the command has."""
    import re
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    doc = (root / "README.md").read_text()
    used = re.findall(r"python -m operations\.(\w+)([^`\n]*)", doc)
    assert {m for m, _ in used} == {"swap", "backup", "retire"}
    helps = {}
    for module, rest in used:
        if module not in helps:
            helps[module] = subprocess.run([sys.executable, "-m", f"operations.{module}", "--help"], cwd=root,
                                           capture_output=True, text=True, check=True).stdout
        for flag in re.findall(r"(--[a-z-]+)", rest):
            assert flag in helps[module], f"{module}: {flag}"


def test_unhealthy_after_release_says_how_to_go_back(world, web, capsys):
    n = call_number(world, web, ("state", "unprotect", URN.format("newidr"), "newidr"))
    world.fail_at(n)  # step 2 begins (unprotect): prod has released the public IP
    assert run(world, web) == 2
    world.fail_at(None)
    web.status[SPARE] = 500
    capsys.readouterr()
    assert run(world, web) == 2
    err = capsys.readouterr().err
    assert "prod has already released 127.0.0.11" in err
    # Following the printed commands puts the public IP back on prod.
    import shlex
    import subprocess
    for line in err.splitlines():
        if line.startswith("  pulumi "):
            subprocess.run(shlex.split(line.strip()) + ["--yes"] * ("up" in line.split()), check=True)
    assert world.neutron[PUBLIC] == "prod-proxy"
    assert "idrswap:state" not in world.config("prod") and "idrswap:state" not in world.config("newidr")


def test_refuses_when_new_state_lacks_association(world, web, capsys):
    state = world.stack("newidr")
    state["resources"] = [r for r in state["resources"] if "floatingIpAssociate" not in r["type"]]
    (world.home / "stacks" / "newidr.json").write_text(json.dumps(state))
    assert run(world, web) == 2
    assert "newidr's Pulumi state has no floating-IP association" in capsys.readouterr().err
    assert mutating(world) == []
