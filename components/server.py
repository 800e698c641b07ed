"""One host: port with a fixed address, instance on that port, and its data
volume attached and mounted."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import pulumi
import pulumi_openstack as openstack

from .hostfiles import HostFiles, HostFilesArgs
from .network import Network
from .render.host import cloud_config, mount_command, mount_script
from .render.inventory import host_groups
from .layout import Host
from .settings import Settings
from .storage import DataVolume


@dataclass
class ServerArgs:
    settings: Settings
    host: Host
    network: Network
    volume: Optional[DataVolume] = None
    # What must exist before remote commands can reach the host (the proxy,
    # the bastion of every other host).
    reachable_after: Sequence[pulumi.Resource] = field(default_factory=list)
    # The bastion address for the host's first step (floatingip.Bastion).
    bastion: Optional[pulumi.Input[str]] = None


class Server(pulumi.ComponentResource):
    def __init__(self, name: str, args: ServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("idr:server:Server", name, None, opts)
        s, host, net = args.settings, args.host, args.network
        groups = [net.internal_group.id] + ([net.proxy_group.id] if host.role == "proxy" else [])
        # A host holding a data volume is neither replaced nor deleted by an
        # update: its instance, port and attachment are protected (the engine
        # refuses a replacement of a protected resource, and of anything that
        # would drag it along). Replacing one is an operator step:
        # docs/operations/replace-a-server.md.
        holds_data = host.volume is not None
        self.port = openstack.networking.Port(
            host.name, name=host.name, network_id=net.network_id, admin_state_up=True,
            fixed_ips=[openstack.networking.PortFixedIpArgs(subnet_id=net.subnet_id, ip_address=host.fixed_ip)],
            security_group_ids=groups,
            tags=[f"idr-environment={s.environment}", f"idr-role={host.role}"],
            opts=pulumi.ResourceOptions(parent=self, protect=holds_data))

        # No server is replaced by a change of first-boot data (cloud-init
        # reads it once) or of image: `pulumi up --replace <urn>` does that on
        # purpose (docs/operations/replace-a-server.md). Data holders above all; the others serve the site.
        self.instance = openstack.compute.Instance(
            host.name, name=host.name, flavor_name=host.flavor, image_name=host.image,
            user_data=cloud_config(s, host),
            availability_zone=s.availability_zone or None,
            networks=[openstack.compute.InstanceNetworkArgs(port=self.port.id)],
            # `groups`: what IDR's dynamic inventory builds groups from (an
            # in-place update on a running server: metadata is not ForceNew).
            # `ssh_proxy_host`: how it finds the bastion (`proxy`, the one with
            # the floating IP) for the hosts that need it (`required`).
            metadata={"idr-environment": s.environment, "idr-role": host.role,
                      "groups": ",".join(host_groups(s, host)),
                      "ssh_proxy_host": "proxy" if host.role == "proxy" else "required"},
            opts=pulumi.ResourceOptions(
                parent=self, protect=holds_data,
                # The port outlives the instance; a new instance cannot take a
                # port the old one still uses.
                delete_before_replace=True,
                ignore_changes=["userData", "imageName", "imageId"]))

        self.ready: list[pulumi.Resource] = [self.instance, *args.reachable_after]
        if args.volume is not None:
            assert host.volume is not None, f"{host.name} holds no data volume"
            mountpoint = host.volume.mount
            attach = openstack.compute.VolumeAttach(
                f"{host.name}-data", instance_id=self.instance.id, volume_id=args.volume.volume.id,
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, protect=True))
            # Again on a new server (the volume comes back attached but not
            # mounted) and on a larger volume (the filesystem is grown).
            self.mount = HostFiles(f"{host.name}-mount", HostFilesArgs(
                settings=s, host=host, files=[mount_script()],
                run=args.volume.volume.id.apply(lambda vid: mount_command(vid, mountpoint)),
                triggers=[args.volume.volume.size], instance_id=self.instance.id,
                depends_on=[attach, *self.ready], bastion=args.bastion), opts=pulumi.ResourceOptions(parent=self))
            self.ready = [self.mount]
        self.register_outputs({"fixedIp": host.fixed_ip, "instanceId": self.instance.id})
