"""BfCache: Bio-Formats cache regeneration across the OMERO nodes.

Bumping `idr:bfcacheGeneration` starts one run. Order: coordinator key on
the proxy -> key trusted by every node and (for the ID query only) the
database; the coordinator forgets the host keys of replaced hosts ->
omero-cli-render on the nodes -> old cache moved aside on omeroreadwrite ->
run started detached on the proxy. Every step is idempotent on the host; the
run's start script refuses a finished generation, so an unrelated
`pulumi up` that re-runs it repeats nothing.

0 declares only the revoke steps: every node and the database drop the
coordinator's key from authorized_keys. Explicit steps, not a `delete` of
the trust steps: pulumi-command runs a `delete` whenever the resource goes,
which includes a replacement (the old step's delete would follow the new
step's create, and remove the key it installed) and `pulumi destroy` of a
retired stack, whose stored connections may by then lead to the bastion of
the environment that took its public IP. A revoke step runs once (new, or
on a new server: its triggers are its script and the instance ID) and does
nothing on a host that never trusted the key.

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

from . import layout
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
        ids = args.instance_ids

        def child(host, *deps):
            return pulumi.ResourceOptions(parent=self, depends_on=args.waits(host) + list(deps))

        if s.bfcache_generation <= 0:
            self.revoke = [HostFiles(f"{name}-revoke-{host.alias}", HostFilesArgs(
                s, host, [], run=render.revoke_run(s, host), instance_id=ids.get(host.name)), child(host))
                for host in render.peers(s)]
            self.register_outputs({"generation": 0})
            return

        proxy = layout.host(s, "proxy")
        # Instance triggers: a replaced host gets its step again. Not the run:
        # its state is on the proxy's root disk, and a new proxy must not start
        # a finished regeneration over; the next generation starts afresh.
        keygen = HostFiles(f"{name}-key", HostFilesArgs(
            s, proxy, render.keygen_files(s), run=render.keygen_run(), instance_id=ids.get(proxy.name),
            # Its stdout is the public key the nodes trust: print it again.
            on_reconnect="sudo bash -s"), child(proxy))
        public_key = keygen.command.stdout.apply(render.public_key_of)
        self.public_key = public_key

        def authorize(host, forced=""):
            # Not HostFiles: the key is an Output, known only after the keygen
            # step ran on the proxy.
            return remote_step(
                f"{name}-trust-{host.alias}", s, host,
                public_key.apply(lambda key: render.authorize_script(s, host, key, forced)),
                [ids[host.name]] if host.name in ids else [],
                child(host, keygen))

        # A bump re-runs the steps that wait for the deployment playbooks' software.
        deployment = [s.deployment_generation]
        ready = []
        for node in render.nodes(s):
            host = next(h for h in layout.hosts(s) if h.name == node.name)
            ready.append(authorize(host))
            ready.append(HostFiles(f"{name}-node-{host.alias}", HostFilesArgs(
                s, host, render.node_files(s, host), run=render.node_run(), triggers=deployment,
                instance_id=ids.get(host.name)),
                child(host)))

        database = layout.host(s, "database")
        ready.append(authorize(database, render.ids_command()))
        ready.append(HostFiles(f"{name}-ids", HostFilesArgs(
            s, database, render.database_files(s), run=render.database_run(), triggers=deployment,
            instance_id=ids.get(database.name)), child(database)))

        # The coordinator forgets the host key of a replaced node or database
        # (and of one that left): the step's script carries every peer's
        # instance ID, and the host compares them with the IDs it saw last.
        peers = render.peers(s)
        peer_ids = pulumi.Output.all(*[ids.get(h.name, "") for h in peers]).apply(
            lambda values: render.forget_run(s, {h.name: v for h, v in zip(peers, values)}))
        ready.append(HostFiles(f"{name}-forget", HostFilesArgs(
            s, proxy, render.forget_files(s), run=peer_ids,
            triggers=[ids[h.name] for h in peers if h.name in ids], instance_id=ids.get(proxy.name)),
            child(proxy)))

        readwrite = layout.host(s, "omeroreadwrite")
        ready.append(HostFiles(f"{name}-backup", HostFilesArgs(
            s, readwrite, render.backup_files(), run=render.backup_run(s),
            instance_id=ids.get(readwrite.name)), child(readwrite)))

        # The run waits for every step above, and through them for every node.
        self.run = HostFiles(f"{name}-run", HostFilesArgs(
            s, proxy, render.coordinator_files(s), run=render.start_run(s), triggers=deployment), child(proxy, *ready))
        self.register_outputs({"generation": s.bfcache_generation, "publicKey": self.public_key})
