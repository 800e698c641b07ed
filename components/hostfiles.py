"""HostFiles: put rendered files on one host and run one follow-up step.

Every file a host receives goes through this component, so the offline render
(components.render) finds them all in one place: the component's registered
properties `host` and `files`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi_command as command

from .connection import connection_for
from .render import HostFile
from .render.hostfiles import install_script
from .layout import Host
from .settings import Settings

TYPE = "idr:host:HostFiles"

# What a command runs when only its connection changed (a new bastion address
# after a floating-IP swap, a new key or host key): nothing but reading its
# input, so Pulumi stores the new connection without re-running provisioning.
# A step re-runs only when its script or a trigger changes: triggers replace
# the command, and replacing runs `create`.
REFRESH_CONNECTION = "cat > /dev/null"


def digest(text: str) -> str:
    """SHA-256 of a script: a step's trigger, so a changed text runs it again."""
    return hashlib.sha256(text.encode()).hexdigest()


def remote_step(name: str, settings: Settings, host: Host, stdin: pulumi.Input[str],
                triggers: Sequence[Any], opts: pulumi.ResourceOptions,
                on_reconnect: str = REFRESH_CONNECTION,
                bastion: Optional[pulumi.Input[str]] = None) -> command.remote.Command:
    """One script run as root on `host`: again when the script or a trigger
    changes, never because the way to reach the host changed."""
    stdin = pulumi.Output.from_input(stdin)
    return command.remote.Command(
        name,
        connection=connection_for(settings, host, bastion),
        create="sudo bash -s",
        update=on_reconnect,
        stdin=stdin,
        triggers=[stdin.apply(digest), *triggers],
        opts=opts,
    )


@dataclass
class HostFilesArgs:
    settings: Settings
    host: Host
    files: Sequence[HostFile]
    run: pulumi.Input[str] = ""      # shell, as root, after the files are in place
    triggers: Sequence[Any] = field(default_factory=list)  # extra values whose change re-runs it
    depends_on: Sequence[pulumi.Resource] = field(default_factory=list)
    # The host's instance ID: a replaced server gets this step again. Left out
    # for steps that must not repeat on a new server (a cache purge, a run).
    instance_id: Optional[pulumi.Input[str]] = None
    # Run on a connection-only change. A step whose stdout others read must
    # print it again ("sudo bash -s": the step itself, which must then be
    # harmless to repeat): an update replaces the stored stdout.
    on_reconnect: str = REFRESH_CONNECTION
    # The bastion address as a value that resolves once it can be dialled
    # (floatingip.Bastion): given to a host's first steps, which the others wait for.
    bastion: Optional[pulumi.Input[str]] = None


@dataclass
class HostStepsArgs:
    """Arguments of a component made of host steps (Proxy, Database, BfCache)."""
    settings: Settings
    depends_on: Sequence[Any] = field(default_factory=list)     # what every step waits for (the playbooks)
    instance_ids: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)  # host name -> instance ID
    # host name -> what that host is ready after (its mount, its /etc/hosts)
    ready: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    def waits(self, *hosts: Host) -> list:
        """What a step on `hosts` waits for: its own hosts ready, and depends_on.
        Never every host's: n steps each waiting for n hosts make n^2
        dependencies in the state and in every update's plan."""
        return [*self.depends_on, *(r for h in hosts for r in self.ready.get(h.name, ()))]


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
        triggers = [*args.triggers] + ([args.instance_id] if args.instance_id is not None else [])
        self.command = remote_step(
            name, args.settings, args.host, script, triggers, on_reconnect=args.on_reconnect, bastion=args.bastion,
            opts=pulumi.ResourceOptions(
                parent=self,
                # A component's own depends_on does not hold back its children
                # in every Pulumi version: pass it to the command explicitly.
                depends_on=[*args.depends_on, *_as_list(opts.depends_on if opts else None)],
            ),
        )
        self.script = script
        self.register_outputs({"stdout": self.command.stdout})
