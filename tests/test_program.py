"""The program under Pulumi mocks with the real Pulumi.yaml and stack files."""
from __future__ import annotations

import hashlib

import pytest
import pulumi

from components.offline import fake_id, run_stack

INSTANCE = "openstack:compute/instance:Instance"
PORT = "openstack:networking/port:Port"
VOLUME = "openstack:blockstorage/volume:Volume"
ATTACH = "openstack:compute/volumeAttach:VolumeAttach"
GROUP = "openstack:networking/secGroup:SecGroup"
RULE = "openstack:networking/secGroupRule:SecGroupRule"
FIP = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"
COMMAND = "command:remote:Command"

PROD_HOSTS = {
    "prod-proxy": "m1.large", "prod-omeroreadwrite": "m1.xlarge", "prod-database": "m1.large",
    "prod-dockermanager": "m1.large", "prod-omeroreadonly-1": "m1.large", "prod-omeroreadonly-2": "m1.large",
    "prod-omeroreadonly-3": "m1.large", "prod-omeroreadonly-4": "m1.large",
    "prod-management": "m1.medium",  # idr:monitoringEnabled
}


def rules_of(run, group_name):
    group = run.named(group_name, GROUP)
    return {
        (r.inputs["direction"], r.inputs["ethertype"], r.inputs.get("protocol"), r.inputs.get("portRangeMin"),
         r.inputs.get("portRangeMax"), r.inputs.get("remoteIpPrefix"),
         "self" if r.inputs.get("remoteGroupId") == group.id else r.inputs.get("remoteGroupId"))
        for r in run.of_type(RULE) if r.inputs["securityGroupId"] == group.id
    }


def test_exactly_the_hosts_of_the_page_with_their_flavors(prod_run):
    instances = {r.inputs["name"]: r.inputs["flavorName"] for r in prod_run.of_type(INSTANCE)}
    assert instances == PROD_HOSTS
    assert {r.inputs["imageName"] for r in prod_run.of_type(INSTANCE)} == {"Rocky-9-GenericCloud"}


def test_each_instance_sits_on_its_own_port_with_a_fixed_address(prod_run):
    for inst in prod_run.of_type(INSTANCE):
        port = prod_run.named(inst.inputs["name"], PORT)
        assert inst.inputs["networks"] == [{"port": port.id}]
        (fixed,) = port.inputs["fixedIps"]
        host = next(h for h in prod_run.outputs["hosts"] if h["name"] == inst.inputs["name"])
        assert fixed["ipAddress"] == host["fixedIp"]


def test_security_groups_complete_rule_sets(prod_run):
    anywhere = "0.0.0.0/0"
    assert rules_of(prod_run, "prod-proxy-external") == {
        ("ingress", "IPv4", "tcp", 22, 22, anywhere, None),
        ("ingress", "IPv4", "tcp", 80, 80, anywhere, None),
        ("ingress", "IPv4", "tcp", 443, 443, anywhere, None),
        ("ingress", "IPv4", "tcp", 4063, 4063, anywhere, None),
        ("ingress", "IPv4", "tcp", 4064, 4064, anywhere, None),
        ("ingress", "IPv4", "tcp", 14060, 14079, anywhere, None),
    }
    assert rules_of(prod_run, "prod-internal") == {("ingress", "IPv4", None, None, None, None, "self")}
    assert {g.name for g in prod_run.of_type(GROUP)} == {"prod-proxy-external", "prod-internal"}


def test_only_the_proxy_port_is_in_the_external_group(prod_run):
    external = prod_run.named("prod-proxy-external", GROUP).id
    internal = prod_run.named("prod-internal", GROUP).id
    for port in prod_run.of_type(PORT):
        expected = [internal, external] if port.name == "prod-proxy" else [internal]
        assert port.inputs["securityGroupIds"] == expected, port.name


def test_rsync_switch_and_ssh_sources_change_only_their_rules():
    run = run_stack("prod", {"rsyncEnabled": "true", "sshAllowedCidrs": '["198.51.100.0/24", "192.0.2.7/32"]'})
    rules = rules_of(run, "prod-proxy-external")
    assert ("ingress", "IPv4", "tcp", 873, 873, "0.0.0.0/0", None) in rules
    ssh = {r[5] for r in rules if r[3] == 22}
    assert ssh == {"198.51.100.0/24", "192.0.2.7/32"}
    assert not any(r[3] <= p <= r[4] for r in rules for p in (9000, 8009, 5432, 4080))


def test_data_volumes_protected_attached_to_their_host(prod_run):
    expected = {"prod-omeroreadwrite-data": ("prod-omeroreadwrite", 1500),
                "prod-database-data": ("prod-database", 800),
                "prod-proxy-data": ("prod-proxy", 100),
                "prod-management-data": ("prod-management", 100)}
    volumes = prod_run.of_type(VOLUME)
    assert {v.name for v in volumes} == set(expected)
    for vol in volumes:
        host, size = expected[vol.name]
        assert vol.options.protect and vol.options.retain_on_delete
        assert vol.inputs["size"] == size
        assert "sourceVolId" not in vol.inputs and "snapshotId" not in vol.inputs
        (attach,) = [a for a in prod_run.of_type(ATTACH) if a.inputs["volumeId"] == vol.id]
        assert attach.inputs["instanceId"] == prod_run.named(host, INSTANCE).id


def test_volume_source_from_config():
    vol_id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    snap_id = "aaaabbbb-cccc-dddd-eeee-ffff00001111"
    run = run_stack("prod", {"databaseVolumeFromVolume": vol_id, "omeroreadwriteVolumeFromSnapshot": snap_id})
    assert run.named("prod-database-data", VOLUME).inputs["sourceVolId"] == vol_id
    assert run.named("prod-omeroreadwrite-data", VOLUME).inputs["snapshotId"] == snap_id
    assert "sourceVolId" not in run.named("prod-proxy-data", VOLUME).inputs


def test_instances_delete_before_replace_and_never_silently_replaced(prod_run):
    # No server, and above all none holding data, is replaced by a change of
    # first-boot data or image: that takes `pulumi up --replace` (README).
    for inst in prod_run.of_type(INSTANCE):
        assert inst.options.delete_before_replace, inst.name
        assert set(inst.options.ignore_changes) == {"userData", "imageName", "imageId"}, inst.name
    for attach in prod_run.of_type(ATTACH):
        assert attach.options.delete_before_replace


def test_mount_command_uses_the_volume_id(prod_run):
    for vol in prod_run.of_type(VOLUME):
        host = vol.name.removesuffix("-data")
        command = prod_run.named(f"{host}-mount", COMMAND)
        mount = {"prod-omeroreadwrite": "/data", "prod-database": "/var/lib/pgsql", "prod-proxy": "/var/cache/nginx",
                 "prod-management": "/data"}[host]
        assert f"/usr/local/sbin/idr-mount-volume {vol.id} {mount}" in command.inputs["stdin"]
        attach = next(a for a in prod_run.of_type(ATTACH) if a.inputs["volumeId"] == vol.id)
        assert attach.urn in command.options.depends_on


def test_floating_ip_only_on_the_proxy_port_and_protected(prod_run):
    (assoc,) = prod_run.of_type(FIP)
    assert assoc.inputs == {"floatingIp": "203.0.113.10", "portId": prod_run.named("prod-proxy", PORT).id}
    assert assoc.options.protect
    # A replaced association unbinds first: never two bindings of one IP.
    assert assoc.options.delete_before_replace
    assert prod_run.outputs["floatingIp"] == "203.0.113.10"
    assert prod_run.outputs["floatingIpUrn"] == assoc.urn


def test_no_floating_ip_when_unset():
    run = run_stack("prod", {"floatingIp": "", "sshBastion": "bastion.example.org"})
    assert run.of_type(FIP) == []
    assert run.outputs["floatingIp"] == "" and run.outputs["floatingIpUrn"] == ""
    assert not any(token.endswith("getFloatingIp") for token, _ in run.calls)


def test_guard_refuses_an_ip_held_by_another_environment():
    with pytest.raises(pulumi.RunError) as error:
        run_stack("newidr", {"floatingIp": "203.0.113.10"},
                  floating_ip_holders={"203.0.113.10": "prod-proxy"},
                  stack_outputs={"prod": run_stack("prod").outputs})
    message = str(error.value)
    assert "203.0.113.10" in message and "prod-proxy" in message and "environment prod" in message
    assert "pulumi config rm idr:floatingIp -s prod" in message


def test_guard_refuses_before_any_resource_is_declared():
    from components.offline import IdrMocks, effective_config, run_config
    config, secrets = effective_config("prod")
    mocks = IdrMocks(floating_ip_holders={"203.0.113.10": "some-other-port"})
    with pytest.raises(pulumi.RunError, match="no IDR proxy"):
        run_config("prod", config, secrets, mocks)


def test_guard_accepts_the_ip_on_its_own_proxy_port_or_free():
    held = run_stack("prod", floating_ip_holders={"203.0.113.10": "prod-proxy"})
    assert len(held.of_type(FIP)) == 1
    free = run_stack("prod")
    assert len(free.of_type(FIP)) == 1


def test_newidr_clones_every_data_volume_and_shares_nothing_with_prod(prod_run, newidr_run):
    prod_ids = {v["name"]: v["id"] for v in prod_run.outputs["dataVolumes"].values()}
    for vol in newidr_run.of_type(VOLUME):
        if vol.name == "newidr-management-data":  # never cloned: tests/test_monitoring.py
            continue
        role_name = vol.name.replace("newidr-", "prod-")
        assert vol.inputs["sourceVolId"] == prod_ids[role_name], vol.name
        assert vol.options.protect
    prod_urns = {r.urn for r in prod_run.resources}
    prod_resource_ids = {r.id for r in prod_run.resources if r.custom}
    for res in newidr_run.resources:
        assert res.urn not in prod_urns
        if res.custom and res.type != "pulumi:pulumi:StackReference":
            assert res.id not in prod_resource_ids
        name = res.inputs.get("name")
        if res.custom and isinstance(name, str) and res.type != "pulumi:pulumi:StackReference":
            assert name.startswith("newidr-"), (res.type, name)
    assert newidr_run.outputs["floatingIp"] != prod_run.outputs["floatingIp"]


def test_clone_smaller_than_its_source_is_refused(prod_run):
    with pytest.raises(pulumi.RunError, match=r"idr:databaseVolumeSize = 700 .*at least the size of its source"):
        run_stack("newidr", {"databaseVolumeSize": "700"}, stack_outputs={"prod": prod_run.outputs})


def test_outputs_hosts_volumes_and_inventory(prod_run):
    import yaml
    out = prod_run.outputs
    assert [(h["name"], h["role"]) for h in out["hosts"]][:3] == [
        ("prod-proxy", "proxy"), ("prod-omeroreadwrite", "omeroreadwrite"), ("prod-database", "database")]
    assert set(out["dataVolumes"]) == {"omeroreadwrite", "database", "proxy", "management"}
    assert out["dataVolumes"]["database"]["size"] == 800
    inv = yaml.safe_load(out["inventory"])
    groups = inv["all"]["children"]
    readonly = {f"prod-omeroreadonly-{n}" for n in range(1, 5)}
    # IDR's deployment playbooks' host patterns, and their group_vars keys.
    for group in ("prod-omeroreadonly-hosts", "omeroreadonly-hosts"):
        assert set(groups[group]["hosts"]) == readonly
    assert set(groups["prod-omero-hosts"]["hosts"]) == readonly | {"prod-omeroreadwrite"}
    assert set(groups["prod-hosts"]["hosts"]) == {h["name"] for h in out["hosts"]}


def _intended_host(run, cmd) -> str:
    """The host a command is for: its HostFiles parent's, else the alias its name ends in."""
    parent = run.by_urn(cmd.options.parent)
    if parent.type == "idr:host:HostFiles":
        return parent.inputs["host"]
    if parent.type == "idr:proxy:Proxy":     # the TLS step: its key is a secret, not a HostFile
        return f"{run.stack}-proxy"
    return f"{run.stack}-{cmd.name.rsplit('-trust-', 1)[1]}"


def test_remote_commands_go_through_the_proxy_and_a_new_connection_reruns_nothing(every_feature_run):
    run = every_feature_run
    fixed = {h["name"]: h["fixedIp"] for h in run.outputs["hosts"]}
    commands = run.of_type(COMMAND)
    assert len(commands) > 20
    for cmd in commands:
        conn = cmd.inputs["connection"]
        # The connection is not ignored (it must follow a swap), and a change
        # of it alone runs only the no-op update; the script's digest is a
        # trigger, so a changed script replaces the command and runs it.
        assert "connection" not in cmd.options.ignore_changes, cmd.name
        assert cmd.inputs["create"] == "sudo bash -s"
        if cmd.name == "prod-bfcache-key":   # its stdout (the key) is read: it prints it again
            assert cmd.inputs["update"] == "sudo bash -s"
        else:
            assert cmd.inputs["update"] == "cat > /dev/null", cmd.name
        assert cmd.inputs["triggers"][0] == hashlib.sha256(cmd.inputs["stdin"].encode()).hexdigest()
        host = _intended_host(run, cmd)
        if host == "prod-proxy":
            assert conn["host"] == "203.0.113.10" and "proxy" not in conn, cmd.name
        else:
            assert conn["proxy"]["host"] == "203.0.113.10", cmd.name
            assert conn["host"] == fixed[host], cmd.name


def test_a_replaced_server_gets_its_steps_again_but_no_purge_or_run(every_feature_run):
    run = every_feature_run
    instance_id = {i.name: i.id for i in run.of_type(INSTANCE)}
    assert all(instance_id.values())
    once_only = {"prod-proxy-nginx-cache-purge", "prod-bfcache-run"}
    for cmd in run.of_type(COMMAND):
        carries_instance = instance_id[_intended_host(run, cmd)] in cmd.inputs["triggers"]
        assert carries_instance == (cmd.name not in once_only), cmd.name
    mount = run.named("prod-database-mount", COMMAND)
    assert 800 in mount.inputs["triggers"]   # a larger volume re-runs the mount step: it grows the filesystem


def _scripts(run):
    return {c.name: (c.inputs.get("stdin"), c.inputs.get("create"), c.inputs.get("triggers"))
            for c in run.of_type(COMMAND)}


def test_a_new_floating_ip_changes_no_provisioning_script(prod_run):
    moved = run_stack("prod", {"floatingIp": "203.0.113.99"})
    assert _scripts(moved) == _scripts(prod_run)


def test_etc_hosts_rewritten_when_hosts_change_and_only_then(prod_run):
    unrelated = run_stack("prod", {"maintenance": "true", "bfcacheSlots": '["omeroreadwrite=8"]'})
    assert (_scripts(unrelated)["prod-proxy-etc-hosts"] == _scripts(prod_run)["prod-proxy-etc-hosts"])
    grown = run_stack("prod", {"omeroreadonlyCount": "5"})
    script = _scripts(grown)["prod-proxy-etc-hosts"][0]
    assert script != _scripts(prod_run)["prod-proxy-etc-hosts"][0]
    assert "prod-omeroreadonly-5-etc-hosts" in _scripts(grown)


def test_existing_network_is_used_not_created():
    run = run_stack("prod", {"existingNetwork": "idr-net", "existingSubnet": "idr-subnet"})
    assert run.of_type("openstack:networking/network:Network") == []
    assert run.of_type("openstack:networking/router:Router") == []
    port = run.named("prod-proxy", PORT)
    assert port.inputs["networkId"] == fake_id("network", "idr-net")


def test_existing_subnet_with_another_cidr_is_refused():
    with pytest.raises(pulumi.RunError, match=r"idr:subnetCidr.*10\.0\.0\.0/24"):
        run_stack("prod", {"existingNetwork": "idr-net", "existingSubnet": "idr-subnet"},
                  subnet_cidrs={"idr-subnet": "10.0.0.0/24"})


def test_readonly_count_scales_hosts():
    run = run_stack("prod", {"omeroreadonlyCount": "1"})
    names = {r.inputs["name"] for r in run.of_type(INSTANCE)}
    assert {n for n in names if "omeroreadonly" in n} == {"prod-omeroreadonly-1"}


def test_cache_regeneration_is_part_of_the_environment_and_waits_for_every_node(prod_run):
    assert [r.name for r in prod_run.of_type("idr:bfcache:BfCache")] == ["prod-bfcache"]
    # generation 0: no regeneration; only the steps that revoke the coordinator's key, once
    assert {c.name for c in prod_run.of_type(COMMAND) if "bfcache" in c.name} == {
        f"prod-bfcache-revoke-{h}" for h in ["omeroreadwrite", "database"] + [f"omeroreadonly-{n}" for n in range(1, 5)]}
    run = run_stack("prod", {"bfcacheGeneration": "1"})
    start = run.named("prod-bfcache-run", COMMAND)
    waits_for = run.waits_for(start)
    nodes = ["omeroreadwrite"] + [f"omeroreadonly-{n}" for n in range(1, 5)]
    assert {f"prod-{h}-etc-hosts" for h in nodes + ["proxy", "database"]} <= waits_for
    assert {"prod-omeroreadwrite-mount", "prod-proxy-mount", "prod-database-mount"} <= waits_for
    assert {f"prod-bfcache-node-{n}" for n in nodes} | {f"prod-bfcache-trust-{n}" for n in nodes} <= waits_for
    assert {"prod-bfcache-ids", "prod-bfcache-backup", "prod-bfcache-trust-database"} <= waits_for


def _host_of_step(run, command) -> str:
    """The host a remote step runs on: its fixed address, or for the proxy the bastion address."""
    address = command.inputs["connection"]["host"]
    if address == run.outputs["sshBastion"]:
        return "prod-proxy"
    (host,) = [h["name"] for h in run.outputs["hosts"] if h["fixedIp"] == address]
    return host


def test_a_step_waits_for_its_own_hosts_and_the_playbooks_not_every_host():
    # n steps each waiting for all n hosts would be n^2 dependencies in the
    # state and in every update's plan: only the playbooks and the run wait for all.
    run = run_stack("prod", {"bfcacheGeneration": "1"})
    names = {r.urn: r.name for r in run.resources}
    per_host = {"-mount", "-etc-hosts"}
    hosts = [h["name"] for h in run.outputs["hosts"]]
    checked = 0
    for cmd in run.of_type(COMMAND):
        if cmd.name.endswith(tuple(per_host)) or cmd.name == "prod-bfcache-run":
            continue
        host = _host_of_step(run, cmd)
        direct = {names[u] for u in cmd.options.depends_on}
        others = {f"{h}{suffix}" for h in hosts if h != host for suffix in per_host}
        assert not direct & others, (cmd.name, direct & others)
        # ...and still after its own host's mount (if any) and /etc/hosts.
        assert f"{host}-etc-hosts" in run.waits_for(cmd), cmd.name
        if host in ("prod-proxy", "prod-omeroreadwrite", "prod-database"):
            assert f"{host}-mount" in run.waits_for(cmd), cmd.name
        if cmd.name.startswith(("prod-bfcache", "prod-database-settings")):
            assert "prod-deployment" in direct, cmd.name
        checked += 1
    assert checked >= 15


def test_dependencies_grow_linearly_with_the_read_only_nodes():
    def edges(nodes: int) -> int:
        run = run_stack("prod", {"omeroreadonlyCount": str(nodes), "bfcacheGeneration": "1"})
        return sum(len(r.options.depends_on) for r in run.resources)

    small, large = edges(8), edges(32)
    # Four times the nodes: at most about four times the edges (plus the fixed hosts' share).
    assert large < 4.2 * small, (small, large)


# ------------------------------------------------- the floating-IP association
def _depending_on(run, urn):
    return sorted({r.name for r in run.resources
                   if urn in r.options.depends_on or urn == r.options.parent
                   or any(urn in us for us in r.options.property_dependencies.values())})


@pytest.mark.parametrize("bastion", ["", "bastion.example.org"], ids=["bastion-follows-the-ip", "named-bastion"])
def test_nothing_depends_on_the_floating_ip_association(bastion):
    """The swap and the hand procedure remove an association with `pulumi up
    --target <association>`; the engine keeps the old state of every
    untargeted resource and of what it depends on (step_generator.go
    getDependencySteps), so one dependent would keep the association, and its
    IP bound. The README's set-up (idr:sshBastion unset) and a named bastion alike."""
    run = run_stack("prod", {"sshBastion": bastion})
    (assoc,) = run.of_type(FIP)
    assert _depending_on(run, assoc.urn) == []


def test_remote_steps_wait_for_the_floating_ip_by_value(prod_run):
    """A fresh environment's first SSH finds the IP bound: every remote step
    registers after the association (the proxy's mount although the program
    declares it before the association), and reaches the proxy at the plain
    address, the text an existing stack has stored: no connection changes,
    nothing re-runs."""
    order = [r.urn for r in prod_run.resources]
    (assoc,) = prod_run.of_type(FIP)
    commands = prod_run.of_type(COMMAND)
    assert len(commands) > 15
    assert all(order.index(c.urn) > order.index(assoc.urn) for c in commands)
    for c in commands:
        connection = c.inputs["connection"]
        assert (connection.get("proxy") or connection)["host"] == "203.0.113.10", c.name


def test_a_named_bastion_is_reached_at_its_name():
    run = run_stack("prod", {"sshBastion": "bastion.example.org"})
    for c in run.of_type(COMMAND):
        connection = c.inputs["connection"]
        assert (connection.get("proxy") or connection)["host"] == "bastion.example.org", c.name


_FAILED_ASSOCIATION = """
import json
import pulumi
from components.offline import IdrMocks, Recording, effective_config, run_config

class Refusing(IdrMocks):
    def new_resource(self, args):
        if args.typ == "openstack:networking/floatingIpAssociate:FloatingIpAssociate":
            raise pulumi.RunError("Neutron refused the association (stand-in)")
        return super().new_resource(args)

config, secrets = effective_config("prod")
recording = Recording("prod")
try:
    run_config("prod", config, secrets, Refusing(stack="prod"), recording)
    error = ""
except Exception as e:
    error = str(e)
print(json.dumps({"error": error, "remote": len(recording.of_type("command:remote:Command"))}))
"""


def test_a_failed_association_fails_the_steps_that_wait_for_it_never_hangs():
    """A host's first steps wait for the association by value (Bastion): when
    its registration fails, they fail with it, and the run ends. In a process
    of its own: the SDK leaves the failed registrations' futures for asyncio
    to log whenever they are collected."""
    import json
    import subprocess
    import sys

    from components.offline import PROJECT_DIR

    done = subprocess.run([sys.executable, "-c", _FAILED_ASSOCIATION], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)   # a hang fails the test
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert "Neutron refused the association" in outcome["error"], done.stderr[-2000:]
    # No remote command dialled the unbound floating IP.
    assert outcome["remote"] == 0
