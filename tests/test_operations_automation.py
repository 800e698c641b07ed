"""The operator commands on pulumi.automation, at the API's own seam: the real
LocalWorkspace and Stack run the stand-in `pulumi` (tests/support/fake_pulumi.py)
as they would run the CLI, so these tests see the command lines the API
builds, the messages and policy pack of every update, the engine's output
arriving while an update runs, and how a locked stack is reported."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from operations import retire, swap
from operations.common import POLICY_PACKS, OperationError, Pulumi
from tests.support.fake_world import install
from tests.support.swap_world import (PUBLIC, READS, SPARE, URN, NeutronFromFiles, assert_swapped, run,  # noqa: F401
                                      web, world)

OPERATIONS = Path(__file__).resolve().parent.parent / "operations"
STEPS = {1: f"mark the prod association of {PUBLIC} retain-on-delete; nothing changes in OpenStack",
         2: f"free the newidr proxy port: newidr releases its spare {SPARE}",
         3: f"move {PUBLIC} from the prod proxy to the newidr proxy: one Neutron update",
         4: f"prod forgets its association of {PUBLIC}, retained: {PUBLIC} stays with newidr",
         5: f"give {SPARE} to prod"}
MESSAGES = {
    "prod": [f"swap prod -> newidr: step {n} of 5 ({STEPS[n]})" for n in (1, 4, 5)],
    "newidr": [f"swap prod -> newidr: step {n} of 5 ({STEPS[n]})" for n in (2, 3)],
}
MOVE_CALL = READS + 2 + 5 + 8 + 2  # the `up` of step 3 (see test_swap)


def ups(world):
    return [c for c in world.parsed if c.args == ("up",)]


def test_every_update_has_its_message_the_policy_pack_and_one_target(world, web):
    assert run(world, web) == 0
    # The command line pulumi.automation's Stack.up builds for step 3, as given.
    assert list(ups(world)[2].argv) == [
        "--non-interactive", "up", "--yes", "--skip-preview",
        "--message", MESSAGES["newidr"][1],
        "--target", URN.format("newidr"), "--policy-pack", "policy", "--suppress-progress",
        "--exec-kind", "auto.local", "--stack", "newidr"]
    assert [(c.stack, c.values["message"], c.values["policy-pack"], c.values["target"]) for c in ups(world)] == [
        ("prod", [MESSAGES["prod"][0]], ["policy"], [URN.format("prod")]),
        ("newidr", [MESSAGES["newidr"][0]], ["policy"], [URN.format("newidr")]),
        ("newidr", [MESSAGES["newidr"][1]], ["policy"], [URN.format("newidr")]),
        ("prod", [MESSAGES["prod"][1]], ["policy"], [URN.format("prod")]),
        ("prod", [MESSAGES["prod"][2]], ["policy"], [URN.format("prod")]),
    ]
    # The stacks' update history shows why each update ran.
    for stack in ("prod", "newidr"):
        assert [h["message"] for h in world.history(stack)] == MESSAGES[stack]
    assert list(POLICY_PACKS) == ["policy"]


def test_a_resumed_swap_numbers_its_updates_as_the_plan(world, web, capsys):
    assert ups(world) == []
    world.fail_at(MOVE_CALL)
    assert run(world, web) == 2
    world.fail_at(None)
    assert run(world, web) == 0
    assert_swapped(world)
    # Step 3's update was refused before it started (no history). The second
    # run gave newidr its spare back to check it, then made steps 2 and 3 again.
    back = f"swap prod -> newidr: give {SPARE} back to newidr for its check"
    assert [h["message"] for h in world.history("newidr")] == [MESSAGES["newidr"][0], back, *MESSAGES["newidr"]]
    assert [c.values["message"][0] for c in ups(world) if c.stack == "newidr"] == [
        *MESSAGES["newidr"], back, *MESSAGES["newidr"]]
    assert "newidr gave up 127.0.0.12 but 127.0.0.11 has not moved: newidr takes 127.0.0.12 back" \
        in capsys.readouterr().out


def test_engine_output_reaches_the_operator_while_the_update_runs(world, web):
    """Each update waits, after its first line, until that line has been seen."""
    world.handshake()
    seen = []

    def say(line):
        seen.append(line)
        if line.strip().startswith("Updating ("):
            world.ack()

    pulumi = Pulumi(say=say)
    job = swap.Swap(pulumi, NeutronFromFiles(world), "prod", "newidr", assume_yes=True, http_port=web.port,
                    wait_seconds=0, say=say)
    assert job.run() == 0
    assert_swapped(world)
    # Announced as the CLI command, then the engine's lines, indented.
    first = seen.index(f"$ pulumi up -s newidr --target '{URN.format('newidr')}' --policy-pack policy "
                       f"--message '{MESSAGES['newidr'][1]}'")
    assert [line.rstrip() for line in seen[first + 1:first + 5]] == [
        "    Updating (newidr):",
        "     +  openstack:networking:FloatingIpAssociate newidr-proxy-floating-ip creating (0s)",
        "     +  openstack:networking:FloatingIpAssociate newidr-proxy-floating-ip created (0s)",
        "    Resources: updated"]
    assert sum(1 for line in seen if line == "    Resources: updated") == 5


def test_retire_streams_its_destroy(tmp_path, monkeypatch):
    w = install(tmp_path, monkeypatch)
    w.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    w.handshake()
    seen = []

    def say(line):
        seen.append(line)
        if line == "    Destroying (oldidr):":
            w.ack()

    assert retire.main(["--stack", "oldidr", "--yes"], pulumi=Pulumi(say=say)) == 0
    assert [h["message"] for h in w.history("oldidr")] == ["retire oldidr: destroy all but the protected data volumes"]
    assert "    Resources: 6 deleted" in seen


def test_the_streaming_proof_has_teeth(world):
    """Output read only at the end (as subprocess.run does) never answers the handshake."""
    world.handshake(seconds=1)
    done = subprocess.run(["pulumi", "up", "--policy-pack", "policy", "--target", URN.format("prod"), "-s", "prod",
                           "--yes"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not streamed" in done.stderr


@pytest.mark.parametrize("locked,kind", [("prod", "diy"), ("newidr", "cloud")])
def test_concurrent_update_is_explained_and_the_swap_resumes(world, web, capsys, locked, kind):
    world.lock(locked, kind)
    assert run(world, web) == 2
    err = capsys.readouterr().err
    assert re.search(rf"error: {locked} is locked by another update \(ConcurrentUpdateError\), so "
                     rf"`pulumi (state unprotect|up) -s {locked} [^`]+` did not run\. Wait until that update has "
                     rf"finished, then run this command again\. If no update of {locked} is running \(an update "
                     rf"that was killed leaves its lock behind\), remove the lock with `pulumi cancel -s {locked}` "
                     rf"first:\n", err), err
    # The backend's own words follow (DIY: the lock file; Pulumi Cloud: 409).
    assert ("the stack is currently locked by 1 lock(s)" if kind == "diy" else "[409] Conflict") in err
    assert "The swap stopped part-way. Run `python -m operations.swap --from prod --to newidr` again" in err
    assert set(world.neutron.values()) <= {"prod-proxy", "newidr-proxy"}
    assert not world.history(locked), "no update of the locked stack ran"
    world.unlock(locked)
    assert run(world, web) == 0
    assert_swapped(world)


def test_concurrent_update_during_retire(tmp_path, monkeypatch, capsys):
    w = install(tmp_path, monkeypatch)
    w.add_stack("oldidr", "", {"idr:sshBastion": "198.51.100.7"})
    w.lock("oldidr", "cloud")
    before = w.snapshot()
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    err = capsys.readouterr().err
    assert "error: oldidr is locked by another update (ConcurrentUpdateError)" in err
    assert "`pulumi cancel -s oldidr`" in err and "[409] Conflict: Another update is currently in progress." in err
    assert w.snapshot() == before


def test_unknown_stack_is_named(world, web, capsys):
    assert run(world, web, argv=["--from", "prod", "--to", "nosuch", "--yes"]) == 2
    assert "there is no stack nosuch (`pulumi stack ls` lists them" in capsys.readouterr().err
    assert world.mutating() == []


def test_without_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `pulumi` anywhere
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    assert "`pulumi` is not on PATH: install the Pulumi CLI" in capsys.readouterr().err


def test_broken_cli(tmp_path, monkeypatch, capsys):
    w = install(tmp_path, monkeypatch)
    w.add_stack("oldidr")
    (w.home / "no-version").write_text("")
    assert retire.main(["--stack", "oldidr", "--yes"]) == 2
    assert "`pulumi version` failed (exit 1)" in capsys.readouterr().err


def test_reads_leave_secrets_out_and_updates_need_a_message(tmp_path, monkeypatch):
    import json
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", PUBLIC)
    state = w.stack("prod")
    state["secrets"] = {"idr:sshPrivateKey": "-----BEGIN OPENSSH PRIVATE KEY-----"}
    (w.home / "stacks" / "prod.json").write_text(json.dumps(state))
    pulumi = Pulumi(say=lambda line: None)
    config = pulumi.config("prod")
    # The stack's values and, as `pulumi config` shows them, the project's defaults; no secret.
    assert config["idr:floatingIp"] == PUBLIC and config["idr:sshBastion"] == "" and config["idr:sshUser"] == "rocky"
    assert "idr:sshPrivateKey" not in config
    # Asked for (a login the command makes itself): in clear, with the rest.
    clear = pulumi.config("prod", secrets=True)
    assert clear["idr:sshPrivateKey"] == "-----BEGIN OPENSSH PRIVATE KEY-----" and clear["idr:floatingIp"] == PUBLIC
    assert pulumi.outputs("prod")["floatingIp"] == PUBLIC
    with pytest.raises(ValueError):
        pulumi.up_target("prod", URN.format("prod"), "")
    with pytest.raises(ValueError):
        pulumi.destroy_unprotected("prod", "")
    assert w.mutating() == []


def test_a_failed_update_reports_the_engine_error(tmp_path, monkeypatch):
    w = install(tmp_path, monkeypatch)
    w.add_stack("prod", PUBLIC)
    w.add_stack("newidr", SPARE)
    pulumi = Pulumi(say=lambda line: None)
    pulumi.config_set("newidr", "idr:floatingIp", PUBLIC)
    pulumi.unprotect("newidr", URN.format("newidr"))
    with pytest.raises(OperationError) as raised:
        pulumi.up_target("newidr", URN.format("newidr"), "test")
    message = str(raised.value)
    assert message.startswith(f"`pulumi up -s newidr --target '{URN.format('newidr')}' --policy-pack policy "
                              f"--message test` failed (CommandError):\n")
    assert f"error: config idr:floatingIp = '{PUBLIC}' is held by port prod-proxy" in message
    assert "Updating (newidr)" not in message, "streamed already: only stderr is repeated"


def test_the_cli_is_used_directly_in_one_place_only():
    """Only common.Pulumi.unprotect leaves Stack/Workspace verbs (through the
    API's generated CLI binding); nothing in operations/ runs a process but
    the OpenSSH client that delivers the backup metrics (no Python SSH
    library is a dependency; it reuses the operator's ssh as the deployment
    step does)."""
    sources = {p.name: p.read_text() for p in OPERATIONS.glob("*.py")}
    for name, text in sources.items():
        runs = re.findall(r"subprocess\.(?:run|Popen|call|check_output|check_call)|os\.system", text)
        assert len(runs) == (1 if name == "backup.py" else 0), name
    assert 'command = ["ssh", "-F"' in sources["backup.py"]
    assert sum(len(re.findall(r"\.cli_api\.", text)) for text in sources.values()) == 1
    assert "cli_api.state_unprotect" in sources["common.py"]
    assert sys.modules["pulumi.automation"].Stack.up  # the API itself, not a stand-in module
