"""The Ansible inventory (YAML) of an environment, grouped by role."""
from __future__ import annotations

from . import render_template
from ..settings import ROLES, Settings


def inventory(settings: Settings) -> str:
    groups = [(role, settings.hosts_of(role)) for role in ROLES]
    return render_template("inventory/inventory.yaml.j2", environment=settings.environment,
                           ssh_user=settings.ssh_user, bastion=settings.ssh_bastion, groups=groups)
