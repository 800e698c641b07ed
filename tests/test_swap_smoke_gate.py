"""The swap's release gate: IDR's smoke checks (operations/smoke.py) of the
new environment at its spare IP, before the public IP moves. Through the
same stand-ins as tests/test_swap.py (tests/support/swap_world.py); the checks themselves run against real
nginx in tests/integration/test_smoke.py (and the gate's own callable there)."""
from __future__ import annotations

import pytest

from operations import swap
from tests.support.swap_world import (CMD, PUBLIC, SPARE, NeutronFromFiles, assert_swapped, mutating,  # noqa: F401
                                      web, world)


def run(world, web, *extra):
    return swap.main([*CMD, "--http-port", str(web.port), *extra], openstack_client=NeutronFromFiles(world))


@pytest.fixture
def gate(monkeypatch):
    """The gate main() builds, answering as told; records where it looked."""
    asked = {"stacks": [], "ips": [], "failures": []}

    def smoke_gate(pulumi, stack, scheme):
        asked["stacks"].append((stack, scheme))

        def check(ip):
            asked["ips"].append(ip)
            return list(asked["failures"])
        return check
    monkeypatch.setattr(swap.command, "smoke_gate", smoke_gate)
    return asked


def test_a_target_that_fails_a_smoke_check_is_refused_before_anything_moves(world, web, gate, capsys):
    gate["failures"] = ["render_image: not a JPEG (12 bytes)", "about: the proxy's placeholder page"]
    assert run(world, web) == 2
    err = capsys.readouterr().err
    assert "newidr is not healthy on its spare IP" in err
    assert "2 smoke check(s) failed: render_image: not a JPEG (12 bytes); about: the proxy's placeholder page" in err
    assert "Nothing was changed" in err
    assert gate["stacks"] == [("newidr", "https")] and gate["ips"] == [SPARE]
    assert mutating(world) == []
    assert world.neutron == {PUBLIC: "prod-proxy", SPARE: "newidr-proxy"}


def test_a_target_that_passes_is_swapped_and_says_so(world, web, gate, capsys):
    assert run(world, web, "--smoke-scheme", "http") == 0
    assert "smoke checks passed" in capsys.readouterr().out
    assert gate["stacks"] == [("newidr", "http")] and gate["ips"] == [SPARE]
    assert_swapped(world)


def test_skip_smoke_is_said_and_runs_no_check(world, web, gate, capsys):
    assert run(world, web, "--skip-smoke") == 0
    out = capsys.readouterr().out
    assert "WARNING: smoke checks skipped (--skip-smoke): only the health check gates this swap" in out
    assert gate["stacks"] == [] and gate["ips"] == []
    assert_swapped(world)
