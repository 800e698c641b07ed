"""IdrEnvironment: one whole IDR environment, composed of the other components."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from . import floatingip, layout
from .hostfiles import HostFiles, HostFilesArgs
from .bfcache import BfCache, BfCacheArgs
from .database import Database, DatabaseArgs
from .deployment import Deployment, DeploymentArgs
from .identity import Deployed
from .monitoring import Monitoring, MonitoringArgs
from .network import Network, NetworkArgs
from .proxy import Proxy, ProxyArgs
from .render.host import hosts_files
from .render.inventory import inventory
from .server import Server, ServerArgs
from .settings import Settings
from .storage import DataVolume, DataVolumeArgs


@dataclass
class IdrEnvironmentArgs:
    settings: Settings
    deployed: Deployed  # what the stack's last update deployed (components/identity.py)


class IdrEnvironment(pulumi.ComponentResource):
    def __init__(self, name: str, args: IdrEnvironmentArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("idr:environment:IdrEnvironment", name, None, opts)
        s, hosts = args.settings, layout.hosts(args.settings)
        # Before anything is declared: never take an IP another environment holds.
        if s.floating_ip:
            floatingip.check_floating_ip(s, args.deployed.environment)
        child = pulumi.ResourceOptions(parent=self)

        network = Network(f"{s.environment}-network", NetworkArgs(s), child)

        # Volumes first and independent of servers: clones are slow and start at once.
        cloning = layout.clones_to_create(s, args.deployed.volume_sizes)
        clone_source = pulumi.StackReference(s.clone_from_stack, opts=child) if cloning else None
        volumes = {h.role: DataVolume(f"{h.name}-data",
                                      DataVolumeArgs(s, h, clone_source if h.role in cloning else None), child)
                   for h in hosts if h.volume}

        # Remote commands reach every host through the proxy at the bastion
        # address. When that is the floating IP, a host's first steps wait for
        # the association by value, not by dependency: nothing may depend on
        # the association, or the swap's `pulumi up --target <association>`
        # could never delete it (components/floatingip.py, Bastion).
        bastion = floatingip.Bastion(s)
        proxy_host = layout.host(s, "proxy")
        proxy = Server(proxy_host.name, ServerArgs(s, proxy_host, network, volumes.get("proxy"),
                                                   bastion=bastion.address), child)
        self.floating_ip = floatingip.associate(s, proxy.port, self)
        bastion.bound_by(self.floating_ip)
        self.servers = {proxy_host.name: proxy}
        for h in hosts:
            if h.role != "proxy":
                self.servers[h.name] = Server(
                    h.name, ServerArgs(s, h, network, volumes.get(h.role), [proxy.instance], bastion.address), child)

        instance_ids = {name: srv.instance.id for name, srv in self.servers.items()}
        files, run = hosts_files(s)
        self.hosts_files = [
            HostFiles(f"{h.name}-etc-hosts",
                      HostFilesArgs(settings=s, host=h, files=files, run=run, bastion=bastion.address,
                                    depends_on=self.servers[h.name].ready, instance_id=instance_ids[h.name]), child)
            for h in hosts]
        # What configures a host's services waits for its mount and /etc/hosts.
        ready = {h.name: [*self.servers[h.name].ready, f] for h, f in zip(hosts, self.hosts_files)}
        self.base = [r for rs in ready.values() for r in rs]

        self.proxy = Proxy(f"{s.environment}-proxy-nginx", ProxyArgs(s, [], instance_ids, ready), child)
        # IDR's playbooks install PostgreSQL and OMERO on every host but the
        # proxy, so they wait for all of them; what needs that software waits
        # for the playbooks (and, without them, for its own hosts).
        # Monitoring's files on the management host go before the playbooks
        # start its containers (their data directories are made there).
        self.monitoring = Monitoring(f"{s.environment}-monitoring", MonitoringArgs(s, [], instance_ids, ready), child)
        before_playbooks = [self.monitoring.management] if self.monitoring.steps else []
        self.deployment = Deployment(f"{s.environment}-deployment",
                                     DeploymentArgs(s, [*self.base, *before_playbooks], instance_ids), child)
        deployed = [self.deployment.command] if self.deployment.command else []
        self.database = Database(f"{s.environment}-database-settings",
                                 DatabaseArgs(s, deployed, instance_ids, ready), child)
        self.bfcache = BfCache(f"{s.environment}-bfcache", BfCacheArgs(s, deployed, instance_ids, ready), child)

        self.outputs = {
            "environment": s.environment,
            "hosts": [{"name": h.name, "role": h.role, "alias": h.alias, "fixedIp": h.fixed_ip} for h in hosts],
            "dataVolumes": {role: {"id": v.volume.id, "name": v.volume.name, "size": v.volume.size,
                                   "mount": layout.volume(s, role).mount}
                            for role, v in volumes.items()},
            "floatingIp": s.floating_ip,
            "floatingIpUrn": self.floating_ip.urn if self.floating_ip else "",
            "sshBastion": s.ssh_bastion,
            "inventory": inventory(s),
            # True until a real certificate is in config (idr:tlsCertificateChain).
            "tlsSelfSigned": self.proxy.tls_self_signed,
        }
        self.register_outputs(self.outputs)
