"""The environment's layout: which hosts exist, their names, fixed addresses
and data volumes, and the proxy's public ports. Pure: derived from valid
settings (components/settings.py) and nothing else, so it is never stored in
them: whatever needs a host computes it from the settings it is given.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Collection, Optional

if TYPE_CHECKING:
    from .settings import Settings

# Roles as the operators' page names them; order is the order hosts are listed.
ROLES = ("proxy", "omeroreadwrite", "database", "omeroreadonly", "dockermanager", "management")
# Hosts of a role that only exists when its key is on: the monitoring host
# (IDR's <env>-management) with idr:monitoringEnabled.
OPTIONAL_ROLES = {"management": "monitoring_enabled"}
OMERO_ROLES = ("omeroreadwrite", "omeroreadonly")
# Data volumes: which host holds which, and where it is mounted.
DATA_VOLUME_MOUNTS = {"omeroreadwrite": "/data", "database": "/var/lib/pgsql", "proxy": "/var/cache/nginx"}
VOLUME_KEYS = ("size", "from_volume", "from_snapshot", "source_size")  # <role>_volume_<key> settings
# Fixed addresses inside the environment's subnet, so every rendered file
# (nginx upstreams, /etc/hosts) is a pure function of config and a host keeps
# its address for life. omeroreadonly-n gets READONLY_BASE + n.
FIXED_HOST_OFFSETS = {"proxy": 10, "omeroreadwrite": 11, "database": 12, "dockermanager": 13, "management": 14}
# The monitoring host's data volume (Prometheus, Alertmanager and Grafana
# data, as IDR's /data): its own, never cloned from another environment (IDR:
# "do not copy when upgrading"); a release starts empty or from its snapshot.
MANAGEMENT_MOUNT = "/data"
READONLY_BASE = 100
# External ports of the proxy (from the page and production).
PROXY_PUBLIC_TCP_PORTS = (80, 443, 4063, 4064)
PROXY_OMERO_PORT_RANGE = (14060, 14079)
RSYNC_PORT = 873
SSH_PORT = 22
# Locations the proxy's nginx has of its own on its public ports
# (render/nginx.py): a configured redirect may not take one, since nginx
# refuses a location given twice. JupyterHub's only with idr:jupyterEnabled.
# Where the proxy answers its environment's name, on both public ports (the
# blackbox probes of idr:probeAddresses: which environment holds an address).
ENVIRONMENT_PATH = "/idr-environment"
PROXY_OWN_LOCATIONS = ("= /about", "^~ /about/", "^~ /connection/", "= /omero-ws",
                       "^~ /.well-known/acme-challenge/", "= /maintenance.html", f"= {ENVIRONMENT_PATH}")
JUPYTER_LOCATIONS = ("= /jupyter", "^~ /jupyter/")
# Grafana and Prometheus's federation, only with idr:monitoringEnabled.
MONITORING_LOCATIONS = ("= /grafana", "^~ /grafana/", "= /grafana/api/ds/query", "= /prometheus/federate")


@dataclass(frozen=True)
class VolumeSpec:
    role: str
    mount: str
    size: int
    from_volume: str = ""
    from_snapshot: str = ""
    source_size: int = 0
    from_stack: bool = False  # source comes from cloneFromStack's outputs


@dataclass(frozen=True)
class Host:
    name: str        # <env>-<role>[-n]
    role: str
    alias: str       # <role>[-n]
    fixed_ip: str
    flavor: str
    image: str
    index: int = 0   # n for omeroreadonly, else 0
    volume: Optional[VolumeSpec] = None


def hosts(s: Settings) -> tuple[Host, ...]:
    """Every host of the environment, in ROLES order (omeroreadonly-1..n in turn)."""
    subnet, out = IPv4Network(s.subnet_cidr), []
    for role in ROLES:
        if role in OPTIONAL_ROLES and not getattr(s, OPTIONAL_ROLES[role]):
            continue
        image, flavor = s.image_overrides.get(role, s.image), getattr(s, f"{role}_flavor")
        if role == "omeroreadonly":
            out += [Host(f"{s.environment}-{role}-{n}", role, f"{role}-{n}",
                         str(subnet.network_address + READONLY_BASE + n),
                         flavor, image, n) for n in range(1, s.omeroreadonly_count + 1)]
            continue
        volume = None
        if role in DATA_VOLUME_MOUNTS:
            size, from_volume, from_snapshot, source = (getattr(s, f"{role}_volume_{k}") for k in VOLUME_KEYS)
            volume = VolumeSpec(role, DATA_VOLUME_MOUNTS[role], size, from_volume, from_snapshot, source,
                                from_stack=bool(s.clone_from_stack) and not (from_volume or from_snapshot))
        elif role == "management":
            volume = VolumeSpec(role, MANAGEMENT_MOUNT, s.management_volume_size,
                                from_snapshot=s.management_volume_from_snapshot)
        out.append(Host(f"{s.environment}-{role}", role, role, str(subnet.network_address + FIXED_HOST_OFFSETS[role]),
                        flavor, image, volume=volume))
    return tuple(out)


def hosts_of(s: Settings, role: str) -> tuple[Host, ...]:
    return tuple(h for h in hosts(s) if h.role == role)


def host(s: Settings, role: str) -> Host:
    """The one host of `role` (every role but omeroreadonly has one)."""
    (only,) = hosts_of(s, role)
    return only


def volumes(s: Settings) -> tuple[VolumeSpec, ...]:
    return tuple(h.volume for h in hosts(s) if h.volume)


def volume(s: Settings, role: str) -> VolumeSpec:
    """The data volume of `role` (one of DATA_VOLUME_MOUNTS)."""
    (only,) = (v for v in volumes(s) if v.role == role)
    return only


def clones_to_create(s: Settings, existing: Collection[str]) -> frozenset[str]:
    """Roles whose data volume is still to be cloned from cloneFromStack's
    output: those config clones that way, less the `existing` ones (roles
    whose volume the last update created). A volume that exists is no clone
    any more: its source is neither read nor checked again, so a source that
    grew, shrank or vanished never fails an update."""
    return frozenset(v.role for v in volumes(s) if v.from_stack and v.role not in existing)
