"""BfCache: Bio-Formats cache regeneration across the OMERO nodes.

Bumping `idr:bfcacheGeneration` starts one run; 0 declares nothing. Order:
coordinator key on the proxy -> key trusted by every node and (for the ID
query only) the database -> omero-cli-render on the nodes -> old cache moved
aside on omeroreadwrite -> run started detached on the proxy. Every step is
idempotent on the host; the run's start script refuses a finished generation,
so an unrelated `pulumi up` that re-runs it repeats nothing.

The node, database and run steps need software from IDR's deployment
playbooks (omero, psql). With `idr:deploymentEnabled` a missing one fails
the step; without, the step prints one "waiting for ..." line and does
nothing, and the run does not start. They carry `idr:deploymentGeneration`
as a trigger: bumping it once the software is there runs them again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from .hostfiles import HostFiles, HostFilesArgs, HostStepsArgs, remote_step
from .render import bfcache as render

TYPE = "idr:bfcache:BfCache"


@dataclass
class BfCacheArgs(HostStepsArgs):
    pass


class BfCache(pulumi.ComponentResource):
    def __init__(self, name: str, args: BfCacheArgs, opts: Optional[pulumi.ResourceOptions] = None):
        s = args.settings
        super().__init__(TYPE, name, {"generation": s.bfcache_generation}, opts)
        self.public_key: Optional[pulumi.Output] = None
        if s.bfcache_generation <= 0:
            self.register_outputs({"generation": 0})
            return

        def child(*deps):
            return pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on) + list(deps))

        proxy = s.host("proxy")
        ids = args.instance_ids
        # Instance triggers: a replaced host gets its step again. Not the run:
        # its state is on the proxy's root disk, and a new proxy must not start
        # a finished regeneration over; the next generation starts afresh.
        keygen = HostFiles(f"{name}-key", HostFilesArgs(
            s, proxy, render.keygen_files(s), run=render.keygen_run(), instance_id=ids.get(proxy.name),
            # Its stdout is the public key the nodes trust: print it again.
            on_reconnect="sudo bash -s"), child())
        self.public_key = keygen.command.stdout.apply(render.public_key_of)

        def authorize(host, forced=""):
            # Not HostFiles: the key is an Output, known only after the keygen
            # step ran on the proxy.
            return remote_step(
                f"{name}-trust-{host.alias}", s, host,
                self.public_key.apply(lambda key: render.authorize_script(s, host, key, forced)),
                [ids[host.name]] if host.name in ids else [],
                pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on) + [keygen]))

        # A bump re-runs the steps that wait for the deployment playbooks' software.
        deployment = [s.deployment.generation]
        ready = []
        for node in render.nodes(s):
            host = next(h for h in s.hosts if h.name == node.name)
            ready.append(authorize(host))
            ready.append(HostFiles(f"{name}-node-{host.alias}", HostFilesArgs(
                s, host, render.node_files(s, host), run=render.node_run(), triggers=deployment,
                instance_id=ids.get(host.name)),
                child()))

        database = s.host("database")
        ready.append(authorize(database, render.ids_command()))
        ready.append(HostFiles(f"{name}-ids", HostFilesArgs(
            s, database, render.database_files(s), run=render.database_run(), triggers=deployment,
            instance_id=ids.get(database.name)), child()))

        ready.append(HostFiles(f"{name}-backup", HostFilesArgs(
            s, s.host("omeroreadwrite"), render.backup_files(), run=render.backup_run(s),
            instance_id=ids.get(s.host("omeroreadwrite").name)), child()))

        self.run = HostFiles(f"{name}-run", HostFilesArgs(
            s, proxy, render.coordinator_files(s), run=render.start_run(s), triggers=deployment), child(*ready))
        self.register_outputs({"generation": s.bfcache_generation, "publicKey": self.public_key})
