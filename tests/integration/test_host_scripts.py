"""The files every host receives, run for real: the mount script on loop
devices, the /etc/hosts block, the install script, cloud-init's schema check,
shellcheck and ansible-inventory."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from components.render import HostFile
from components.render.hostfiles import install_script
from tests.support.tools import tool

pytestmark = pytest.mark.integration


def sh(*args, check=True, **kw):
    return subprocess.run([str(a) for a in args], check=check, capture_output=True, text=True, **kw)


# ------------------------------------------------------------ mount script

VOLUME_ID = "5e7a3c1d-9b2f-4e8a-a6d1-0c3b5f7e9a21"


@pytest.fixture
def loop_volume(tmp_path):
    """A 320 MB loop device exposed as OpenStack exposes volume VOLUME_ID."""
    tool("mkfs.xfs")
    image = tmp_path / "volume.img"
    with open(image, "wb") as f:
        f.truncate(320 * 1024 * 1024)
    device = sh(tool("losetup"), "--find", "--show", image).stdout.strip()
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / f"virtio-{VOLUME_ID[:20]}").symlink_to(device)
    fstab = tmp_path / "fstab"
    fstab.write_text("# fstab of the test\n")
    env = {**os.environ, "IDR_BY_ID_DIR": str(by_id), "IDR_FSTAB": str(fstab), "IDR_WAIT_SECONDS": "4"}
    yield device, env, fstab, tmp_path / "data"
    sh("umount", tmp_path / "data", check=False)
    sh(tool("losetup"), "-d", device, check=False)


@pytest.fixture
def mount_script(rendered, tmp_path):
    path = rendered["prod"] / "prod-database/usr/local/sbin/idr-mount-volume"
    assert os.access(path, os.X_OK)
    return path


def _state(device, fstab, mountpoint):
    return (fstab.read_text(), sh("findmnt", "-n", "-o", "SOURCE,FSTYPE", mountpoint, check=False).stdout,
            sh("blkid", "-p", "-s", "UUID", "-o", "value", device).stdout)


def test_blank_volume_gets_a_filesystem_and_is_mounted_once(loop_volume, mount_script):
    device, env, fstab, mountpoint = loop_volume
    assert sh("blkid", "-p", device, check=False).returncode == 2  # blank
    first = sh(mount_script, VOLUME_ID, mountpoint, env=env)
    assert "is blank: creating xfs" in first.stdout
    assert sh("findmnt", "-n", "-o", "SOURCE,FSTYPE", mountpoint).stdout.split() == [device, "xfs"]
    uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", device).stdout.strip()
    assert f"UUID={uuid} {mountpoint} xfs defaults,nofail 0 2" in fstab.read_text()

    before = _state(device, fstab, mountpoint)
    second = sh(mount_script, VOLUME_ID, mountpoint, env=env)
    assert "holds data: not formatting" in second.stdout and "already mounted" in second.stdout
    assert _state(device, fstab, mountpoint) == before


def test_volume_with_data_is_mounted_and_never_reformatted(loop_volume, mount_script):
    device, env, fstab, mountpoint = loop_volume
    sh("mkfs.xfs", "-q", device)
    uuid = sh("blkid", "-p", "-s", "UUID", "-o", "value", device).stdout.strip()
    mountpoint.mkdir()
    sh("mount", device, mountpoint)
    (mountpoint / "PG_VERSION").write_text("15\n")
    sh("umount", mountpoint)

    result = sh(mount_script, VOLUME_ID, mountpoint, env=env)
    assert "holds data: not formatting" in result.stdout
    assert (mountpoint / "PG_VERSION").read_text() == "15\n"
    assert sh("blkid", "-p", "-s", "UUID", "-o", "value", device).stdout.strip() == uuid


def test_extended_volume_is_grown_and_keeps_its_data(loop_volume, mount_script):
    """Cinder extends the volume (a larger idr:<role>VolumeSize); the mount
    step, run again, grows the filesystem online without touching the data."""
    device, env, fstab, mountpoint = loop_volume
    sh(mount_script, VOLUME_ID, mountpoint, env=env)
    (mountpoint / "PG_VERSION").write_text("15\n")
    size = lambda: int(sh("df", "--output=size", "-B1", mountpoint).stdout.split()[-1])  # noqa: E731
    small = size()
    backing = Path(sh(tool("losetup"), "-n", "-O", "BACK-FILE", device).stdout.strip())
    with open(backing, "r+b") as f:
        f.truncate(640 * 1024 * 1024)
    sh(tool("losetup"), "-c", device)          # the kernel sees the new size, as virtio does
    grown = sh(mount_script, VOLUME_ID, mountpoint, env=env)
    assert "grew the filesystem" in grown.stdout and "not formatting" in grown.stdout
    assert size() > 1.8 * small
    assert (mountpoint / "PG_VERSION").read_text() == "15\n"
    again = sh(mount_script, VOLUME_ID, mountpoint, env=env)
    assert "grew" not in again.stdout


def test_foreign_signature_is_neither_formatted_nor_mounted(loop_volume, mount_script):
    device, env, fstab, mountpoint = loop_volume
    sh("mkfs.ext4", "-q", "-F", device)
    result = sh(mount_script, VOLUME_ID, mountpoint, env=env, check=False)
    assert result.returncode == 1 and "holds 'ext4', expected xfs" in result.stderr
    assert sh("blkid", "-p", "-s", "TYPE", "-o", "value", device).stdout.strip() == "ext4"


def test_missing_volume_fails_without_touching_anything(loop_volume, mount_script):
    _, env, fstab, mountpoint = loop_volume
    before = fstab.read_text()
    result = sh(mount_script, "ffffffff-0000-0000-0000-000000000000", mountpoint, env=env, check=False)
    assert result.returncode == 1 and "is not attached" in result.stderr
    assert fstab.read_text() == before


# -------------------------------------------------------- /etc/hosts block

def test_hosts_block_replaces_only_its_block_and_is_idempotent(rendered, tmp_path):
    tree = rendered["prod"] / "prod-omeroreadonly-1"
    script, block = tree / "usr/local/sbin/idr-hosts-block", tree / "etc/idr/hosts.block"
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost6\n")
    assert sh(script, block, hosts).stdout.strip() == f"updated: {hosts}"
    text = hosts.read_text()
    assert text.startswith("127.0.0.1 localhost\n::1 localhost6\n# BEGIN IDR prod hosts")
    assert "192.168.1.101 prod-omeroreadonly-1 omeroreadonly-1\n" in text
    assert sh(script, block, hosts).stdout.strip() == f"unchanged: {hosts}"
    assert hosts.read_text() == text

    smaller = tmp_path / "block"
    smaller.write_text("192.168.1.10 prod-proxy proxy\n")
    sh(script, smaller, hosts)
    assert hosts.read_text() == ("127.0.0.1 localhost\n::1 localhost6\n# BEGIN IDR prod hosts (managed by pulumi)\n"
                                 "192.168.1.10 prod-proxy proxy\n# END IDR prod hosts\n")
    # The page's way of listing OMERO nodes still works on the result.
    assert sh("grep", "-oE", "omero[^ ]+$", block).stdout.split() == [
        "omeroreadwrite", "omeroreadonly-1", "omeroreadonly-2", "omeroreadonly-3", "omeroreadonly-4"]


# ---------------------------------------------------------- install script

def _fake_hostname(tmp_path, name):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "hostname").write_text(f"#!/bin/sh\necho {name}\n")
    (bindir / "hostname").chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}"


def test_install_script_installs_files_then_runs_the_step(tmp_path):
    content = "weird $HOME `x` 'quote' \"dq\" \\ EOF\nIDR_FILE_EOF\n" * 3
    script = install_script("prod-proxy", [HostFile("/etc/idr/a.conf", content),
                                           HostFile("/usr/local/sbin/x", "#!/bin/sh\necho hi\n", "0755")],
                            run='echo "step ran in ${IDR_ROOT}"')
    root = tmp_path / "root"
    env = {**os.environ, "IDR_ROOT": str(root), "PATH": _fake_hostname(tmp_path, "prod-proxy")}
    result = subprocess.run(["bash", "-s"], input=script, env=env, capture_output=True, text=True, check=True)
    assert (root / "etc/idr/a.conf").read_text() == content
    assert oct((root / "usr/local/sbin/x").stat().st_mode & 0o777) == "0o755"
    assert result.stdout.strip() == f"step ran in {root}"


def test_install_script_refuses_another_host(tmp_path):
    script = install_script("prod-database", [HostFile("/etc/idr/a.conf", "x\n")], run="echo ran")
    root = tmp_path / "root"
    env = {**os.environ, "IDR_ROOT": str(root), "PATH": _fake_hostname(tmp_path, "newidr-database")}
    result = subprocess.run(["bash", "-s"], input=script, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "refusing: this is newidr-database, expected prod-database" in result.stderr
    assert not root.exists() and "ran" not in result.stdout


# --------------------------------------------- the software that reads them

def _files(rendered, predicate):
    found = [p for tree in rendered.values() for p in tree.rglob("*") if p.is_file() and predicate(p)]
    assert found
    return found


def _is_shell(path: Path) -> bool:
    first = path.read_text(errors="replace").split("\n", 1)[0]
    return path.suffix == ".sh" or first.startswith("#!") and ("bash" in first or first.endswith("/sh"))


def test_every_shell_script_passes_shellcheck(rendered, rendered_every_feature):
    scripts = _files({**rendered, "every-feature": rendered_every_feature}, _is_shell)
    names = {p.name for p in scripts}
    assert {"idr-mount-volume", "backup.sh", "start.sh", "run.sh", "idr-nginx-cache-purge",
            "prod-proxy-nginx-rsyncd.sh"} <= names, names
    result = sh(tool("shellcheck"), "--severity=style", *scripts, check=False)
    assert result.returncode == 0, result.stdout


def test_every_cloud_config_passes_cloud_init_schema(rendered):
    configs = _files(rendered, lambda p: p.name == "user-data.txt" or
                     p.read_text(errors="replace").startswith("#cloud-config"))
    assert len(configs) == 18  # 9 hosts x 2 stacks (the management host: monitoringEnabled in both)
    for config in configs:
        result = sh(tool("cloud-init"), "schema", "--config-file", config, check=False)
        assert result.returncode == 0 and "Valid" in result.stdout, (config, result.stdout, result.stderr)


def test_inventory_parses_with_ansible_inventory(rendered, tmp_path):
    for stack, tree in rendered.items():
        result = sh(tool("ansible-inventory"), "-i", tree / "inventory.yaml", "--list",
                    env={**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp_path), "ANSIBLE_HOME": str(tmp_path)})
        inventory = json.loads(result.stdout)
        # IDR's host patterns and their group_vars keys.
        for group in (f"{stack}-omeroreadonly-hosts", "omeroreadonly-hosts"):
            assert inventory[group]["hosts"] == [f"{stack}-omeroreadonly-{n}" for n in range(1, 5)]
        assert inventory["database-hosts"]["hosts"] == [f"{stack}-database"]
        assert inventory["_meta"]["hostvars"][f"{stack}-database"]["idr_environment"] == stack
        proxy = inventory["_meta"]["hostvars"][f"{stack}-proxy"]
        database = inventory["_meta"]["hostvars"][f"{stack}-database"]
        assert proxy["ansible_host"] == database["ansible_ssh_common_args"].split("@")[1]
