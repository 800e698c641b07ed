"""Network, subnet, router and security groups of one environment."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_openstack as openstack

from .layout import PROXY_OMERO_PORT_RANGE, PROXY_PUBLIC_TCP_PORTS, RSYNC_PORT, SSH_PORT
from .settings import ConfigError, Settings

ANYWHERE = "0.0.0.0/0"


@dataclass(frozen=True)
class Rule:
    """One ingress rule; `remote` is a CIDR, or None for 'this group'."""

    protocol: Optional[str]
    port_min: Optional[int]
    port_max: Optional[int]
    remote: Optional[str]
    why: str


def proxy_external_rules(settings: Settings) -> list[Rule]:
    """What the outside world may reach, all on the proxy (the page's list).
    9000 and 8009 are never here: operators reach them through SSH tunnels."""
    rules = [Rule("tcp", SSH_PORT, SSH_PORT, cidr, "ssh bastion") for cidr in settings.ssh_allowed_cidrs]
    rules += [Rule("tcp", p, p, ANYWHERE, f"public {p}") for p in PROXY_PUBLIC_TCP_PORTS]
    lo, hi = PROXY_OMERO_PORT_RANGE
    rules.append(Rule("tcp", lo, hi, ANYWHERE, "omero per-backend ports"))
    if settings.rsync_enabled:
        rules.append(Rule("tcp", RSYNC_PORT, RSYNC_PORT, ANYWHERE, "rsync (idr:rsyncEnabled)"))
    return rules


def internal_rules() -> list[Rule]:
    """Hosts of one environment reach each other on every port."""
    return [Rule(None, None, None, None, "same environment")]


@dataclass
class NetworkArgs:
    settings: Settings


class Network(pulumi.ComponentResource):
    """The environment's network (new, or an existing one named in config),
    and its two security groups: `internal` on every port, `proxy-external`
    on the proxy's port only."""

    def __init__(self, name: str, args: NetworkArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("idr:network:Network", name, None, opts)
        s = args.settings
        env = s.environment
        child = pulumi.ResourceOptions(parent=self)

        if s.existing_network:
            net = openstack.networking.get_network(name=s.existing_network)
            existing = openstack.networking.get_subnet(name=s.existing_subnet, network_id=net.id)
            if existing.cidr != s.subnet_cidr:
                raise ConfigError("subnetCidr", s.subnet_cidr,
                                  f"the CIDR of existingSubnet {s.existing_subnet!r}, which is {existing.cidr}")
            self.network_id = pulumi.Output.from_input(net.id)
            self.subnet_id = pulumi.Output.from_input(existing.id)
        else:
            cidr = ipaddress.IPv4Network(s.subnet_cidr)
            # Under the data holders' ports: never replaced or deleted by an
            # update (the engine refuses; retiring unprotects them on purpose).
            kept = pulumi.ResourceOptions(parent=self, protect=True)
            network = openstack.networking.Network(f"{env}-network", name=f"{env}-network",
                                                   admin_state_up=True, opts=kept)
            subnet = openstack.networking.Subnet(
                f"{env}-subnet", name=f"{env}-subnet", network_id=network.id, cidr=s.subnet_cidr,
                ip_version=4, dns_nameservers=list(s.dns_nameservers) or None,
                # DHCP and router ports draw from .2-.9 so they never take a
                # host's fixed address (.10 upwards).
                allocation_pools=[openstack.networking.SubnetAllocationPoolArgs(
                    start=str(cidr.network_address + 2), end=str(cidr.network_address + 9))],
                opts=kept)
            external = openstack.networking.get_network(name=s.external_network, external=True)
            router = openstack.networking.Router(f"{env}-router", name=f"{env}-router",
                                                 external_network_id=external.id, opts=child)
            openstack.networking.RouterInterface(f"{env}-router-interface", router_id=router.id,
                                                 subnet_id=subnet.id, opts=child)
            self.network_id = network.id
            self.subnet_id = subnet.id

        self.internal_group = self._group(f"{env}-internal", "Every host: all traffic from hosts of this environment.",
                                          internal_rules())
        self.proxy_group = self._group(f"{env}-proxy-external", "Proxy only: the ports the public may reach.",
                                       proxy_external_rules(s))
        self.register_outputs({"networkId": self.network_id, "subnetId": self.subnet_id})

    def _group(self, name: str, description: str, rules: list[Rule]) -> openstack.networking.SecGroup:
        group = openstack.networking.SecGroup(name, name=name, description=description,
                                              opts=pulumi.ResourceOptions(parent=self))
        for i, rule in enumerate(rules):
            openstack.networking.SecGroupRule(
                rule_name(name, rule), security_group_id=group.id, direction="ingress", ethertype="IPv4",
                protocol=rule.protocol, port_range_min=rule.port_min, port_range_max=rule.port_max,
                remote_ip_prefix=rule.remote, remote_group_id=group.id if rule.remote is None else None,
                description=rule.why,
                # Stacks deployed before rules were named by content know
                # them by list position: carry each over without a replace.
                # Exact while the rule list is the one last deployed; change
                # sshAllowedCidrs or rsyncEnabled only after one `pulumi up`
                # with this code.
                opts=pulumi.ResourceOptions(parent=group, aliases=[pulumi.Alias(name=f"{name}-{i}")]))
        return group


def rule_name(group: str, rule: Rule) -> str:
    """A rule's logical name says what it allows, so adding or removing one
    CIDR or port adds or removes exactly that rule and never renames another
    (rules are ForceNew in every property; Neutron refuses a duplicate)."""
    proto = rule.protocol or "any"
    ports = "" if rule.port_min is None else (
        f"-{rule.port_min}" if rule.port_min == rule.port_max else f"-{rule.port_min}-{rule.port_max}")
    remote = "self" if rule.remote is None else rule.remote.replace("/", "_")
    return f"{group}-{proto}{ports}-from-{remote}"
