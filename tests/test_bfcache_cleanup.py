"""Replaced nodes and switched-off regeneration leave nothing behind (issue
11, item 6), under mocks: the whole program for prod (components.offline).

- Generation 0 declares one revoke step per node and the database, whose
  triggers are its script and the host's instance ID: it runs once, not on
  every `pulumi up`. The trust steps have no `delete`: removing them runs
  nothing, the revoke steps do the work.
- With a generation, the coordinator's forget step carries every node's and
  the database's instance ID: a replaced server changes exactly its ID there.
The scripts themselves run for real in tests/integration/test_bfcache_keys.py.
"""
from __future__ import annotations

import shlex

from components.offline import IdrMocks, effective_config, fake_id, run_config, run_stack
from components.render import bfcache as render
from components.render.hostfiles import install_script

COMMAND = "command:remote:Command"
INSTANCE = "openstack:compute/instance:Instance"
PEERS = ["omeroreadwrite", "omeroreadonly-1", "omeroreadonly-2", "omeroreadonly-3", "omeroreadonly-4", "database"]


def bfcache_steps(run) -> dict:
    return {c.name: c for c in run.of_type(COMMAND) if "-bfcache-" in c.name}


def shape(run) -> dict:
    return {n: (c.inputs["stdin"], c.inputs["triggers"]) for n, c in bfcache_steps(run).items()}


class Replaced(IdrMocks):
    """OpenStack after `pulumi up --replace` of some servers: new instance IDs."""

    def __init__(self, replaced: set[str], **kw):
        super().__init__(**kw)
        self.replaced = replaced

    def new_resource(self, args):
        rid, state = super().new_resource(args)
        if args.typ == INSTANCE and args.name in self.replaced:
            rid = fake_id(args.typ, args.name, "replaced")
        return rid, state


def run_replaced(replaced: set[str], overrides: dict):
    config, secrets = effective_config("prod", overrides)
    return run_config("prod", config, secrets, Replaced(replaced, stack="prod"))


def test_generation_zero_revokes_on_every_node_and_the_database_once(prod_run):
    steps = bfcache_steps(prod_run)
    assert set(steps) == {f"prod-bfcache-revoke-{alias}" for alias in PEERS}
    ids = {i.name: i.id for i in prod_run.of_type(INSTANCE)}
    fixed = {h["alias"]: h for h in prod_run.outputs["hosts"]}
    for alias in PEERS:
        cmd = steps[f"prod-bfcache-revoke-{alias}"]
        host = fixed[alias]
        parent = prod_run.by_urn(cmd.options.parent)
        assert parent.type == "idr:host:HostFiles" and parent.inputs["host"] == host["name"]
        assert cmd.inputs["connection"]["host"] == host["fixedIp"]
        assert f"bfcache: {host['name']} no longer trusts the coordinator's key" in cmd.inputs["stdin"]
        assert render.AUTHORIZED_MARKER in cmd.inputs["stdin"] and render.LEGACY_MARKER in cmd.inputs["stdin"]
        # Its triggers: the script and the server. Nothing else re-runs it.
        assert cmd.inputs["triggers"][1:] == [ids[host["name"]]]
        assert "delete" not in cmd.inputs


def test_a_fresh_environment_runs_the_revoke_steps_once_not_on_every_up(prod_run):
    """Generation 0 from the start: the next `pulumi up` (and one with
    unrelated changes, a new bastion, more slots) declares the same scripts
    and triggers, so pulumi-command runs nothing again."""
    assert shape(run_stack("prod")) == shape(prod_run)
    for change in ({"maintenance": "true", "bfcacheSlots": '["omeroreadwrite=8"]'}, {"sshBastion": "198.51.100.7"},
                   {"omeroBin": "/opt/omero/bin/omero", "databaseName": "idr2"}):
        assert shape(run_stack("prod", change)) == shape(prod_run), change


def test_back_to_generation_zero_removes_trust_steps_that_do_nothing_and_adds_the_revoke_steps(prod_run):
    on = run_stack("prod", {"bfcacheGeneration": "3"})
    trust = {n.rsplit("-trust-", 1)[1]: c for n, c in bfcache_steps(on).items() if "-trust-" in n}
    assert set(trust) == set(PEERS)
    for cmd in trust.values():
        assert "delete" not in cmd.inputs        # deleted with generation 0: runs nothing on the host
        # It replaces the coordinator's lines by their comment (offline the key is unknown).
        assert f"-v marker={render.AUTHORIZED_MARKER}" in cmd.inputs["stdin"]
    assert not [n for n in bfcache_steps(on) if "-revoke-" in n]
    off = bfcache_steps(run_stack("prod", {"bfcacheGeneration": "0"}))
    assert {n.rsplit("-revoke-", 1)[1] for n in off} == set(trust)
    # Each revoke step's host is the one its trust step was on.
    for alias in PEERS:
        assert off[f"prod-bfcache-revoke-{alias}"].inputs["connection"] == trust[alias].inputs["connection"]


def test_the_forget_step_carries_every_peers_instance_id_and_the_run_waits_for_it(every_feature_run):
    run = every_feature_run
    ids = {i.name: i.id for i in run.of_type(INSTANCE)}
    forget = run.named("prod-bfcache-forget", COMMAND)
    assert run.by_urn(forget.options.parent).inputs["host"] == "prod-proxy"
    peers = [f"prod-{alias}" for alias in PEERS]
    assert set(forget.inputs["triggers"][1:]) == {ids[n] for n in peers} | {ids["prod-proxy"]}
    command = forget.inputs["stdin"].rsplit("# Follow-up step\n", 1)[1].strip()
    fixed = {h["name"]: h for h in run.outputs["hosts"]}
    assert shlex.split(command) == [f"{render.LIBEXEC}/forget-hosts.sh"] + [
        f"{n},{fixed[n]['alias']},{fixed[n]['fixedIp']},{ids[n]}" for n in peers]
    start = run.named("prod-bfcache-run", COMMAND)
    assert forget.urn in start.options.depends_on


def test_a_replaced_node_changes_the_forget_steps_triggers_by_its_instance_id_only(every_feature_run):
    before = every_feature_run
    after = run_replaced({"prod-omeroreadonly-2"}, {"bfcacheGeneration": "1", "cachePurgeGeneration": "1",
                                                    "rsyncEnabled": "true", "jupyterEnabled": "true",
                                                    "maintenance": "true"})
    old_id = before.named("prod-omeroreadonly-2", INSTANCE).id
    new_id = after.named("prod-omeroreadonly-2", INSTANCE).id
    assert old_id != new_id
    old, new = (r.named("prod-bfcache-forget", COMMAND) for r in (before, after))
    assert old.inputs["triggers"][0] != new.inputs["triggers"][0]       # the script: its arguments
    assert [t for t in old.inputs["triggers"][1:] if t not in new.inputs["triggers"]] == [old_id]
    assert [t for t in new.inputs["triggers"][1:] if t not in old.inputs["triggers"]] == [new_id]
    assert old.inputs["stdin"].replace(old_id, new_id) == new.inputs["stdin"]
    # Of the regeneration's steps, only that host's and the coordinator's run again.
    changed = {n for n, s in shape(before).items() if shape(after)[n] != s}
    assert changed == {"prod-bfcache-forget", "prod-bfcache-trust-omeroreadonly-2",
                       "prod-bfcache-node-omeroreadonly-2"}


def test_a_replaced_node_at_generation_zero_runs_only_its_revoke_step_again(prod_run):
    after = run_replaced({"prod-omeroreadonly-2"}, {})
    changed = {n for n, s in shape(prod_run).items() if shape(after)[n] != s}
    assert changed == {"prod-bfcache-revoke-omeroreadonly-2"}
    cmd = after.named("prod-bfcache-revoke-omeroreadonly-2", COMMAND)
    host = next(h for h in after.outputs["hosts"] if h["alias"] == "omeroreadonly-2")
    assert cmd.inputs["stdin"] == prod_run.named("prod-bfcache-revoke-omeroreadonly-2", COMMAND).inputs["stdin"]
    assert cmd.inputs["stdin"].startswith("#!/bin/bash") and f"expected={host['name']}" in cmd.inputs["stdin"]
    assert install_script(host["name"], [], "x").split("# Follow-up")[0] in cmd.inputs["stdin"]
