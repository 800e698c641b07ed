"""Deployment: IDR's deployment playbooks as a step of `pulumi up`.

A pulumi-command local.Command on the operator's (or CI's) machine runs
ansible-playbook against the environment's inventory, after every mount and
/etc/hosts step and before every step that needs PostgreSQL or OMERO. Only
wiring: the script and its triggers come from components/render/deployment.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi_command as command

from . import layout
from .hostfiles import digest
from .render import deployment as render
from .render.inventory import inventory
from .settings import Settings
from . import PROJECT_DIR

TYPE = "idr:deployment:Deployment"
# A change of what only reaches the hosts (bastion address, key, host key,
# the project's directory on this machine) stores the new value and re-runs
# nothing. The playbooks run again only when a trigger changes.
NOTHING = "true"


@dataclass
class DeploymentArgs:
    settings: Settings
    depends_on: Sequence[Any] = field(default_factory=list)              # mounts and /etc/hosts
    instance_ids: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)


class Deployment(pulumi.ComponentResource):
    def __init__(self, name: str, args: DeploymentArgs, opts: Optional[pulumi.ResourceOptions] = None):
        s = args.settings
        super().__init__(TYPE, name, {"enabled": s.deployment_enabled}, opts)
        self.command: Optional[command.local.Command] = None
        if not s.deployment_enabled:
            self.register_outputs({"enabled": False})
            return
        script = render.run_script(s, name)
        secret_vars = pulumi.Output.from_input(s.deployment_secret_vars)
        # New secret values deploy every host again; only a digest, kept secret.
        secret_digest: pulumi.Output[str] = pulumi.Output.secret(secret_vars.apply(digest))
        deployed = [digest(script), *render.what_is_deployed(s)]
        environment = {
            "IDR_INVENTORY": inventory(s),
            "IDR_SSH_BASTION": s.ssh_bastion,
            "IDR_SSH_PRIVATE_KEY": s.ssh_private_key,
            "IDR_SSH_BASTION_HOST_KEY": s.ssh_bastion_host_key,
            "IDR_DEPLOYMENT_SECRET_VARS": secret_vars,
            "IDR_DEPLOYMENT_PROGRAM_VARS": render.program_vars(s),
            # What a host records once deployed: the step skips hosts that have it.
            "IDR_DEPLOYMENT_DIGEST": secret_digest.apply(lambda d: digest("\n".join([*deployed, d]))),
        }
        triggers: list[Any] = [digest(script), *render.triggers(s), secret_digest]
        # A replaced server (not the proxy: no playbook runs there) gets the playbooks again.
        triggers += [args.instance_ids[h.name] for h in layout.hosts(s)
                     if h.role != "proxy" and h.name in args.instance_ids]
        self.command = command.local.Command(
            name,
            create=script,
            update=NOTHING,
            interpreter=["/bin/bash", "-c"],
            dir=str(PROJECT_DIR),
            environment=environment,
            triggers=triggers,
            # Ansible's output reaches the Pulumi log as it runs; the previous
            # output is not fed back in (it can be large).
            logging=command.local.Logging.STDOUT_AND_STDERR,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on),
                                        additional_secret_outputs=["stdout", "stderr"]),
        )
        self.register_outputs({"enabled": True, "playbooks": render.playbooks(s)})
