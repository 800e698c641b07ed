"""The IDR's guard rails as plain policy functions.

Each function takes pulumi-policy's own argument types (ResourceValidationArgs
or StackValidationArgs) and a `report_violation` callback, so tests call it
directly. `__main__.py` only wraps them into the pack.

Property names are the engine's (camelCase: `remoteIpPrefix`, `portId`).
Which resource a property refers to is read from `property_dependencies`,
which the engine knows even during a preview, when IDs are still unknown.
Anything that cannot be tied to the proxy counts as not the proxy: the
policies fail closed.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable, Mapping, Optional

from pulumi_policy import (EnforcementLevel, PolicyConfigSchema, PolicyResource, ResourceValidationArgs,
                           ResourceValidationPolicy, StackValidationArgs, StackValidationPolicy)
from pulumi_policy.proxy import UnknownValueError

SEC_GROUP = "openstack:networking/secGroup:SecGroup"
SEC_GROUP_RULE = "openstack:networking/secGroupRule:SecGroupRule"
SUBNET = "openstack:networking/subnet:Subnet"
NETWORK = "openstack:networking/network:Network"
PORT = "openstack:networking/port:Port"
INSTANCE = "openstack:compute/instance:Instance"
VOLUME = "openstack:blockstorage/volume:Volume"
VOLUME_ATTACH = "openstack:compute/volumeAttach:VolumeAttach"
FLOATING_IP_ASSOCIATE = "openstack:networking/floatingIpAssociate:FloatingIpAssociate"

# Ports the public may reach on the proxy (operators' page + production).
# 873 (rsync) is allowed because the stack can switch it on (idr:rsyncEnabled),
# but the advisory policy below says so on every preview where it is open.
DEFAULT_ALLOWED_PORTS = [22, 80, 443, 4063, 4064, "14060-14079", 873]
# Reached only through SSH tunnels (9000 cache-buster, 8009 long requests) or
# only from inside (5432 PostgreSQL).
NEVER_EXTERNAL_PORTS = (9000, 8009, 5432)
RSYNC_PORT = 873
ALL_PORTS = (1, 65535)

_PROXY_PORT_NAME = re.compile(r"^[a-z0-9-]*-proxy$")
_UNKNOWN = object()


# --------------------------------------------------------------------------
# Reading resources


def _get(props: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A property, `_UNKNOWN` while a preview cannot know it, else default."""
    try:
        value = props.get(key)
    except UnknownValueError:
        return _UNKNOWN
    return default if value is None else value


def _refs(resource: PolicyResource, prop: str, rtype: str) -> list[PolicyResource]:
    """Resources of type `rtype` that the input `prop` was computed from."""
    return [r for r in resource.property_dependencies.get(prop, []) if r.resource_type == rtype]


def _known_strings(values: Any) -> set[str]:
    """The known strings of a list property (a preview may not know some)."""
    if values is _UNKNOWN or isinstance(values, (str, bytes)):
        return set()
    found = set()
    for i in range(len(values)):
        try:
            value = values[i]
        except UnknownValueError:
            continue
        if isinstance(value, str):
            found.add(value)
    return found


def _of_type(resources: Iterable[PolicyResource], rtype: str) -> list[PolicyResource]:
    return [r for r in resources if r.resource_type == rtype]


def is_proxy_port(port: PolicyResource) -> bool:
    """The proxy's port is named `<env>-proxy` (hosts are `<env>-<role>[-n]`)."""
    return port.resource_type == PORT and bool(_PROXY_PORT_NAME.match(port.name))


def _parse_ports(spec: Iterable[Any]) -> list[tuple[int, int]]:
    ranges = []
    for item in spec:
        if isinstance(item, int):
            ranges.append((item, item))
        else:
            lo, _, hi = str(item).partition("-")
            ranges.append((int(lo), int(hi or lo)))
    return ranges


def _networks(cidrs: Iterable[str]) -> list[ipaddress._BaseNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def environment_networks(resources: Iterable[PolicyResource], config: Mapping[str, Any]) -> list:
    """The stack's own subnets, plus `internalCidrs` from policy config (an
    environment on an existing network has no Subnet resource)."""
    cidrs = [c for c in (_get(s.props, "cidr") for s in _of_type(resources, SUBNET)) if isinstance(c, str)]
    return _networks([*cidrs, *config.get("internalCidrs", [])])


def _port_range(props: Mapping[str, Any]) -> tuple[int, int]:
    """Neutron: no protocol or no port range means every port."""
    lo, hi = _get(props, "portRangeMin", 0), _get(props, "portRangeMax", 0)
    if _get(props, "protocol") in (None, "", "any") or _UNKNOWN in (lo, hi) or not lo:
        return ALL_PORTS
    return int(lo), int(hi or lo)


def _remote(rule: PolicyResource, env_nets: list) -> Optional[str]:
    """Where an ingress rule admits traffic from, if that is outside the
    environment (None when inside: another group of the project, or a CIDR
    within the environment's subnets)."""
    props = rule.props
    if _get(props, "direction") != "ingress":
        return None
    if _get(props, "remoteGroupId"):  # unknown during a preview is still a group
        return None
    prefix = _get(props, "remoteIpPrefix")
    if prefix is _UNKNOWN:
        if rule.property_dependencies.get("remoteIpPrefix") and all(
                r.resource_type == SUBNET for r in rule.property_dependencies["remoteIpPrefix"]):
            return None  # computed from the environment's own subnet
        props["remoteIpPrefix"]  # raises: this policy cannot decide during preview
    if not prefix:
        return "::/0" if _get(props, "ethertype") == "IPv6" else "0.0.0.0/0"
    net = ipaddress.ip_network(prefix, strict=False)
    if any(net.version == env.version and net.subnet_of(env) for env in env_nets):
        return None
    return str(net)


def external_ingress_rules(args: StackValidationArgs):
    """(rule, remote, (lo, hi)) for every ingress rule open to the outside."""
    env_nets = environment_networks(args.resources, args.get_config())
    for rule in _of_type(args.resources, SEC_GROUP_RULE):
        remote = _remote(rule, env_nets)
        if remote is not None:
            yield rule, remote, _port_range(rule.props)


def _describe(rule: PolicyResource, remote: str, ports: tuple[int, int]) -> str:
    lo, hi = ports
    span = str(lo) if lo == hi else f"{lo}-{hi}"
    proto = _get(rule.props, "protocol") or "any protocol"
    return f"security group rule {rule.name} admits {proto} port {span} from {remote}"


def proxy_only_groups(resources: list[PolicyResource]) -> set[str]:
    """URNs of the security groups that sit on the proxy's port and on nothing else."""
    on_proxy: set[str] = set()
    elsewhere: set[str] = set()
    for port in _of_type(resources, PORT):
        urns = {g.urn for g in _refs(port, "securityGroupIds", SEC_GROUP)}
        (on_proxy if is_proxy_port(port) else elsewhere).update(urns)
    groups = _of_type(resources, SEC_GROUP)
    for instance in _of_type(resources, INSTANCE):
        # Instances name their groups; a group named on a non-proxy instance
        # reaches that host too.
        names = _known_strings(_get(instance.props, "securityGroups", []))
        named = {g.urn for g in groups if _get(g.props, "name") in names}
        named |= {g.urn for g in _refs(instance, "securityGroups", SEC_GROUP)}
        if not _PROXY_PORT_NAME.match(instance.name):
            elsewhere |= named
    return on_proxy - elsewhere


# --------------------------------------------------------------------------
# Policies


def only_proxy_takes_external_traffic(args: StackValidationArgs, report_violation) -> None:
    """Every rule open to the outside belongs to a group only the proxy's port has."""
    allowed = proxy_only_groups(args.resources)
    for rule, remote, ports in external_ingress_rules(args):
        groups = _refs(rule, "securityGroupId", SEC_GROUP)
        if not groups or any(g.urn not in allowed for g in groups):
            names = ", ".join(g.name for g in groups) or "a group not declared in this stack"
            report_violation(f"{_describe(rule, remote, ports)}, but it belongs to {names}, which is not "
                             f"only on the proxy's port: only the proxy takes traffic from outside.", rule.urn)


def external_ports_allowed(args: StackValidationArgs, report_violation) -> None:
    """Rules open to the outside admit only TCP on the allowed ports."""
    allowed = _parse_ports(args.get_config().get("allowedPorts", DEFAULT_ALLOWED_PORTS))
    for rule, remote, (lo, hi) in external_ingress_rules(args):
        tcp = _get(rule.props, "protocol") == "tcp"
        if not tcp or not any(a <= lo and hi <= b for a, b in allowed):
            report_violation(f"{_describe(rule, remote, (lo, hi))}; from outside only TCP on "
                             f"{_format_ports(allowed)} is allowed.", rule.urn)


def no_external_admin_ports(args: StackValidationArgs, report_violation) -> None:
    """9000, 8009 and 5432 are never reachable from outside."""
    for rule, remote, (lo, hi) in external_ingress_rules(args):
        hit = [p for p in NEVER_EXTERNAL_PORTS if lo <= p <= hi]
        if hit and _get(rule.props, "protocol") in (None, "", "any", "tcp", _UNKNOWN):
            report_violation(f"{_describe(rule, remote, (lo, hi))}, which includes {', '.join(map(str, hit))}: "
                             f"9000 and 8009 are reached through an SSH tunnel, 5432 only from inside.", rule.urn)


def rsync_closed(args: StackValidationArgs, report_violation) -> None:
    """Advisory: rsync (873) open to the outside; production closed it."""
    for rule, remote, (lo, hi) in external_ingress_rules(args):
        if lo <= RSYNC_PORT <= hi:
            report_violation(f"{_describe(rule, remote, (lo, hi))}: rsync is open (idr:rsyncEnabled); production "
                             f"closed it after it was reported as a security risk.", rule.urn)


def data_volumes_protected(args: ResourceValidationArgs, report_violation) -> None:
    """A data volume is protected, so no update or destroy deletes it."""
    if args.resource_type == VOLUME and not args.opts.protect:
        report_violation(f"volume {args.name} is not protected: declare it with protect=True.")


def floating_ip_only_on_proxy(args: StackValidationArgs, report_violation) -> None:
    """A floating IP is associated only with the proxy's port."""
    for assoc in _of_type(args.resources, FLOATING_IP_ASSOCIATE):
        ports = _refs(assoc, "portId", PORT)
        if not ports or not all(is_proxy_port(p) for p in ports):
            names = ", ".join(p.name for p in ports) or "a port not declared in this stack"
            report_violation(f"floating IP association {assoc.name} is on {names}; only the proxy's port "
                             f"(<env>-proxy) may hold a floating IP.", assoc.urn)


def volume_holders_delete_before_replace(args: StackValidationArgs, report_violation) -> None:
    """An instance a volume is attached to is deleted before its replacement is
    created: the replacement needs the same port, and the volume."""
    for attach in _of_type(args.resources, VOLUME_ATTACH):
        instances = _refs(attach, "instanceId", INSTANCE)
        if not instances:
            report_violation(f"volume attachment {attach.name} refers to no instance of this stack.", attach.urn)
        for instance in instances:
            if not instance.opts.delete_before_replace:
                report_violation(f"instance {instance.name} holds a volume ({attach.name}) but is not declared "
                                 f"with delete_before_replace=True.", instance.urn)


def data_holders_protected(args: StackValidationArgs, report_violation) -> None:
    """What a data volume hangs on is protected: its attachment, the instance
    it is attached to, that instance's ports and their network and subnet. An
    update can then neither replace nor delete them, so no data volume is
    detached from a running server without an explicit operator step."""
    seen = set()

    def need(res: PolicyResource, why: str) -> None:
        if res.urn in seen:
            return
        seen.add(res.urn)
        if not res.opts.protect:
            report_violation(f"{why} is not protected: declare it with protect=True, so that no update replaces "
                             f"or deletes it under a mounted data volume.", res.urn)

    for attach in _of_type(args.resources, VOLUME_ATTACH):
        need(attach, f"volume attachment {attach.name}")
        for instance in _refs(attach, "instanceId", INSTANCE):
            need(instance, f"instance {instance.name}, which holds a data volume ({attach.name}),")
            for port in _refs(instance, "networks", PORT):
                need(port, f"port {port.name} of data holder {instance.name}")
                for net in _refs(port, "networkId", NETWORK):
                    need(net, f"network {net.name} under data holder {instance.name}")
                for sub in _refs(port, "fixedIps", SUBNET):
                    need(sub, f"subnet {sub.name} under data holder {instance.name}")


def _format_ports(ranges: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


_PORTS_SCHEMA = {"type": "array", "items": {"anyOf": [
    {"type": "integer"}, {"type": "string", "pattern": "^[0-9]+-[0-9]+$"}]}}
_CIDRS_SCHEMA = {"type": "array", "items": {"type": "string"}}
_ENV_SCHEMA = PolicyConfigSchema(properties={"internalCidrs": _CIDRS_SCHEMA})

MANDATORY = EnforcementLevel.MANDATORY

POLICIES = [
    StackValidationPolicy(
        name="only-proxy-takes-external-traffic", description=only_proxy_takes_external_traffic.__doc__ or "",
        validate=only_proxy_takes_external_traffic, enforcement_level=MANDATORY, config_schema=_ENV_SCHEMA),
    StackValidationPolicy(
        name="external-ports-allowed", description=external_ports_allowed.__doc__ or "",
        validate=external_ports_allowed, enforcement_level=MANDATORY,
        config_schema=PolicyConfigSchema(properties={"allowedPorts": _PORTS_SCHEMA, "internalCidrs": _CIDRS_SCHEMA})),
    StackValidationPolicy(
        name="no-external-admin-ports", description=no_external_admin_ports.__doc__ or "",
        validate=no_external_admin_ports, enforcement_level=MANDATORY, config_schema=_ENV_SCHEMA),
    StackValidationPolicy(
        name="rsync-closed", description=rsync_closed.__doc__ or "",
        validate=rsync_closed, enforcement_level=EnforcementLevel.ADVISORY, config_schema=_ENV_SCHEMA),
    ResourceValidationPolicy(
        name="data-volumes-protected", description=data_volumes_protected.__doc__ or "",
        validate=data_volumes_protected, enforcement_level=MANDATORY),
    StackValidationPolicy(
        name="floating-ip-only-on-proxy", description=floating_ip_only_on_proxy.__doc__ or "",
        validate=floating_ip_only_on_proxy, enforcement_level=MANDATORY),
    StackValidationPolicy(
        name="volume-holders-delete-before-replace", description=volume_holders_delete_before_replace.__doc__ or "",
        validate=volume_holders_delete_before_replace, enforcement_level=MANDATORY),
    StackValidationPolicy(
        name="data-holders-protected", description=data_holders_protected.__doc__ or "",
        validate=data_holders_protected, enforcement_level=MANDATORY),
]
