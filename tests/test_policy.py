"""The CrossGuard pack in policy/: each policy called directly with
pulumi-policy's own argument types (one passing and one violating case each),
then the whole pack against what the real program registers for both stacks."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from pulumi_policy import (PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions, ResourceValidationArgs,
                           ResourceValidationPolicy, StackValidationArgs, StackValidationPolicy)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

ROOT = Path(__file__).resolve().parent.parent


def _load_policies():
    spec = importlib.util.spec_from_file_location("idr_policies", ROOT / "policy" / "idr_policies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["idr_policies"] = module
    spec.loader.exec_module(module)
    return module


P = _load_policies()


# ------------------------------------------------------------ builders

def options(protect=False, delete_before_replace=None):
    return PolicyResourceOptions(protect, [], delete_before_replace, [], PolicyCustomTimeouts(0, 0, 0), [])


def resource(rtype, name, props=None, deps=None, **opts):
    urn = f"urn:pulumi:prod::idr::{rtype}::{name}"
    return PolicyResource(rtype, props or {}, urn, name, options(**opts), None, None, [], dict(deps or {}))


def rule(name, group, port_min=None, port_max=None, remote="0.0.0.0/0", protocol="tcp", remote_group=None):
    props = {"direction": "ingress", "ethertype": "IPv4", "protocol": protocol,
             "portRangeMin": port_min, "portRangeMax": port_max if port_max is not None else port_min,
             "remoteIpPrefix": remote, "remoteGroupId": remote_group, "securityGroupId": "sg-id"}
    return resource(P.SEC_GROUP_RULE, name, props, {"securityGroupId": [group]})


def environment(*extra_rules, proxy_groups=("external", "internal")):
    """prod as the program builds it: subnet, two groups, proxy and database
    ports, and the given rules."""
    subnet = resource(P.SUBNET, "prod-subnet", {"cidr": "192.168.1.0/24"})
    external = resource(P.SEC_GROUP, "prod-proxy-external", {"name": "prod-proxy-external"})
    internal = resource(P.SEC_GROUP, "prod-internal", {"name": "prod-internal"})
    groups = {"external": external, "internal": internal}
    proxy = resource(P.PORT, "prod-proxy", {"name": "prod-proxy"},
                     {"securityGroupIds": [groups[g] for g in proxy_groups]})
    database = resource(P.PORT, "prod-database", {"name": "prod-database"}, {"securityGroupIds": [internal]})
    rules = [rule("prod-internal-0", internal, protocol=None, remote=None, remote_group="sg-internal"),
             rule("prod-proxy-external-1", external, 443)]
    built = [subnet, external, internal, proxy, database, *rules]
    return built, groups, [r(groups) for r in extra_rules]


def run_stack_policy(fn, resources, config=None):
    found = []
    fn(StackValidationArgs(resources, config), lambda message, urn=None: found.append((message, urn)))
    return found


def run_resource_policy(fn, res: PolicyResource):
    found = []
    args = ResourceValidationArgs(res.resource_type, res.props, res.urn, res.name, res.opts, None)
    fn(args, lambda message, urn=None: found.append((message, urn)))
    return found


# ------------------------------------------------- only the proxy, from outside

def test_external_rule_on_proxy_only_group_passes():
    resources, _, _ = environment()
    assert run_stack_policy(P.only_proxy_takes_external_traffic, resources) == []


def test_external_rule_on_group_shared_with_database_violates():
    resources, groups, _ = environment()
    shared = resource(P.PORT, "prod-omeroreadwrite", {}, {"securityGroupIds": [groups["external"]]})
    found = run_stack_policy(P.only_proxy_takes_external_traffic, [*resources, shared])
    assert [urn for _, urn in found] == [resources[-1].urn]
    assert "prod-proxy-external" in found[0][0]


def test_external_rule_on_internal_group_violates_and_internal_cidr_does_not():
    resources, groups, _ = environment()
    inside = rule("prod-internal-1", groups["internal"], 5432, remote="192.168.1.0/25")
    outside = rule("prod-internal-2", groups["internal"], 80, remote="10.0.0.0/8")
    found = run_stack_policy(P.only_proxy_takes_external_traffic, [*resources, inside, outside])
    assert [urn for _, urn in found] == [outside.urn]
    # A CIDR declared internal by policy config (an existing network) is inside.
    assert run_stack_policy(P.only_proxy_takes_external_traffic, [*resources, outside],
                            {"internalCidrs": ["10.0.0.0/8"]}) == []


def test_instance_naming_the_external_group_disqualifies_it():
    resources, _, _ = environment()
    dockermanager = resource(P.INSTANCE, "prod-dockermanager", {"securityGroups": ["prod-proxy-external"]})
    found = run_stack_policy(P.only_proxy_takes_external_traffic, [*resources, dockermanager])
    assert len(found) == 1


def test_rule_whose_group_is_not_in_the_stack_violates():
    resources, _, _ = environment()
    orphan = resource(P.SEC_GROUP_RULE, "stray", {"direction": "ingress", "protocol": "tcp", "portRangeMin": 80,
                                                  "portRangeMax": 80, "remoteIpPrefix": "0.0.0.0/0"})
    found = run_stack_policy(P.only_proxy_takes_external_traffic, [*resources, orphan])
    assert [urn for _, urn in found] == [orphan.urn]


# ------------------------------------------------------------ allowed ports

def test_allowed_ports_pass():
    resources, groups, _ = environment()
    ok = [rule("a", groups["external"], 22, remote="203.0.113.0/24"), rule("b", groups["external"], 14060, 14079),
          rule("c", groups["external"], 4064), rule("d", groups["external"], 873)]
    assert run_stack_policy(P.external_ports_allowed, [*resources, *ok]) == []


@pytest.mark.parametrize("port_min,port_max,protocol", [(8080, 8080, "tcp"), (14060, 14080, "tcp"),
                                                        (None, None, "tcp"), (443, 443, "udp"),
                                                        (None, None, None)])
def test_other_ports_violate(port_min, port_max, protocol):
    resources, groups, _ = environment()
    bad = rule("bad", groups["external"], port_min, port_max, protocol=protocol)
    found = run_stack_policy(P.external_ports_allowed, [*resources, bad])
    assert [urn for _, urn in found] == [bad.urn]


def test_allowed_ports_come_from_policy_config():
    resources, groups, _ = environment()
    rsync = rule("rsync", groups["external"], 873)
    config = {"allowedPorts": [22, 80, 443, 4063, 4064, "14060-14079"]}
    assert len(run_stack_policy(P.external_ports_allowed, [*resources, rsync], config)) == 1


# ----------------------------------------------------------- never from outside

def test_admin_ports_from_inside_pass():
    resources, groups, _ = environment()
    inside = [rule("pg", groups["internal"], 5432, remote="192.168.1.12/32"),
              rule("cb", groups["external"], 9000, remote=None, remote_group="sg-internal")]
    assert run_stack_policy(P.no_external_admin_ports, [*resources, *inside]) == []


@pytest.mark.parametrize("port_min,port_max,remote", [(9000, 9000, "0.0.0.0/0"), (8000, 8100, "0.0.0.0/0"),
                                                      (5432, 5432, "198.51.100.7/32"), (None, None, None)])
def test_admin_ports_from_outside_violate(port_min, port_max, remote):
    resources, groups, _ = environment()
    bad = rule("bad", groups["external"], port_min, port_max, remote=remote,
               protocol="tcp" if port_min else None)
    found = run_stack_policy(P.no_external_admin_ports, [*resources, bad])
    assert [urn for _, urn in found] == [bad.urn]


def test_ipv6_rule_without_prefix_is_from_everywhere():
    resources, groups, _ = environment()
    bad = rule("v6", groups["external"], 5432, remote=None)
    bad.props["ethertype"] = "IPv6"
    found = run_stack_policy(P.no_external_admin_ports, [*resources, bad])
    assert "::/0" in found[0][0]


# ------------------------------------------------------------------ rsync

def test_rsync_advisory():
    resources, groups, _ = environment()
    assert run_stack_policy(P.rsync_closed, resources) == []
    rsync = rule("rsync", groups["external"], 873)
    found = run_stack_policy(P.rsync_closed, [*resources, rsync])
    assert [urn for _, urn in found] == [rsync.urn]
    assert next(p for p in P.POLICIES if p.name == "rsync-closed").enforcement_level.value == "advisory"


# ---------------------------------------------------------------- volumes

def test_protected_volume_passes_and_unprotected_violates():
    assert run_resource_policy(P.data_volumes_protected,
                               resource(P.VOLUME, "prod-database-data", {"size": 800}, protect=True)) == []
    found = run_resource_policy(P.data_volumes_protected, resource(P.VOLUME, "prod-database-data", {"size": 800}))
    assert len(found) == 1 and "prod-database-data" in found[0][0]
    # Other resource types are not its business.
    assert run_resource_policy(P.data_volumes_protected, resource(P.PORT, "prod-proxy")) == []


# ------------------------------------------------------------ floating IPs

def test_floating_ip_on_proxy_port_passes_and_elsewhere_violates():
    resources, _, _ = environment()
    proxy = next(r for r in resources if r.name == "prod-proxy")
    database = next(r for r in resources if r.name == "prod-database")
    good = resource(P.FLOATING_IP_ASSOCIATE, "prod-proxy-floating-ip", {"floatingIp": "203.0.113.9"},
                    {"portId": [proxy]})
    assert run_stack_policy(P.floating_ip_only_on_proxy, [*resources, good]) == []
    bad = resource(P.FLOATING_IP_ASSOCIATE, "db-ip", {"floatingIp": "203.0.113.9"}, {"portId": [database]})
    literal = resource(P.FLOATING_IP_ASSOCIATE, "literal-ip", {"portId": "0000-port"})
    found = run_stack_policy(P.floating_ip_only_on_proxy, [*resources, bad, literal])
    assert [urn for _, urn in found] == [bad.urn, literal.urn]


# ----------------------------------------------------- delete_before_replace

def test_volume_holder_with_delete_before_replace_passes_and_without_violates():
    volume = resource(P.VOLUME, "prod-database-data", protect=True)
    good = resource(P.INSTANCE, "prod-database", delete_before_replace=True)
    bad = resource(P.INSTANCE, "prod-omeroreadwrite", delete_before_replace=None)
    free = resource(P.INSTANCE, "prod-omeroreadonly-1", delete_before_replace=None)  # holds no volume
    attach = [resource(P.VOLUME_ATTACH, f"{i.name}-data", {}, {"instanceId": [i], "volumeId": [volume]})
              for i in (good, bad)]
    found = run_stack_policy(P.volume_holders_delete_before_replace, [volume, good, bad, free, *attach])
    assert [urn for _, urn in found] == [bad.urn]
    assert run_stack_policy(P.volume_holders_delete_before_replace, [volume, good, free, attach[0]]) == []


def test_data_holders_protected_passes_and_unprotected_violates():
    """The instance a volume hangs on, its attachment, port, network and
    subnet: protected passes; any one unprotected is named; a host without a
    volume (a read-only server) may stay unprotected."""
    def build(unprotected=()):
        def r(rtype, name, props=None, deps=None):
            return resource(rtype, name, props, deps, protect=name not in unprotected)
        network = r(P.NETWORK, "prod-network")
        subnet = r(P.SUBNET, "prod-subnet", {"cidr": "192.168.1.0/24"})
        port = r(P.PORT, "prod-database", {"name": "prod-database"}, {"networkId": [network], "fixedIps": [subnet]})
        instance = r(P.INSTANCE, "prod-database", {}, {"networks": [port]})
        volume = r(P.VOLUME, "prod-database-data")
        attach = r(P.VOLUME_ATTACH, "prod-database-data-attach", {}, {"instanceId": [instance], "volumeId": [volume]})
        ro_port = resource(P.PORT, "prod-omeroreadonly-1", {}, {"networkId": [network], "fixedIps": [subnet]})
        ro = resource(P.INSTANCE, "prod-omeroreadonly-1", {}, {"networks": [ro_port]})
        return [network, subnet, port, instance, volume, attach, ro_port, ro]
    assert run_stack_policy(P.data_holders_protected, build()) == []
    for name, rtype in (("prod-database", P.INSTANCE), ("prod-database", P.PORT), ("prod-network", P.NETWORK),
                        ("prod-subnet", P.SUBNET), ("prod-database-data-attach", P.VOLUME_ATTACH)):
        resources = build(unprotected=(name,))
        found = run_stack_policy(P.data_holders_protected, resources)
        expected = {r.urn for r in resources if r.name == name and not r.opts.protect}
        assert {urn for _, urn in found} == expected and len(found) == len(expected), (name, found)
        assert all("is not protected" in message for message, _ in found)


# ------------------------------------------------------------ preview unknowns

def test_unknown_ids_during_preview_still_decide():
    """In a preview new IDs are unknown: groups are found by dependency and a
    rule naming a remote group (unknown ID) is still inside."""
    resources, groups, _ = environment()
    internal_rule = resource(P.SEC_GROUP_RULE, "prod-internal-9", unknown_checking_proxy(
        {"direction": "ingress", "ethertype": "IPv4", "remoteGroupId": UNKNOWN_STRING_VALUE,
         "securityGroupId": UNKNOWN_STRING_VALUE}), {"securityGroupId": [groups["internal"]]})
    for policy in (P.only_proxy_takes_external_traffic, P.external_ports_allowed, P.no_external_admin_ports):
        assert run_stack_policy(policy, [*resources, internal_rule]) == []
    unknown_prefix = resource(P.SEC_GROUP_RULE, "prod-internal-10", unknown_checking_proxy(
        {"direction": "ingress", "protocol": "tcp", "portRangeMin": 5432, "portRangeMax": 5432,
         "remoteIpPrefix": UNKNOWN_STRING_VALUE}), {"securityGroupId": [groups["internal"]]})
    # Cannot decide: raise, so the engine reports the policy as not run in this
    # preview (and `pulumi up` runs it with the value known) rather than pass it.
    with pytest.raises(UnknownValueError):
        run_stack_policy(P.no_external_admin_ports, [*resources, unknown_prefix])


def test_pack_declares_each_policy_once_with_its_kind():
    kinds = {p.name: type(p) for p in P.POLICIES}
    assert len(kinds) == len(P.POLICIES) == 8
    assert kinds["data-volumes-protected"] is ResourceValidationPolicy
    assert all(k is StackValidationPolicy for n, k in kinds.items() if n != "data-volumes-protected")


# ---------------------------------------- the pack against the real program

def policy_resources(recording) -> list[PolicyResource]:
    """The recorded registrations as the engine hands them to a pack: inputs
    by their wire names, options, and property dependencies. The offline
    monitor records IDs rather than dependencies, so an input holding another
    resource's (mock) ID depends on that resource, as `sg.id` would."""
    by_id = {r.id: r for r in recording.resources if r.id}
    out = {}
    for r in recording.resources:
        opts = PolicyResourceOptions(r.options.protect, list(r.options.ignore_changes),
                                     r.options.delete_before_replace or None, [], PolicyCustomTimeouts(0, 0, 0),
                                     [], r.options.parent or None)
        out[r.urn] = PolicyResource(r.type, dict(r.inputs), r.urn, r.name, opts, None, None, [], {})
    for r in recording.resources:
        res = out[r.urn]
        res.parent = out.get(r.options.parent)
        res.dependencies = [out[u] for u in r.options.depends_on if u in out]
        for key, value in r.inputs.items():
            values = value if isinstance(value, list) else [value]
            # One level into objects too: an instance's `networks: [{port: id}]`.
            values = [x for v in values for x in (v.values() if isinstance(v, dict) else [v])]
            refs = [out[by_id[v].urn] for v in values if isinstance(v, str) and v in by_id]
            if refs:
                res.property_dependencies[key] = refs
    return list(out.values())


def run_pack(resources: list[PolicyResource], config=None):
    """Every policy of the pack as the analyzer runs it: resource policies on
    each resource, stack policies once. Returns (policy, level, message, urn)."""
    found = []
    for policy in P.POLICIES:
        def report(message, urn=None, policy=policy):
            found.append((policy.name, policy.enforcement_level.value, message, urn))
        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                policy.validate(ResourceValidationArgs(r.resource_type, r.props, r.urn, r.name, r.opts, None,
                                                       (config or {}).get(policy.name)), report)
        else:
            policy.validate(StackValidationArgs(resources, (config or {}).get(policy.name)), report)
    return found


@pytest.fixture(scope="module")
def recordings():
    from components.offline import run_stack
    return {stack: run_stack(stack) for stack in ("prod", "newidr")}


@pytest.mark.parametrize("stack", ["prod", "newidr"])
def test_program_passes_the_pack(recordings, stack):
    recording = recordings[stack]
    resources = policy_resources(recording)
    # The checks had something to look at: the program's groups, rules, ports,
    # volumes and attachments all reached the policies with their links.
    rules = [r for r in resources if r.resource_type == P.SEC_GROUP_RULE]
    assert rules and all(r.property_dependencies.get("securityGroupId") for r in rules)
    assert len(P.proxy_only_groups(resources)) == 1
    external = list(P.external_ingress_rules(StackValidationArgs(resources)))
    assert {(lo, hi) for _, _, (lo, hi) in external} >= {(443, 443), (14060, 14079)}
    attaches = [r for r in resources if r.resource_type == P.VOLUME_ATTACH]
    assert len(attaches) == 4 and all(r.property_dependencies.get("instanceId") for r in attaches)  # with management
    # rsync follows the stack's switch: advisory only, and only when it is on.
    findings = run_pack(resources)
    rsync_on = any(lo <= 873 <= hi for _, _, (lo, hi) in external)
    assert [f for f in findings if f[1] == "mandatory"] == []
    assert {f[0] for f in findings} == ({"rsync-closed"} if rsync_on else set())


def test_pack_catches_a_weakened_program(recordings):
    """The same recorded prod with the guard rails taken out, one by one."""
    resources = policy_resources(recordings["prod"])
    named = {(r.resource_type, r.name): r for r in resources}
    volume = named[(P.VOLUME, "prod-database-data")]
    volume.opts.protect = False
    instance = named[(P.INSTANCE, "prod-database")]
    instance.opts.delete_before_replace = None
    instance.opts.protect = False
    named[(P.PORT, "prod-omeroreadwrite")].opts.protect = False
    assoc = next(r for r in resources if r.resource_type == P.FLOATING_IP_ASSOCIATE)
    assoc.property_dependencies["portId"] = [named[(P.PORT, "prod-dockermanager")]]
    external_rule = next(r for r in resources if r.resource_type == P.SEC_GROUP_RULE and r.name == "prod-proxy-external-tcp-443-from-0.0.0.0_0")
    external_rule.props["portRangeMin"] = external_rule.props["portRangeMax"] = 9000
    named[(P.PORT, "prod-database")].property_dependencies["securityGroupIds"].append(
        named[(P.SEC_GROUP, "prod-proxy-external")])
    found = {(f[0], f[3]) for f in run_pack(resources) if f[1] == "mandatory"}
    assert (("data-volumes-protected", None)) in found
    assert ("volume-holders-delete-before-replace", instance.urn) in found
    assert {u for n, u in found if n == "data-holders-protected"} == {
        instance.urn, named[(P.PORT, "prod-omeroreadwrite")].urn}
    assert ("floating-ip-only-on-proxy", assoc.urn) in found
    assert ("no-external-admin-ports", external_rule.urn) in found
    assert ("external-ports-allowed", external_rule.urn) in found
    # The external group now also sits on the database: every public rule fails.
    public = {r.urn for r in resources if r.resource_type == P.SEC_GROUP_RULE and r.name.startswith("prod-proxy-ext")}
    assert {u for n, u in found if n == "only-proxy-takes-external-traffic"} == public


def test_rsync_switch_is_reported_as_advisory():
    from components.offline import run_stack
    resources = policy_resources(run_stack("prod", overrides={"rsyncEnabled": True}))
    findings = run_pack(resources)
    assert [(f[0], f[1]) for f in findings] == [("rsync-closed", "advisory")]


# --------------------------------- the pack served as the Pulumi CLI runs it

@pytest.fixture(scope="module")
def analyzer():
    """policy/ started the way the CLI's python analyzer plugin starts it
    (`python -m pulumi.policy <engine> <pack dir>`): it serves gRPC on a
    loopback port it prints. Stopped at the end."""
    import subprocess
    import grpc
    from pulumi.runtime.proto import analyzer_pb2_grpc
    proc = subprocess.Popen([sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", str(ROOT / "policy")],
                            cwd=ROOT / "policy", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _analyzer_resource(res: PolicyResource, unknown: dict | None = None):
    from google.protobuf import struct_pb2
    from pulumi.runtime.proto import analyzer_pb2 as pb
    props = struct_pb2.Struct()
    props.update({k: v for k, v in {**res.props, **(unknown or {})}.items() if v is not None})
    opts = pb.AnalyzerResourceOptions(protect=bool(res.opts.protect),
                                      deleteBeforeReplace=bool(res.opts.delete_before_replace),
                                      deleteBeforeReplaceDefined=res.opts.delete_before_replace is not None)
    deps = {k: pb.AnalyzerPropertyDependencies(urns=[d.urn for d in v]) for k, v in res.property_dependencies.items()}
    return pb.AnalyzerResource(type=res.resource_type, properties=props, urn=res.urn, name=res.name, options=opts,
                               parent=res.parent.urn if res.parent else "", propertyDependencies=deps)


def _mandatory(response):
    from pulumi.runtime.proto import analyzer_pb2 as pb
    return [d for d in response.diagnostics if d.enforcementLevel == pb.MANDATORY]


def test_served_pack_declares_its_policies(analyzer):
    from google.protobuf import empty_pb2
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "idr"
    assert sorted(p.name for p in info.policies) == sorted(p.name for p in P.POLICIES)


def test_served_pack_passes_prod_and_blocks_a_weakened_prod(analyzer, recordings):
    from pulumi.runtime.proto import analyzer_pb2 as pb
    resources = policy_resources(recordings["prod"])
    request = pb.AnalyzeStackRequest(resources=[_analyzer_resource(r) for r in resources])
    response = analyzer.AnalyzeStack(request)
    assert _mandatory(response) == [] and not response.diagnostics

    rule = next(r for r in resources if r.name == "prod-proxy-external-tcp-443-from-0.0.0.0_0")
    rule.props["portRangeMin"] = rule.props["portRangeMax"] = 5432
    response = analyzer.AnalyzeStack(pb.AnalyzeStackRequest(resources=[_analyzer_resource(r) for r in resources]))
    assert {(d.policyName, d.urn) for d in _mandatory(response)} == {
        ("no-external-admin-ports", rule.urn), ("external-ports-allowed", rule.urn)}

    volume = next(r for r in resources if r.resource_type == P.VOLUME)
    volume.opts.protect = False
    r = _analyzer_resource(volume)
    response = analyzer.Analyze(pb.AnalyzeRequest(type=r.type, properties=r.properties, urn=r.urn, name=r.name,
                                                  options=r.options))
    assert [d.policyName for d in _mandatory(response)] == ["data-volumes-protected"]


def test_served_pack_in_a_preview_with_unknown_ids(analyzer, recordings):
    """A first preview knows no IDs: the links come from property
    dependencies, so every policy still runs and passes."""
    from pulumi.runtime.proto import analyzer_pb2 as pb
    from pulumi_policy.proxy import UNKNOWN_STRING_VALUE as U
    resources = policy_resources(recordings["newidr"])
    unknown = {"securityGroupId": U, "securityGroupIds": [U, U], "remoteGroupId": U, "portId": U,
               "instanceId": U, "volumeId": U, "networkId": U}
    request = pb.AnalyzeStackRequest(resources=[
        _analyzer_resource(r, {k: unknown[k] for k in r.props if k in unknown and r.props[k]}) for r in resources])
    response = analyzer.AnalyzeStack(request)
    assert list(response.diagnostics) == []
