"""HostFiles: put rendered files on one host and run one follow-up step.

Every file a host receives goes through this component, so the offline render
(components.render) finds them all in one place: the component's registered
properties `host` and `files`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import pulumi
import pulumi_command as command

from .connection import connection_for
from .render import HostFile
from .render.hostfiles import install_script
from .settings import Host, Settings

TYPE = "idr:host:HostFiles"


@dataclass
class HostFilesArgs:
    settings: Settings
    host: Host
    files: Sequence[HostFile]
    run: pulumi.Input[str] = ""      # shell, as root, after the files are in place
    triggers: Sequence[Any] = field(default_factory=list)  # extra values whose change re-runs it
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class HostFiles(pulumi.ComponentResource):
    def __init__(self, name: str, args: HostFilesArgs, opts: Optional[pulumi.ResourceOptions] = None):
        files = [{"path": f.path, "mode": f.mode, "content": f.content} for f in args.files]
        super().__init__(TYPE, name, {"host": args.host.name, "files": files, "run": args.run}, opts)
        script = pulumi.Output.from_input(args.run).apply(
            lambda run: install_script(args.host.name, args.files, run))
        self.command = command.remote.Command(
            name,
            connection=connection_for(args.settings, args.host),
            create="sudo bash -s",
            stdin=script,
            triggers=list(args.triggers) or None,
            opts=pulumi.ResourceOptions(
                parent=self,
                # A component's own depends_on does not hold back its children
                # in every Pulumi version: pass it to the command explicitly.
                depends_on=[*args.depends_on, *_as_list(opts.depends_on if opts else None)],
                # A new bastion address (floating-IP swap) or key must not
                # re-run provisioning; the script's hostname guard refuses a
                # stored connection that now reaches another machine.
                ignore_changes=["connection"],
            ),
        )
        self.script = script
        self.register_outputs({"stdout": self.command.stdout})
