"""Retiring an environment, through pulumi.automation driving the stand-in
`pulumi` (tests/pulumi_standin.py)."""
from __future__ import annotations

from operations import retire
from tests.pulumi_standin import ASSOC_TYPE, VOLUME_TYPE, install

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
    (world.home / "stacks" / "oldidr.json").write_text(__import__("json").dumps(state))
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    assert "holds floating IP" in capsys.readouterr().err
    assert destroys(world) == []


def test_destroys_unprotected_and_lists_data_volumes(tmp_path, monkeypatch, capsys):
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
    assert {r["type"] for r in left} == {VOLUME_TYPE} and all(r["protect"] for r in left)
    out = capsys.readouterr().out
    assert "\n    Destroying (oldidr):\n" in out and "\n    Resources: 8 deleted\n" in out  # the engine's output
    for r in left:
        assert f"pulumi state unprotect -s oldidr '{r['urn']}'" in out
        assert f"pulumi destroy -s oldidr --target '{r['urn']}'" in out
        # Retained on delete: the volume itself goes only with an explicit delete.
        assert f"openstack volume delete {r['id']}" in out
    assert ASSOC_TYPE not in out


def test_asks_first(tmp_path, monkeypatch):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    monkeypatch.setattr("builtins.input", lambda q: "no")
    assert retire.main(["--stack", "oldidr"]) == 1
    assert destroys(world) == []


def test_destroy_failure_is_reported(tmp_path, monkeypatch, capsys):
    world = install(tmp_path, monkeypatch)
    world.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    # select, outputs (twice: masked, then plain), config, export, export,
    # one unprotect per data holder, then destroy
    destroy_call = 6 + sum(1 for r in world.stack("oldidr")["resources"]
                           if r["protect"] and r["type"] in retire.HOLDER_TYPES) + 1
    world.fail_at(destroy_call)
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    assert f"injected failure of call {destroy_call}" in capsys.readouterr().err
