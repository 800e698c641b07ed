"""The Ansible inventory (YAML) of an environment, in the groups IDR's
deployment playbooks target (public IDR/deployment repository):

- `<env>-hosts` (every host) and `<env>-<role>-hosts`, the plays' host patterns;
- `<role>-hosts` without the prefix, the names its `group_vars` are keyed by;
- `omero-hosts` (read-write and every read-only), `bastion-hosts` (the proxy)
  and `docker-hosts` (the dockermanager, which its idr-docker.yml targets);
- `<env>-management-hosts`, the monitoring host IDR's management*.yml
  target (with idr:monitoringEnabled);
- `<env>-<group>` from idr:deploymentExtraGroups (IDR's storage groups
  `<env>-ebi-nfs`, `<env>-uod-nfs`).

Instances carry the same list in their metadata key `groups`, which IDR's
dynamic inventory (inventories/openstack-idr.py) turns into groups, so both
inventories agree.
"""
from __future__ import annotations

from .. import layout
from . import render_template
from ..layout import Host
from ..settings import Settings

# Groups (without prefix) a role's hosts belong to, besides `<role>-hosts`.
EXTRA_GROUPS = {
    "proxy": ("bastion",),
    "omeroreadwrite": ("omero",),
    "omeroreadonly": ("omero",),
    "database": (),
    "dockermanager": ("docker",),
    "management": (),   # IDR's <env>-management-hosts (idr:monitoringEnabled)
}


def host_groups(settings: Settings, host: Host) -> list[str]:
    """Every group `host` is in: prefixed ones first, then the group_vars keys."""
    env = settings.environment
    roles = [host.role, *EXTRA_GROUPS[host.role]]
    extra = [f"{env}-{group}" for group, role in settings.deployment_extra_groups if role == host.role]
    return [f"{env}-hosts", *(f"{env}-{r}-hosts" for r in roles), *(f"{r}-hosts" for r in roles), *extra]


def groups(settings: Settings) -> dict[str, list[Host]]:
    """Group name -> its hosts, in a stable order (first seen)."""
    out: dict[str, list[Host]] = {}
    for host in layout.hosts(settings):
        for group in host_groups(settings, host):
            out.setdefault(group, []).append(host)
    return out


def inventory(settings: Settings) -> str:
    return render_template("inventory/inventory.yaml.j2", environment=settings.environment,
                           ssh_user=settings.ssh_user, bastion=settings.ssh_bastion,
                           hosts=layout.hosts(settings), groups=groups(settings))
