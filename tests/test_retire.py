"""Retiring an environment, through pulumi.automation driving the stand-in
`pulumi` (tests/support/fake_pulumi.py), whose `destroy --exclude-protected` keeps
what the real one keeps: the protected resources with their parents, provider
and dependencies, and whose `stack rm` refuses a stack with resources."""
from __future__ import annotations

import json

from operations import retire
from tests.support.fake_world import ASSOC_TYPE, VOLUME_TYPE, install
from tests.support.swap_world import follow

PUBLIC = "203.0.113.10"


def destroys(world):
    return [c for c in world.parsed if c.args == ("destroy",)]


def test_refuses_while_holding_the_public_ip(tmp_path, monkeypatch, capsys):
    world = install(tmp_path, monkeypatch)
    world.add_stack("prod", PUBLIC)
    before = world.snapshot()
    assert retire.main(["--stack", "prod", "--yes"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to retire prod: it holds floating IP {PUBLIC}" in err
    assert "python -m operations.swap --from prod --to <next stack>" in err
    assert "pulumi state unprotect -s prod 'urn:pulumi:prod::idr::" in err
    assert destroys(world) == [] and world.snapshot() == before


def test_refuses_when_only_the_state_still_has_an_association(tmp_path, monkeypatch, capsys):
    """Config already cleared but the association not yet deleted (a swap cut short)."""
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", PUBLIC)
    state = world.stack("oldidr")
    state["config"] = {"idr:sshBastion": PUBLIC}
    world.save_stack("oldidr", state)
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    assert "holds floating IP" in capsys.readouterr().err
    assert destroys(world) == []


def test_a_spare_is_released_as_printed(tmp_path, monkeypatch, capsys):
    """The printed release of a spare works as written (idr:sshBastion
    unset: it defaulted to the IP, and the update needs it)."""
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", PUBLIC)
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    follow(capsys.readouterr().err)
    assert world.association("oldidr") is None and PUBLIC not in world.neutron
    assert retire.main(["--stack", "oldidr", "--yes"]) == 0


def test_stale_outputs_do_not_hold_an_ip(tmp_path, monkeypatch):
    """The outputs are the last update's; config and state say what is held."""
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    state = world.stack("oldidr")
    state["outputs"]["floatingIp"] = PUBLIC
    world.save_stack("oldidr", state)
    assert retire.main(["--stack", "oldidr", "--yes"]) == 0


def test_destroys_unprotected_and_lists_what_stays(tmp_path, monkeypatch, capsys):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    assert retire.main(["--stack", "oldidr", "--yes"]) == 0
    (destroy,) = destroys(world)
    assert "--exclude-protected" in destroy.flags
    assert destroy.values["message"] == ["retire oldidr: destroy all but the protected data volumes"]
    # The data holders (instances, ports, network) were unprotected on purpose
    # first; nothing else was, and all before the destroy.
    unprotected = [c.args[2] for c in world.parsed if c.args[:2] == ("state", "unprotect")]
    assert [c.args[0] for c in world.parsed if c.mutating][-1] == "destroy"
    assert sorted(u.rsplit("::", 1)[1] for u in unprotected) == [
        "oldidr-database", "oldidr-database-data", "oldidr-network", "oldidr-proxy", "oldidr-subnet"]
    assert all(VOLUME_TYPE not in u and ASSOC_TYPE not in u for u in unprotected)
    left = world.stack("oldidr")["resources"]
    # As the real CLI: the volumes (the management host's too: monitoringEnabled), and what they hang on.
    assert sorted(r["type"] for r in left) == sorted([VOLUME_TYPE] * 4 + [
        "idr:environment:IdrEnvironment", "pulumi:providers:openstack", "pulumi:pulumi:Stack"])
    volumes = [r for r in left if r["type"] == VOLUME_TYPE]
    assert all(r["protect"] for r in volumes)
    out = capsys.readouterr().out
    assert "\n    Destroying (oldidr):\n" in out and "\n    Resources: 6 deleted\n" in out  # the engine's output
    assert "Still in oldidr: 4 protected, and 3 that Pulumi keeps because they hold them" in out
    for r in left:
        assert r["urn"] in out
    for r in volumes:
        assert f"pulumi state unprotect -s oldidr '{r['urn']}'" in out
        assert f"pulumi destroy -s oldidr --target '{r['urn']}'" in out
        # Retained on delete: the volume itself goes only with an explicit delete.
        assert f"openstack volume delete {r['id']}" in out
    assert ASSOC_TYPE not in out
    assert out.rstrip().splitlines()[-2:] == [
        "  pulumi stack rm oldidr",
        "(or, once the volumes are released, `python -m operations.retire --stack oldidr` again, which removes the "
        "rest, then `pulumi stack rm oldidr`)"]


def test_the_printed_procedure_removes_the_stack(tmp_path, monkeypatch, capsys):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    assert retire.main(["--stack", "oldidr", "--yes"]) == 0
    out = capsys.readouterr().out
    # `pulumi stack rm` alone is refused while anything is left.
    import subprocess
    refused = subprocess.run(["pulumi", "stack", "rm", "oldidr", "--yes"], capture_output=True, text=True)
    assert refused.returncode == 1 and "still has resources; removal rejected" in refused.stderr
    follow(out)
    assert not world.exists("oldidr")


def test_run_again_after_releasing_the_volumes_removes_the_rest(tmp_path, monkeypatch, capsys):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    assert retire.main(["--stack", "oldidr", "--yes"]) == 0
    out = capsys.readouterr().out
    follow("\n".join(line for line in out.splitlines() if "state unprotect" in line))
    assert retire.main(["--stack", "oldidr", "--yes"]) == 0
    assert "oldidr is empty: remove the stack with `pulumi stack rm oldidr`" in capsys.readouterr().out
    assert world.stack("oldidr")["resources"] == [] and world.stack("oldidr")["outputs"] == {}


def test_asks_first(tmp_path, monkeypatch):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    monkeypatch.setattr("builtins.input", lambda q: "no")
    assert retire.main(["--stack", "oldidr"]) == 1
    assert destroys(world) == []


def test_destroy_failure_is_reported(tmp_path, monkeypatch, capsys):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    # select, config, export, export, one unprotect per data holder, then destroy
    destroy_call = 4 + sum(1 for r in world.stack("oldidr")["resources"]
                           if r["protect"] and r["type"] in retire.HOLDER_TYPES) + 1
    world.fail_at(destroy_call)
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    assert f"injected failure of call {destroy_call}" in capsys.readouterr().err


def test_stand_in_keeps_what_real_pulumi_keeps(tmp_path, monkeypatch):
    """separateProtected: a protected resource keeps its parent chain and its
    provider; an unprotected child of a kept parent still goes."""
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    import subprocess
    done = subprocess.run(["pulumi", "destroy", "--exclude-protected", "-s", "oldidr"], capture_output=True, text=True)
    assert done.returncode == 1 and "--yes or --skip-preview" in done.stderr
    subprocess.run(["pulumi", "destroy", "--exclude-protected", "-s", "oldidr", "--yes"], check=True,
                   capture_output=True)
    kept = {r["urn"].rsplit("::", 1)[1] for r in world.stack("oldidr")["resources"]}
    assert "oldidr-omeroreadonly-1" not in kept and {"oldidr", "default", "idr-oldidr"} <= kept
    assert json.loads(json.dumps(world.stack("oldidr")["outputs"]))["environment"] == "oldidr"
