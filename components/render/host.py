"""Files every host gets: first-boot cloud-config, the /etc/hosts block and
the data-volume mount script."""
from __future__ import annotations

from .. import layout
from . import HostFile, render_template
from ..layout import Host
from ..settings import Settings

MOUNT_SCRIPT = "/usr/local/sbin/idr-mount-volume"
HOSTS_SCRIPT = "/usr/local/sbin/idr-hosts-block"
HOSTS_BLOCK = "/etc/idr/hosts.block"
FSTYPE = "xfs"  # Rocky's default; grows online with xfs_growfs


def cloud_config(settings: Settings, host: Host) -> str:
    return render_template("cloudinit/user-data.yaml.j2", host=host, ssh_public_key=settings.ssh_public_key)


def hosts_block(settings: Settings) -> str:
    """`<ip> <env>-<role>[-n] <role>[-n]` for every host of the environment."""
    return render_template("hosts/hosts.block.j2", hosts=layout.hosts(settings))


def hosts_files(settings: Settings) -> tuple[list[HostFile], str]:
    """Files and follow-up command that keep /etc/hosts' managed block."""
    env = settings.environment
    script = render_template("hosts/idr-hosts-block.sh.j2",
                             begin_marker=f"# BEGIN IDR {env} hosts (managed by pulumi)",
                             end_marker=f"# END IDR {env} hosts")
    files = [HostFile(HOSTS_SCRIPT, script, "0755"), HostFile(HOSTS_BLOCK, hosts_block(settings))]
    return files, f"{HOSTS_SCRIPT} {HOSTS_BLOCK} /etc/hosts"


def mount_script() -> HostFile:
    return HostFile(MOUNT_SCRIPT, render_template("volumes/idr-mount-volume.sh.j2", fstype=FSTYPE), "0755")


def mount_command(volume_id: str, mountpoint: str) -> str:
    return f"{MOUNT_SCRIPT} {volume_id} {mountpoint}"
