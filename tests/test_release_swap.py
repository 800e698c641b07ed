"""How long a release leaves the public IP unbound, by the stand-in Neutron's
event log (tests/support/fake_neutron.py: a move is one update that takes
`move_seconds`, an update takes `program_seconds` before it reaches the
association): in the direct order only the move; in the release-first order,
used on request or when OpenStack refuses the move (and said), from the
release to the take. And the program's side of it (components/floatingip.py):
the same decisions as the stand-in's, and a guard whose hint works."""
from __future__ import annotations

import json

import pytest

from tests.support.swap_world import (PUBLIC, READS, SPARE, URN, Web, assert_only_moves, assert_swapped,  # noqa: F401
                                      fail_then_finish, follow, full_run_calls, run, world)

MOVE_CALL = READS + 2 + 5 + 8 + 2  # the `up` of step 3, the move (see test_swap)
MOVE, PROGRAM = 0.2, 0.4   # seconds: the dataplane switch of a move; an update before it reaches the association


@pytest.fixture
def web(world):
    w = Web(world)
    yield w
    w.close()


def public_events(world):
    return [e["why"] for e in world.events if e["ip"] == PUBLIC]


def test_unbound_only_for_the_move_and_longer_in_the_old_order(world, web, capsys):
    """Same world, same timings: the release in the direct order, then the
    rollback in the release-first order. The figures of the report come from here."""
    world.configure(move_seconds=MOVE, program_seconds=PROGRAM)
    assert run(world, web) == 0
    (direct,) = world.unbound_spans(PUBLIC)
    recorded = assert_swapped(world)["unbound_seconds"]
    assert run(world, web, "--release-first", argv=["--from", "newidr", "--to", "prod", "--yes", "--wait", "5"]) == 0
    old_order = world.unbound_spans(PUBLIC)[-1]
    back = json.loads(world.config("prod")["idrswap:state"])
    assert back["order"] == "release-first" and back["status"] == "done"
    with capsys.disabled():
        print(f"\nstand-in, move {MOVE} s, update before the association {PROGRAM} s: public IP unbound "
              f"{direct:.2f} s in the direct order (swap said {recorded} s), {old_order:.2f} s in the release-first "
              f"order (swap said {back['unbound_seconds']} s)")
    # Direct: exactly one move, nothing else.
    assert MOVE <= direct < MOVE + 0.15
    # Release-first: at least a whole update of the new stack between the unbind and the bind.
    assert old_order > PROGRAM and old_order > 2 * direct
    # What the swap says is an upper bound of what Neutron did.
    assert recorded >= round(direct, 1) - 0.05 and back["unbound_seconds"] >= round(old_order, 1) - 0.05
    out = capsys.readouterr().out
    assert f"{PUBLIC} answered nothing for at most {recorded:.1f} s (direct order" in out
    assert f"{PUBLIC} answered nothing for at most {back['unbound_seconds']:.1f} s (release-first order" in out


def test_refused_move_falls_back_to_the_old_order_and_says_so(world, web, capsys):
    world.refuse_moves()
    assert run(world, web) == 0
    record = assert_swapped(world, order="release-first")
    out = capsys.readouterr().out
    assert f"OpenStack refused to move {PUBLIC} from prod-proxy to newidr-proxy in one update:" in out
    assert "Falling back to the release-first order" in out and "New plan, in the release-first order:" in out
    assert "Error associating openstack_networking_floatingip_associate_v2" in out
    # Released, then taken: unbound in between, as measured and recorded.
    assert public_events(world) == ["disassociate", "associate"]
    assert record["unbound_seconds"] is not None
    # Nothing moved when it was refused: prod served the public IP until step 2.
    assert [h["message"] for h in world.history("newidr", result="failed")] == [
        f"swap prod -> newidr: step 3 of 5 (move {PUBLIC} from the prod proxy to the newidr proxy: one Neutron "
        f"update)"]


def test_release_first_on_request(world, web, capsys):
    assert run(world, web, "--release-first") == 0
    assert_swapped(world, order="release-first")
    assert public_events(world) == ["disassociate", "associate"]
    ups = [(c.stack, c.values["message"][0]) for c in world.parsed if c.args == ("up",)]
    assert ups == [("newidr", f"swap prod -> newidr: step 1 of 4 (free the newidr proxy port: newidr releases its "
                              f"spare {SPARE})"),
                   ("prod", f"swap prod -> newidr: step 2 of 4 (release {PUBLIC} in prod: it answers nothing until "
                            f"step 3 is done)"),
                   ("newidr", f"swap prod -> newidr: step 3 of 4 (take {PUBLIC} in newidr)"),
                   ("prod", f"swap prod -> newidr: step 4 of 4 (give {SPARE} to prod)")]
    assert "two updates" in capsys.readouterr().out


# Direct until the refused move (23 calls, the move included, and the export
# after it), the two records of the new order; then release (pin, unprotect,
# config rm, up + 3, export: 8; the up that clears retain-on-delete first + 3
# and its export: 5), take (up + 3, export, measured records: 7), give
# (config set, up + 3, export: 6), the two records.
REFUSED_RUN_CALLS = 54


def test_every_failure_point_of_the_fallback_is_covered(tmp_path_factory, monkeypatch):
    assert full_run_calls(tmp_path_factory, monkeypatch, refuse=True) == REFUSED_RUN_CALLS


@pytest.mark.parametrize("after", [False, True], ids=["fails-before-its-work", "fails-after-its-work"])
@pytest.mark.parametrize("n", range(READS + 1, REFUSED_RUN_CALLS + 1))
def test_fallback_with_a_failure_at_any_call_then_rerun_finishes(world, web, capsys, n, after):
    world.refuse_moves()
    if n == MOVE_CALL and after:  # the refused move fails by itself, before any work to fail after
        world.fail_at(n, after=True)
        assert run(world, web) == 0
    else:
        fail_then_finish(world, web, capsys, n, after)
    order = json.loads(world.config("prod")["idrswap:state"])["order"]
    assert_swapped(world, order=order)
    assert public_events(world) in ([], ["disassociate", "associate"])


def test_a_resumed_swap_checks_the_new_environment_again(world, web, capsys):
    """After newidr gave up its spare, a later run gives it back, checks, and
    goes on; found unhealthy, the printed commands end the swap cleanly."""
    world.fail_at(MOVE_CALL)
    assert run(world, web) == 2
    world.fail_at(None)
    assert world.neutron == {PUBLIC: "prod-proxy"}
    web.status[SPARE] = 500
    capsys.readouterr()
    assert run(world, web) == 2
    err = capsys.readouterr().err
    assert f"newidr is not healthy on its spare IP" in err and f"{PUBLIC} has not moved: prod still serves it" in err
    assert world.neutron == {PUBLIC: "prod-proxy", SPARE: "newidr-proxy"}, "the spare is back, for the check"
    follow(err)  # end the swap here
    assert "idrswap:state" not in world.config("prod") and "idrswap:state" not in world.config("newidr")
    assert world.association("prod")["protect"] and not world.association("prod")["retainOnDelete"]
    web.status[SPARE] = 200
    assert run(world, web) == 0
    assert_swapped(world)
    assert_only_moves(world)


def test_release_first_goes_on_when_nothing_can_be_checked(world, web, capsys):
    """Both IPs released (release-first, step 3 not begun): the new
    environment was checked before the public IP was released; the swap
    takes it without a check it cannot make."""
    n = next(i for i, c in enumerate(_copy_run(world, web, "--release-first"), 1)
             if c == ("config", "set", "idr:floatingIp", PUBLIC, "newidr"))
    world.fail_at(n)
    assert run(world, web, "--release-first") == 2
    world.fail_at(None)
    assert world.neutron == {}
    web.status[SPARE] = 500
    capsys.readouterr()
    assert run(world, web) == 0
    assert "newidr holds no IP to be checked on now" in capsys.readouterr().out
    assert_swapped(world, order="release-first")


def _copy_run(world, web, *extra):
    """The changes an uninterrupted swap of a copy of this world makes, in Call.short() form, every call listed."""
    import shutil
    copy = world.home.parent / "copy"
    shutil.copytree(world.home, copy)
    try:
        assert run(world, web, *extra) == 0
        return [c.short() for c in world.parsed]
    finally:
        shutil.rmtree(world.home)
        copy.rename(world.home)


def test_unretained_state_falls_back_rather_than_unbind(world, web, capsys):
    """An engine that would not write the option on a "same" step: the swap
    sees it in the state, and does not risk the unbind."""
    world.configure(same_keeps_options=True)
    assert run(world, web) == 0
    assert "does not show its association as retained on delete" in capsys.readouterr().out
    assert_swapped(world, order="release-first")


# ----------------------------------------------------------------- program
RECORD = {"from_stack": "prod", "to_stack": "newidr", "public_ip": "203.0.113.10", "spare_ip": "203.0.113.20",
          "status": "in-progress", "order": "direct", "from_env": "prod", "asked_at": "", "unbound_seconds": None}
FIP = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"


@pytest.mark.parametrize("change,prod_retains,newidr_takes", [
    ({}, True, True),
    ({"status": "done"}, False, False),
    ({"order": "release-first"}, False, False),
    ({"public_ip": "203.0.113.99"}, False, False),
    ({"from_env": "other"}, True, False),
    ({"to_stack": "organization/idr/newidr", "from_stack": "organization/idr/prod"}, True, True),
])
def test_the_program_decides_as_the_stand_in(change, prod_retains, newidr_takes):
    """components/floatingip.py, run offline: prod's association is retained
    while the record hands its IP over; newidr may take the IP from prod's
    proxy only as the record says."""
    import pulumi
    from components.offline import run_stack
    record = json.dumps({**RECORD, **change})
    prod = run_stack("prod", {"idrswap:state": record}, floating_ip_holders={"203.0.113.10": "prod-proxy"})
    (assoc,) = prod.of_type(FIP)
    assert bool(assoc.options.retain_on_delete) is prod_retains
    overrides = {"floatingIp": "203.0.113.10", "idrswap:state": record}
    holders = {"203.0.113.10": "prod-proxy"}
    if newidr_takes:
        newidr = run_stack("newidr", overrides, floating_ip_holders=holders, stack_outputs={"prod": prod.outputs})
        (assoc,) = newidr.of_type(FIP)
        assert assoc.inputs["floatingIp"] == "203.0.113.10" and not assoc.options.retain_on_delete
    else:
        with pytest.raises(pulumi.RunError, match="is held by port prod-proxy"):
            run_stack("newidr", overrides, floating_ip_holders=holders, stack_outputs={"prod": prod.outputs})


def test_the_guard_hint_works_as_written(world, web):
    """The program's refusal, followed line by line in the stand-in, releases
    the IP (idr:sshBastion included), after which the stack takes it."""
    import pulumi
    import subprocess
    from components.offline import run_stack
    with pytest.raises(pulumi.RunError) as refused:
        run_stack("newidr", {"floatingIp": PUBLIC}, floating_ip_holders={PUBLIC: "prod-proxy"},
                  stack_outputs={"prod": run_stack("prod").outputs})
    hint = str(refused.value)
    assert "[ -n \"$(pulumi config get idr:sshBastion -s prod)\" ] || pulumi config set idr:sshBastion" in hint
    assert "python -m operations.swap --from prod --to newidr" in hint
    follow(hint)
    assert PUBLIC not in world.neutron and world.association("prod") is None
    assert world.config("prod")["idr:sshBastion"] == PUBLIC
    for args in (["config", "set", "idr:floatingIp", PUBLIC, "-s", "newidr"],
                 ["state", "unprotect", URN.format("newidr"), "-s", "newidr", "--yes"],
                 ["up", "--policy-pack", "policy", "--target", URN.format("newidr"), "-s", "newidr", "--yes"]):
        subprocess.run(["pulumi", *args], check=True, capture_output=True)
    assert world.neutron == {PUBLIC: "newidr-proxy"}
