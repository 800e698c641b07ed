"""The floating-IP swap, through the real pulumi.automation driving a
stand-in `pulumi` (tests/support/fake_pulumi.py), a stand-in Neutron kept in
the stand-in's files (one floating IP per fixed IP, a move is one update, a
deleted association unbinds unless retained), and real HTTP health checks
answered by stub servers on loopback addresses that play the two IPs
(tests/support/swap_world.py): an address answers only while Neutron binds it
to a proxy."""
from __future__ import annotations

import json

import pytest

from operations import swap
from operations.common import OperationError
from tests.support.fake_world import install
from tests.support.swap_world import (CMD, FULL_RUN_CALLS, HEALTH_PATH, PUBLIC, RECORD, SPARE, URN, Web,  # noqa: F401
                                      assert_only_moves, assert_swapped, call_number, fail_then_finish, follow,
                                      full_run_calls, mutating, run, web, world)


def test_swap_in_the_direct_order(world, web, capsys):
    assert run(world, web) == 0
    changes = mutating(world)
    measured = next(json.loads(c[3]) for c in changes
                    if c[2] == "idrswap:state" and '"unbound_seconds": null' not in c[3])
    assert changes == [
        ("config", "set", "idrswap:state", RECORD, "prod"),
        ("config", "set", "idrswap:state", RECORD, "newidr"),
        # 1. prod's association is retained on delete from now on (same step)
        ("up", URN.format("prod"), "prod"),
        # 2. newidr gives up its spare: its proxy's port is free
        ("config", "set", "idr:sshBastion", PUBLIC, "newidr"),
        ("state", "unprotect", URN.format("newidr"), "newidr"),
        ("config", "rm", "idr:floatingIp", "newidr"),
        ("up", URN.format("newidr"), "newidr"),
        # 3. newidr takes the public IP: Neutron moves it in one update
        ("config", "set", "idr:floatingIp", PUBLIC, "newidr"),
        ("up", URN.format("newidr"), "newidr"),
        # how long it answered nothing, in both records
        ("config", "set", "idrswap:state", json.dumps(measured, sort_keys=True), "prod"),
        ("config", "set", "idrswap:state", json.dumps(measured, sort_keys=True), "newidr"),
        # 4. prod forgets its association; retained, the IP stays with newidr
        ("config", "set", "idr:sshBastion", SPARE, "prod"),
        ("state", "unprotect", URN.format("prod"), "prod"),
        ("config", "rm", "idr:floatingIp", "prod"),
        ("up", URN.format("prod"), "prod"),
        # 5. prod takes the spare
        ("config", "set", "idr:floatingIp", SPARE, "prod"),
        ("up", URN.format("prod"), "prod"),
        ("config", "set", "idrswap:state", json.dumps(dict(measured, status="done"), sort_keys=True), "prod"),
        ("config", "set", "idrswap:state", json.dumps(dict(measured, status="done"), sort_keys=True), "newidr"),
    ]
    record = assert_swapped(world)
    assert_only_moves(world)
    assert record["asked_at"].endswith("Z") and 0 <= record["unbound_seconds"] < 5
    # Health: the new environment on its spare IP before, the public IP at the move and at the end.
    assert web.seen == [(SPARE, HEALTH_PATH), (PUBLIC, HEALTH_PATH), (PUBLIC, HEALTH_PATH)]
    out = capsys.readouterr().out
    assert "python -m operations.backup snapshot --stack prod" in out  # the snapshot reminder
    assert "in the direct order" in out and "one update, step 3" in out
    assert f"{PUBLIC} answered nothing for at most {record['unbound_seconds']:.1f} s" in out


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
    for stack in ("prod", "newidr"):
        assert world.association(stack)["protect"] and not world.association(stack)["retainOnDelete"]
    back = json.loads(world.config("prod")["idrswap:state"])
    assert (back["from_stack"], back["to_stack"], back["order"], back["status"]) == ("newidr", "prod", "direct",
                                                                                    "done")
    # Both ways, the public IP was unbound only while Neutron moved it.
    assert [e["why"] for e in world.events if e["ip"] == PUBLIC] == [
        "move from prod-proxy", "move to newidr-proxy", "move from newidr-proxy", "move to prod-proxy"]


def test_every_failure_point_is_covered(tmp_path_factory, monkeypatch):
    assert full_run_calls(tmp_path_factory, monkeypatch) == FULL_RUN_CALLS


@pytest.mark.parametrize("after", [False, True], ids=["fails-before-its-work", "fails-after-its-work"])
@pytest.mark.parametrize("n", range(1, FULL_RUN_CALLS + 1))
def test_failure_at_any_call_then_rerun_finishes(world, web, capsys, n, after):
    fail_then_finish(world, web, capsys, n, after)
    record = assert_swapped(world)
    # The public IP left prod's proxy only by one Neutron update, whatever failed.
    assert_only_moves(world)
    assert record["asked_at"], "when OpenStack was asked is kept across the failure"


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
    assert f"prod's state holds {PUBLIC} but OpenStack shows it free" in capsys.readouterr().err
    assert mutating(world) == []


def test_refuses_without_spare_ip(tmp_path, monkeypatch, capsys):
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", "", {"idr:sshBastion": "198.51.100.7"})
    web = Web(w)
    try:
        assert run(w, web) == 2
    finally:
        web.close()
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


def test_reverse_command_midway_says_finish_first(world, web, capsys):
    n = call_number(world, web, ("up", URN.format("prod"), "prod"))
    world.fail_at(n + 12)  # within step 2
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
    proxy holds is refused without a swap record, and Neutron binds one
    floating IP per fixed IP."""
    import subprocess

    def pulumi(*args):
        return subprocess.run(["pulumi", *args], capture_output=True, text=True)

    assert pulumi("config", "set", "idr:floatingIp", PUBLIC, "-s", "newidr").returncode == 0
    assert pulumi("state", "unprotect", URN.format("newidr"), "-s", "newidr", "--yes").returncode == 0
    up = ("up", "--policy-pack", "policy", "--target", URN.format("newidr"), "-s", "newidr")
    refused = pulumi(*up, "--yes")
    assert refused.returncode == 1 and "is held by port prod-proxy" in refused.stderr
    # Non-interactive, the CLI proceeds only with --yes or --skip-preview.
    assert "--yes or --skip-preview must be passed in" in pulumi(*up).stderr
    # With a direct swap's record the move is allowed, but not onto a port that holds an IP.
    record = json.loads(RECORD)
    assert pulumi("config", "set", "idrswap:state", json.dumps(record), "-s", "newidr").returncode == 0
    world.set_neutron(SPARE, "newidr-proxy")
    state = world.stack("newidr")
    state["resources"] = [r for r in state["resources"] if "floatingIpAssociate" not in r["type"]]
    world.save_stack("newidr", state)
    taken = pulumi(*up, "--yes")
    assert taken.returncode == 1 and "FloatingIPPortAlreadyAssociated" in taken.stderr
    assert world.neutron[PUBLIC] == "prod-proxy"
    world.set_neutron(SPARE, None)
    assert pulumi(*up, "--skip-preview").returncode == 0
    assert world.neutron == {PUBLIC: "newidr-proxy"}
    assert world.unbound_spans(PUBLIC) and max(world.unbound_spans(PUBLIC)) < 1


def test_error_is_operation_error():
    with pytest.raises(OperationError):
        swap.load_record("not json")
    with pytest.raises(OperationError):
        swap.load_record(RECORD.replace('"direct"', '"sideways"'))


def test_records_of_earlier_versions_still_load():
    old = json.dumps({"from_stack": "prod", "to_stack": "newidr", "public_ip": PUBLIC, "spare_ip": SPARE,
                      "status": "in-progress"})
    assert swap.load_record(old).order == "release-first"


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
    doc = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    used = re.findall(r"python -m operations\.(\w+)([^`\n]*)", doc)
    assert {m for m, _ in used} == {"swap", "backup", "retire", "smoke"}
    helps = {}
    for module, rest in used:
        if module not in helps:
            helps[module] = subprocess.run([sys.executable, "-m", f"operations.{module}", "--help"], cwd=root,
                                           capture_output=True, text=True, check=True).stdout
        for flag in re.findall(r"(--[a-z-]+)", rest):
            assert flag in helps[module], f"{module}: {flag}"


def test_unhealthy_after_release_says_how_to_go_back(world, web, capsys):
    """In the release-first order the public IP is released before newidr
    takes it; found unhealthy then, the printed commands give it back."""
    n = call_number(world, web, ("config", "set", "idr:floatingIp", PUBLIC, "newidr"), "--release-first")
    world.fail_at(n)  # step 3 begins: prod has released the public IP
    assert run(world, web, "--release-first") == 2
    world.fail_at(None)
    assert PUBLIC not in world.neutron
    web.status[SPARE] = 500
    # The spare went first, so the new environment cannot be checked any more:
    # it was checked before the public IP was released, and the swap goes on.
    capsys.readouterr()
    world.set_neutron(SPARE, "newidr-proxy")  # as it would be in earlier versions' order
    state = world.stack("newidr")
    state["config"]["idr:floatingIp"] = SPARE
    state["resources"].append({"urn": URN.format("newidr"), "type": swap.ASSOCIATION_TYPE, "protect": True,
                               "retainOnDelete": False, "inputs": {"floatingIp": SPARE}})
    world.save_stack("newidr", state)
    assert run(world, web) == 2
    err = capsys.readouterr().err
    assert "prod has already released 127.0.0.11" in err
    follow(err)
    assert world.neutron[PUBLIC] == "prod-proxy"
    assert "idrswap:state" not in world.config("prod") and "idrswap:state" not in world.config("newidr")


def test_refuses_when_new_state_lacks_association(world, web, capsys):
    state = world.stack("newidr")
    state["resources"] = [r for r in state["resources"] if "floatingIpAssociate" not in r["type"]]
    world.save_stack("newidr", state)
    assert run(world, web) == 2
    assert "newidr's Pulumi state has no floating-IP association" in capsys.readouterr().err
    assert mutating(world) == []


def test_program_guard_reads_the_record_the_swap_writes(prod_run):
    """The program (run offline) and the stand-in decide by the same record
    code (components/swap_record.py): with a direct swap's record newidr may
    take the IP prod's proxy holds, and prod declares its association
    retained while it hands the IP over; without one, neither."""
    from components.floatingip import FloatingIpHeld
    from components.offline import IdrMocks, effective_config, run_config
    from components.swap_record import ASSOCIATION_TYPE, Record

    record = Record.parse(RECORD)

    def run_program(stack, with_record):
        config, secrets = effective_config(stack, {"floatingIp": PUBLIC})
        if with_record:
            config["idrswap:state"] = record.dump()
        mocks = IdrMocks({PUBLIC: "prod-proxy"}, {"prod": prod_run.outputs}, stack=stack)
        return run_config(stack, config, secrets, mocks).of_type(ASSOCIATION_TYPE)

    (taken,) = run_program("newidr", with_record=True)
    assert taken.inputs["floatingIp"] == PUBLIC and not taken.options.retain_on_delete
    with pytest.raises(FloatingIpHeld, match="is held by port prod-proxy"):
        run_program("newidr", with_record=False)
    (handed,) = run_program("prod", with_record=True)
    assert handed.options.retain_on_delete
    (kept,) = run_program("prod", with_record=False)
    assert not kept.options.retain_on_delete


def test_plan_is_a_function_of_what_was_observed():
    """The plan alone, on observations made by hand (no Pulumi, no OpenStack):
    each stage of the direct order has one next step, and a port of neither
    stack holding the public IP is named."""
    from operations.common import FloatingIpHolder
    from operations.swap import plan
    from operations.swap.observe import Observed, Side

    record = swap.Record.parse(RECORD)

    def side(stack, ip, assoc_ip, retained=False):
        resources = [{"urn": URN.format(stack), "type": swap.ASSOCIATION_TYPE, "retainOnDelete": retained,
                      "inputs": {"floatingIp": assoc_ip}}] if assoc_ip else []
        return Side(stack, {"idr:floatingIp": ip} if ip else {}, resources)

    def seen(old, new, public_port, spare_port):
        return Observed(old, new, FloatingIpHolder(PUBLIC, f"id-{public_port}" if public_port else "", public_port),
                        FloatingIpHolder(SPARE, f"id-{spare_port}" if spare_port else "", spare_port))

    steps = plan.steps(record, "prod", "newidr")
    stages = [(side("prod", PUBLIC, PUBLIC), side("newidr", SPARE, SPARE), "prod-proxy", "newidr-proxy"),
              (side("prod", PUBLIC, PUBLIC, True), side("newidr", SPARE, SPARE), "prod-proxy", "newidr-proxy"),
              (side("prod", PUBLIC, PUBLIC, True), side("newidr", "", ""), "prod-proxy", ""),
              (side("prod", PUBLIC, PUBLIC, True), side("newidr", PUBLIC, PUBLIC), "newidr-proxy", ""),
              (side("prod", "", ""), side("newidr", PUBLIC, PUBLIC), "newidr-proxy", ""),
              (side("prod", SPARE, SPARE), side("newidr", PUBLIC, PUBLIC), "newidr-proxy", "prod-proxy")]
    for n, stage in enumerate(stages, 1):
        observed = seen(*stage)
        assert plan.check(observed, record) == [], n
        assert plan.next_step(observed, record, steps) == n
    stranger = seen(side("prod", PUBLIC, PUBLIC), side("newidr", SPARE, SPARE), "someone-proxy", "newidr-proxy")
    assert plan.check(stranger, record) == [f"{PUBLIC} is bound to port someone-proxy, which belongs to neither stack"]
