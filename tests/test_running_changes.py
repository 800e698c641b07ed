"""No config change can hurt a running environment (issue 11).

The program is run under mocks as an existing stack: its reference to itself
answers with the outputs of a first run, as the engine would after that run.
"""
from __future__ import annotations

import re
from pathlib import Path

import pulumi
import pytest

from components import changes, identity
from components.changes import CHANGES
from components.network import proxy_external_rules, rule_name
from components.offline import IdrMocks, run_stack
from components.settings import KEYS, ConfigError
from tests.support.settings import settings_for

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "openstack:compute/instance:Instance"
PORT = "openstack:networking/port:Port"
VOLUME = "openstack:blockstorage/volume:Volume"
ATTACH = "openstack:compute/volumeAttach:VolumeAttach"
NETWORK = "openstack:networking/network:Network"
SUBNET = "openstack:networking/subnet:Subnet"
GROUP = "openstack:networking/secGroup:SecGroup"
RULE = "openstack:networking/secGroupRule:SecGroupRule"
FIP = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"
REF = "pulumi:pulumi:StackReference"
INFRA = {INSTANCE, PORT, VOLUME, ATTACH, NETWORK, SUBNET, GROUP, RULE, FIP,
         "openstack:networking/router:Router", "openstack:networking/routerInterface:RouterInterface"}
# ForceNew properties of terraform-provider-openstack 3.x (resource schemas),
# by their Pulumi names: a change of one replaces the resource.
FORCE_NEW = {
    INSTANCE: {"availabilityZone", "availabilityZoneHints", "configDrive", "keyPair", "networks", "networkMode",
               "userData", "region"},
    PORT: {"networkId", "macAddress", "deviceId", "deviceOwner", "valueSpecs", "tenantId", "region"},
    SUBNET: {"cidr", "networkId", "ipVersion", "prefixLength", "subnetpoolId", "valueSpecs", "tenantId", "region"},
    NETWORK: {"availabilityZoneHints", "valueSpecs", "tenantId", "region"},
    GROUP: {"deleteDefaultRules", "tenantId", "region"},
    RULE: {"description", "direction", "ethertype", "portRangeMax", "portRangeMin", "protocol", "remoteGroupId",
           "remoteIpPrefix", "securityGroupId", "tenantId", "region"},
    VOLUME: {"availabilityZone", "backupId", "imageId", "snapshotId", "sourceVolId", "region"},
    ATTACH: {"instanceId", "volumeId", "multiattach", "region"},
    FIP: {"floatingIp", "region"},
    "openstack:networking/router:Router": {"distributed", "availabilityZoneHints", "valueSpecs", "region"},
    "openstack:networking/routerInterface:RouterInterface": {"portId", "routerId", "subnetId", "region"},
}


@pytest.fixture(scope="module")
def first():
    """prod's first deployment; its outputs are what the stack then holds."""
    return run_stack("prod")


def existing(overrides=None, deployed=None, stack="prod", **kw):
    return run_stack(stack, overrides, deployed=deployed, **kw)


def refused(first, overrides, stack="prod", deployed=None, **kw):
    """Run as an existing stack; the ConfigError and what was registered."""
    with pytest.raises(ConfigError) as error:
        existing(overrides, deployed or first.outputs, stack, **kw)
    return error.value


def registered_before_refusal(first, overrides):
    """What a refused run registered: its recording is kept past the error."""
    from components.offline import Recording, effective_config, run_config
    config, secrets = effective_config("prod", overrides)
    recording = Recording("prod")
    with pytest.raises(ConfigError) as error:
        run_config("prod", config, secrets, IdrMocks(stack="prod", deployed=first.outputs), recording=recording)
    return error.value, recording


# ------------------------------------------------------------ 1. identity

REFUSED_EXAMPLES = [(key, c.example) for key, c in CHANGES.items() if c.effect == changes.REFUSED]


@pytest.mark.parametrize("key,example", REFUSED_EXAMPLES, ids=[k for k, _ in REFUSED_EXAMPLES])
def test_refused_change_names_its_key_and_declares_nothing(first, key, example):
    error, recording = registered_before_refusal(first, example)
    assert error.key in {f"idr:{k}" for k in example}, str(error)
    assert "the value this stack was deployed with" in str(error)
    assert "python -m operations.swap --from prod --to <new>" in str(error)
    # Only the stack's reference to itself was read; nothing else declared.
    assert [(r.type, r.name) for r in recording.resources] == [(REF, identity.REFERENCE_NAME)]


def test_refusal_names_the_deployed_value_and_how_to_keep_it(first):
    error = refused(first, {"subnetCidr": "10.20.0.0/24"})
    assert error.key == "idr:subnetCidr" and "'192.168.1.0/24'" in str(error)
    assert "`pulumi config rm idr:subnetCidr -s prod`" in str(error) or \
        "`pulumi config set idr:subnetCidr 192.168.1.0/24 -s prod`" in str(error)


def test_renamed_stack_with_empty_environment_is_refused_with_the_name_to_keep(first):
    """`pulumi stack rename prod prod2`: same state, the environment would follow the new name."""
    error = refused(first, None, stack="newidr", deployed=first.outputs,
                    stack_outputs={"prod": first.outputs})
    assert error.key == "idr:environment" and error.value == "newidr"
    assert "`pulumi config set idr:environment prod -s newidr`" in str(error)


def test_first_deployment_compares_nothing():
    run = run_stack("prod", {"environment": "prod2", "subnetCidr": "10.20.0.0/24", "omeroreadonlyFlavor": "m1.xlarge"})
    assert run.outputs["identity"]["environment"] == "prod2"
    assert run.named(identity.REFERENCE_NAME, REF).inputs["name"] == "organization/idr/prod"


def test_identity_is_exported_for_the_next_run(first):
    assert first.outputs["identity"] == {
        "environment": "prod", "subnetCidr": "192.168.1.0/24", "existingNetwork": "", "existingSubnet": "",
        "availabilityZone": "", "externalNetwork": "public", "sshUser": "rocky", "volumeType": "",
        "omeroreadonlyFlavor": "m1.large"}


def test_stack_deployed_before_the_identity_output_is_still_guarded(first):
    legacy = {k: v for k, v in first.outputs.items() if k != "identity"}
    assert refused(first, {"environment": "prod2"}, deployed=legacy).key == "idr:environment"
    assert refused(first, {"subnetCidr": "10.20.0.0/24"}, deployed=legacy).key == "idr:subnetCidr"
    existing({"omeroreadonlyCount": "5"}, legacy)  # and an allowed change still runs


def test_a_volume_never_shrinks(first):
    error = refused(first, {"databaseVolumeSize": "700"})
    assert error.key == "idr:databaseVolumeSize" and "at least 800" in str(error)


def test_guard_names_this_stack_when_it_holds_the_ip_under_another_name():
    """The floating-IP guard's words when the holder is this very stack,
    deployed as another environment (the identity check normally stops first)."""
    from pulumi.runtime import mocks as pulumi_mocks
    from components import floatingip
    from components.offline import reset_runtime
    s = settings_for("prod", {"environment": "prod2"})
    reset_runtime()
    pulumi_mocks.set_mocks(IdrMocks({"203.0.113.10": "prod-proxy"}), project="idr", stack="prod", preview=False)
    try:
        deployed = identity.deployed_from({"environment": "prod"})
        with pytest.raises(floatingip.FloatingIpHeld) as error:
            floatingip.check_floating_ip(s, deployed.environment)
        assert "this stack's own proxy, deployed as environment prod" in str(error.value)
        assert "pulumi config set idr:environment prod -s prod" in str(error.value)
        assert "operations.swap --from prod" not in str(error.value)
        deployed = identity.deployed_from({"environment": "other"})
        with pytest.raises(floatingip.FloatingIpHeld) as error:
            floatingip.check_floating_ip(s, deployed.environment)
        assert "python -m operations.swap --from prod --to prod" in str(error.value)
    finally:
        reset_runtime()


# ----------------------------------------------- allowed changes keep all else

def infra(run):
    return {r.urn: r for r in run.resources if r.type in INFRA}


def effective_inputs(r):
    return {k: v for k, v in r.inputs.items() if k not in r.options.ignore_changes}


@pytest.mark.parametrize("overrides", [
    {"databaseVolumeSize": "900"}, {"omeroreadonlyCount": "5"},
    {"sshAllowedCidrs": '["0.0.0.0/0", "198.51.100.0/24"]'}, {"bfcacheGeneration": "1"}],
    ids=["volume-up", "one-more-readonly", "one-more-cidr", "bfcache-generation"])
def test_allowed_change_keeps_every_existing_rule_instance_port_and_volume(first, overrides):
    run = existing(overrides, first.outputs)
    before, after = infra(first), infra(run)
    for urn, old in before.items():
        assert urn in after, f"{old.name} would be deleted"
        if old.type in (RULE, INSTANCE, PORT, GROUP, ATTACH, NETWORK, SUBNET):
            assert effective_inputs(after[urn]) == effective_inputs(old), old.name
        if old.type == VOLUME:
            diff = {k for k in {*old.inputs, *after[urn].inputs} if old.inputs.get(k) != after[urn].inputs.get(k)}
            assert diff == ({"size"} if old.name == "prod-database-data" and overrides.get("databaseVolumeSize")
                            else set()), old.name


def test_one_more_or_one_fewer_ssh_cidr_adds_or_removes_exactly_its_rule(first):
    def rules(run):
        return {r.name for r in run.of_type(RULE)}
    more = existing({"sshAllowedCidrs": '["198.51.100.0/24", "0.0.0.0/0"]'}, first.outputs)
    assert rules(more) - rules(first) == {"prod-proxy-external-tcp-22-from-198.51.100.0_24"}
    assert rules(first) <= rules(more)
    fewer = run_stack("prod", {"sshAllowedCidrs": '["198.51.100.0/24"]'}, deployed=more.outputs)
    assert rules(more) - rules(fewer) == {"prod-proxy-external-tcp-22-from-0.0.0.0_0"}
    assert rules(fewer) <= rules(more)


def test_rules_alias_the_positional_names_of_existing_stacks(first):
    """Before, rule i of a group was `<group>-<i>` in the order the program
    lists them: each rule carries exactly that name as an alias, so the first
    update with content names renames in place (no delete, no create)."""
    s = settings_for("prod", {"rsyncEnabled": "true", "sshAllowedCidrs": '["198.51.100.0/24", "192.0.2.7/32"]'})
    run = run_stack("prod", {"rsyncEnabled": "true", "sshAllowedCidrs": '["198.51.100.0/24", "192.0.2.7/32"]'})
    for group, rules in (("prod-proxy-external", proxy_external_rules(s)),):
        for i, rule in enumerate(rules):
            res = run.named(rule_name(group, rule), RULE)
            assert [a.rsplit("::", 1)[1] for a in res.options.aliases] == [f"{group}-{i}"]
            assert res.inputs.get("remoteIpPrefix") == rule.remote and res.inputs.get("portRangeMin") == rule.port_min
    internal = run.named("prod-internal-any-from-self", RULE)
    assert [a.rsplit("::", 1)[1] for a in internal.options.aliases] == ["prod-internal-0"]
    # Content names are unique: no two rules could claim one name.
    names = [r.name for r in run.of_type(RULE)]
    assert len(names) == len(set(names))


# ------------------------------------------------------------ 4. clones

def test_grown_or_vanished_clone_source_does_not_fail_an_existing_clone(first):
    newidr = run_stack("newidr", stack_outputs={"prod": first.outputs})
    grown = {**first.outputs, "dataVolumes": {role: {**v, "size": v["size"] + 500}
                                              for role, v in first.outputs["dataVolumes"].items()}}
    # A first deployment of newidr against the grown source is refused...
    with pytest.raises(ConfigError, match="at least the size of its source"):
        run_stack("newidr", stack_outputs={"prod": grown})
    # ...but the existing clone updates, reading no source at all.
    again = run_stack("newidr", {"bfcacheGeneration": "1"}, stack_outputs={"prod": grown}, deployed=newidr.outputs)
    assert [r.name for r in again.of_type(REF)] == [identity.REFERENCE_NAME]
    for vol in newidr.of_type(VOLUME):
        assert effective_inputs(again.named(vol.name, VOLUME)) == effective_inputs(vol)
        assert "sourceVolId" in vol.options.ignore_changes
    # Vanished: prod's stack removed. These mocks know no "prod": reading it
    # would raise "stack organization/idr/prod has no outputs here".
    from components.offline import effective_config, run_config
    config, secrets = effective_config("newidr", {"bfcacheGeneration": "1"})
    gone = run_config("newidr", config, secrets, IdrMocks(stack="newidr", deployed=newidr.outputs))
    assert {v.name for v in gone.of_type(VOLUME)} == {v.name for v in newidr.of_type(VOLUME)}
    with pytest.raises(Exception, match="has no outputs here"):
        run_config("newidr", config, secrets, IdrMocks(stack="newidr"))  # a first deployment needs its source


def test_a_clone_not_yet_created_is_still_checked(first):
    newidr = run_stack("newidr", stack_outputs={"prod": first.outputs})
    partial = {**newidr.outputs, "dataVolumes": {k: v for k, v in newidr.outputs["dataVolumes"].items()
                                                 if k != "database"}}
    grown = {**first.outputs, "dataVolumes": {**first.outputs["dataVolumes"], "database": {
        **first.outputs["dataVolumes"]["database"], "size": 5000}}}
    with pytest.raises(ConfigError, match="databaseVolumeSize"):
        run_stack("newidr", stack_outputs={"prod": grown}, deployed=partial)


# ------------------------------------------------------------ 2. protection

def test_data_holders_and_the_network_under_them_are_protected(first):
    holders = {"prod-proxy", "prod-omeroreadwrite", "prod-database", "prod-management"}
    for r in first.of_type(INSTANCE) + first.of_type(PORT):
        assert r.options.protect == (r.name in holders), r.name
    assert all(a.options.protect for a in first.of_type(ATTACH))
    assert first.named("prod-network", NETWORK).options.protect
    assert first.named("prod-subnet", SUBNET).options.protect


# ----------------------------------------------- 8. the table of every key

def readme_effects() -> dict[str, str] | None:
    """The table of docs/reference/changes.md, when it has the section; else None."""
    text = (ROOT / "docs/reference/changes.md").read_text()
    m = re.search(r"^# What a config change does to a running environment\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not m:
        return None
    return {k: e.strip() for k, e in re.findall(r"^\| `idr:(\w+)` \| ([^|]+) \|", m.group(1), re.M)}


def table() -> dict[str, str]:
    found = readme_effects()
    return found if found is not None else {k: c.effect for k, c in CHANGES.items()}


def test_table_has_every_key_and_only_known_effects():
    effects = table()
    assert set(effects) == set(KEYS)
    assert set(CHANGES) == set(KEYS)
    assert set(effects.values()) <= set(changes.EFFECTS)


def classify(before, after) -> str:
    """What a run as an existing stack would do, from two recordings."""
    old, new = infra(before), infra(after)
    replaced, restarts, updated, ignored = [], [], [], []
    for urn in old.keys() & new.keys():
        a, b = old[urn], new[urn]
        diff = {k for k in {*a.inputs, *b.inputs} if a.inputs.get(k) != b.inputs.get(k)}
        effective = diff - set(b.options.ignore_changes)
        ignored += diff & set(b.options.ignore_changes)
        if effective & FORCE_NEW.get(a.type, set()):
            replaced.append(b)
        elif a.type == INSTANCE and "flavorName" in effective:
            restarts.append(b.name)
        elif effective:
            updated.append(b.name)
    added_removed = old.keys() ^ new.keys()
    steps = {(r.type, r.name): r.inputs for r in before.resources if r.type not in INFRA}
    steps_after = {(r.type, r.name): r.inputs for r in after.resources if r.type not in INFRA}
    if replaced:
        if all(r.type == FIP and r.options.protect for r in replaced):
            return changes.SWAP
        return "replaces " + ", ".join(r.name for r in replaced)
    if len(restarts) > 1:
        return "restarts " + ", ".join(restarts)
    if restarts:
        return changes.ONE_SERVER
    if added_removed:
        return changes.ADDS_REMOVES
    if updated or steps != steps_after:
        return changes.IN_PLACE
    if ignored:
        return changes.IGNORED
    return changes.NOTHING


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("changes")
    (tmp / "deployment" / "ansible").mkdir(parents=True)
    for name in ("idr-01-install-idr.yml", "site.yml"):
        (tmp / "deployment" / "ansible" / name).write_text("- hosts: all\n")
    (tmp / "vars.yml").write_text("idr_environment: prod\n")
    return tmp


@pytest.mark.parametrize("key", list(CHANGES))
def test_table_says_what_the_program_does(first, scratch, key):
    expected = table()[key]
    change = CHANGES[key]
    before = run_stack("prod", change.given) if change.given else first
    example = {**change.given, **{k: v.replace("{tmp}", str(scratch)) for k, v in change.example.items()}}
    if expected == changes.REFUSED:
        with pytest.raises(ConfigError) as error:
            existing(example, before.outputs)
        assert error.value.key in {f"idr:{k}" for k in change.example}
        return
    after = existing(example, before.outputs, subnet_cidrs={"shared-subnet": "192.168.1.0/24"})
    assert classify(before, after) == expected


@pytest.mark.parametrize("key,harm", [
    ("subnetCidr", "replaces prod-subnet"), ("availabilityZone", "replaces "), ("existingNetwork", "replaces "),
    ("omeroreadonlyFlavor", "restarts prod-omeroreadonly-"), ("environment", "removes")])
def test_what_a_refusal_prevents(first, key, harm):
    """Without the deployed identity (the check bypassed), the classifier sees
    the harm the refusal exists for: it has teeth."""
    after = run_stack("prod", CHANGES[key].example, subnet_cidrs={"shared-subnet": "192.168.1.0/24"})
    effect = classify(first, after)
    if harm == "removes":
        assert effect == changes.ADDS_REMOVES
        gone = {r.name for r in first.resources if r.type in (VOLUME, INSTANCE)} - \
            {r.name for r in after.resources if r.type in (VOLUME, INSTANCE)}
        assert {"prod-database", "prod-omeroreadwrite"} <= gone
    else:
        assert effect.startswith(harm), effect
    if key == "omeroreadonlyFlavor":
        assert effect.count("omeroreadonly-") == 4  # all of them at once
