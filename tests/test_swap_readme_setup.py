"""The release, its rollback, `--release-first` and the hand procedure on the
README's own set-up, through the stand-in `pulumi` with the engine's
targeting rules (tests/support/pulumi_cli.py target_plan): each stack's state is
what the project's program declares (run offline: every resource with its
parent and dependencies, remote commands included), its config the
repository's stack file with what "Creating the stacks" and "New release"
set, `idr:sshBastion` unset (the bastion follows the floating IP) or, in a
second case, named. Each prints how long the public IP answered nothing."""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from components.offline import PROJECT_DIR
from operations import swap
from tests.support.fake_world import ASSOC_TYPE, install
from tests.support.swap_world import PUBLIC, SPARE, NeutronFromFiles, Web

MOVE, PROGRAM = 0.2, 0.4   # seconds: a move's dataplane switch; an update before it reaches the association
NAMED = {"prod": "prod-bastion.example.org", "newidr": "newidr-bastion.example.org"}


def readme_config(stack: str, named: bool) -> dict:
    config = {k: v for k, v in yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"].items()
              if not isinstance(v, dict)}
    return {**config, **({"idr:sshBastion": NAMED[stack]} if named else {})}


def deployed(tmp_path, monkeypatch, named=False, legacy=False):
    world = install(tmp_path, monkeypatch)
    world.add_deployed("prod", PUBLIC, readme_config("prod", named), legacy=legacy)
    world.add_deployed("newidr", SPARE, readme_config("newidr", named))
    world.configure(move_seconds=MOVE, program_seconds=PROGRAM)
    return world


@pytest.fixture(params=[False, True], ids=["bastion-follows-the-ip", "named-bastion"])
def named(request):
    return request.param


@pytest.fixture
def web():
    yield from _web()


def _web():
    w = None
    try:
        yield lambda world: _start(world)
    finally:
        for server in _started:
            server.close()
        _started.clear()


_started: list = []


def _start(world):
    w = Web(world)
    _started.append(w)
    return w


def swap_main(world, web, old, new, *extra):
    return swap.main(["--from", old, "--to", new, "--yes", "--wait", "5", "--http-port", str(web.port), "--skip-smoke",
                      *extra],
                     openstack_client=NeutronFromFiles(world))


def others(world, stack):
    """Every resource of the state but the association, as the engine left it."""
    return [r for r in world.stack(stack)["resources"] if r["type"] != ASSOC_TYPE]


def depends_on_association(world, stack):
    state = world.stack(stack)["resources"]
    assoc = next((r for r in state if r["type"] == ASSOC_TYPE), None)
    return [r["urn"] for r in state if assoc and (assoc["urn"] in (r.get("dependencies") or [])
                                                  or assoc["urn"] == r.get("parent"))]


def pulumi(*args, check=True):
    env = {**os.environ, "PULUMI_SKIP_CONFIRMATIONS": "true"}
    return subprocess.run(["pulumi", *args], env=env, capture_output=True, text=True, check=check)


def test_release_rollback_and_release_first(tmp_path, monkeypatch, web, named, capsys):
    world = deployed(tmp_path, monkeypatch, named)
    w = web(world)
    before = {s: others(world, s) for s in ("prod", "newidr")}
    assert len([r for r in before["prod"] if r["type"] == "command:remote:Command"]) > 15
    assert depends_on_association(world, "prod") == depends_on_association(world, "newidr") == []

    assert swap_main(world, w, "prod", "newidr") == 0
    assert world.neutron == {PUBLIC: "newidr-proxy", SPARE: "prod-proxy"}
    for stack, ip in (("prod", SPARE), ("newidr", PUBLIC)):
        assoc = world.association(stack)
        assert assoc["inputs"]["floatingIp"] == ip and assoc["protect"] and not assoc["retainOnDelete"]
        # Targeted updates of the association only: every remote command's
        # state (its connection, triggers, dependencies) is as it was; none ran.
        assert others(world, stack) == before[stack], stack
    if named:
        assert {s: world.config(s)["idr:sshBastion"] for s in NAMED} == NAMED, "a named bastion is left alone"
    else:
        assert world.config("prod")["idr:sshBastion"] == SPARE and world.config("newidr")["idr:sshBastion"] == PUBLIC
    (direct,) = world.unbound_spans(PUBLIC)
    said = json.loads(world.config("prod")["idrswap:state"])["unbound_seconds"]

    # README "New release", step 6: a full update of each stack stores the new connections.
    for stack in ("newidr", "prod"):
        pulumi("up", "-s", stack, "--policy-pack", "policy")
        assert depends_on_association(world, stack) == []

    assert swap_main(world, w, "newidr", "prod") == 0          # Rollback
    assert world.neutron == {PUBLIC: "prod-proxy", SPARE: "newidr-proxy"}
    back = world.unbound_spans(PUBLIC)[-1]
    assert swap_main(world, w, "prod", "newidr", "--release-first") == 0
    assert world.neutron == {PUBLIC: "newidr-proxy", SPARE: "prod-proxy"}
    first = world.unbound_spans(PUBLIC)[-1]
    record = json.loads(world.config("prod")["idrswap:state"])
    assert record["order"] == "release-first" and record["status"] == "done"
    with capsys.disabled():
        print(f"\nREADME set-up ({'named bastion' if named else 'bastion follows the floating IP'}), stand-in "
              f"move {MOVE} s, update before the association {PROGRAM} s: public IP unbound {direct:.2f} s in the "
              f"release (swap said {said} s), {back:.2f} s in the rollback, {first:.2f} s with --release-first "
              f"(swap said {record['unbound_seconds']} s)")
    assert MOVE <= direct < MOVE + 0.15 and MOVE <= back < MOVE + 0.15
    assert first > PROGRAM


def test_a_state_where_commands_depend_on_the_association_is_refused_then_mended(tmp_path, monkeypatch, web,
                                                                                capsys):
    """A stack last deployed by the code before issue 24 (a host's first steps
    depending on the association): the swap changes nothing and says why; one
    full `pulumi up` with this code stores the new dependencies (no command
    changes but its dependencies), and the swap then goes through."""
    world = deployed(tmp_path, monkeypatch, legacy=True)
    w = web(world)
    assert len(depends_on_association(world, "prod")) > 5
    world.clear_calls()
    assert swap_main(world, w, "prod", "newidr") == 2
    err = capsys.readouterr().err
    assert "resource(s) in prod's state depend on its floating-IP association" in err
    assert "Run `pulumi up -s prod --policy-pack policy` once with this version of the program" in err
    assert world.mutating() == [] and world.neutron == {PUBLIC: "prod-proxy", SPARE: "newidr-proxy"}
    before = {r["urn"]: {k: v for k, v in r.items() if k != "dependencies"} for r in others(world, "prod")}
    pulumi("up", "-s", "prod", "--policy-pack", "policy")
    assert depends_on_association(world, "prod") == []
    assert {r["urn"]: {k: v for k, v in r.items() if k != "dependencies"} for r in others(world, "prod")} == before
    assert swap_main(world, w, "prod", "newidr") == 0
    assert world.neutron == {PUBLIC: "newidr-proxy", SPARE: "prod-proxy"}


def test_the_engine_keeps_an_association_that_commands_depend_on(tmp_path, monkeypatch):
    """What issue 24 found, in the stand-in: on such a state the targeted
    update that should release the IP leaves the association in the state
    and the IP bound (step_generator.go getDependencySteps)."""
    world = deployed(tmp_path, monkeypatch, legacy=True)
    urn = world.association("prod")["urn"]
    pulumi("state", "unprotect", "-s", "prod", urn)
    pulumi("config", "set", "idr:sshBastion", PUBLIC, "-s", "prod")
    pulumi("config", "rm", "idr:floatingIp", "-s", "prod")
    pulumi("up", "-s", "prod", "--policy-pack", "policy", "--target", urn)
    assert world.association("prod") is not None and world.neutron[PUBLIC] == "prod-proxy"


def hand_procedure() -> str:
    section = (PROJECT_DIR / "docs/operations/move-public-ip-by-hand.md").read_text()
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_the_hand_procedure_works_as_written(tmp_path, monkeypatch, named, capsys):
    """Every command of docs/operations/move-public-ip-by-hand.md, in order, as
    one script (placeholders filled in), on the README's set-up."""
    world = deployed(tmp_path, monkeypatch, named)
    script = hand_procedure()
    for placeholder, value in {"<old>": "prod", "<new>": "newidr", "<public IP>": PUBLIC,
                               "<spare IP>": SPARE}.items():
        script = script.replace(placeholder, value)
    assert "<" not in script.replace("<&", ""), script
    env = {**os.environ, "PULUMI_SKIP_CONFIRMATIONS": "true"}
    done = subprocess.run(["bash", "-ec", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert world.neutron == {PUBLIC: "newidr-proxy"}
    assert world.association("prod") is None and world.association("newidr")["inputs"]["floatingIp"] == PUBLIC
    assert world.config("newidr")["idr:floatingIp"] == PUBLIC and "idr:floatingIp" not in world.config("prod")
    bastions = {s: world.config(s).get("idr:sshBastion") for s in ("prod", "newidr")}
    assert bastions == (NAMED if named else {"prod": PUBLIC, "newidr": None})
    ups = [(c.stack, tuple(c.values.get("target", []))) for c in world.parsed if c.args == ("up",)]
    assert [s for s, _ in ups] == ["newidr", "prod", "newidr"] and ups[-1][1] == ()
    (window,) = world.unbound_spans(PUBLIC)
    with capsys.disabled():
        print(f"\nhand procedure ({'named bastion' if named else 'bastion follows the floating IP'}), stand-in "
              f"update before the association {PROGRAM} s: public IP unbound {window:.2f} s")
    assert window > PROGRAM
