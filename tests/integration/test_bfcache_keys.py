"""The coordinator's keys for real, on sshd "hosts" (127.0.0.6 omeroreadwrite,
127.0.0.7 omeroreadonly-1, 127.0.0.8 database; the coordinator connects from
127.0.0.9, the operator from 127.0.0.1):

- a replaced server (same address, new host key) is refused by the
  coordinator's known_hosts until forget-hosts.sh, given the new instance ID,
  forgets exactly that host's entries (name, alias, address; hashed or not);
- generation 0's revoke step removes the coordinator's key from the login
  user's authorized_keys (the line the authorize step wrote, and one an older
  version wrote), keeps every other line, and is harmless where there is
  nothing to revoke.

The scripts are the rendered ones; only paths, addresses and the port are
rewritten.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from components import layout
from components.render import bfcache as render
from components.render.hostfiles import install_script
from tests.support import sshd
from tests.support.settings import bfcache_settings as settings
from tests.support.tools import tool

pytestmark = pytest.mark.integration

RW, RO, DB, COORDINATOR = "127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"
HOSTS = (RW, RO, DB)
# Fixed addresses of the test settings (sshUser root, one read-only server) -> loopback.
ADDRESSES = {"192.168.1.11": RW, "192.168.1.101": RO, "192.168.1.12": DB}
PROXY_IP = "192.168.1.10"


def s():
    return settings(sshUser="root", omeroreadonlyCount=1)


def host_of(address: str):
    fixed = {v: k for k, v in ADDRESSES.items()}[address]
    return next(h for h in layout.hosts(s()) if h.fixed_ip == fixed)


def local(text: str) -> str:
    for fixed, loopback in ADDRESSES.items():
        text = re.sub(rf"\b{re.escape(fixed)}\b", loopback, text)
    return text


@pytest.fixture(scope="module")
def servers():
    tool("ssh")
    root = Path(tempfile.mkdtemp(prefix="idr-bfcache-keys-"))
    root.chmod(0o755)
    coordinator = sshd.keygen(root / "coordinator", "idr-bfcache@test-proxy")
    operator = sshd.keygen(root / "operator", "operator@laptop")
    homes = {a: root / f"home-{a}" for a in HOSTS}
    port = sshd.free_port((*HOSTS, COORDINATOR), range(22500, 22600))
    try:
        with sshd.running(root, HOSTS, port, authorized_keys=f"{operator}\n",
                          authorized_keys_file={a: homes[a] / ".ssh/authorized_keys" for a in HOSTS}) as running:
            yield running, homes, coordinator, operator
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ssh_config(root: Path, known_hosts: Path, port: int) -> Path:
    """The coordinator's rendered ssh_config, with this test's key, known_hosts and port."""
    (text,) = [f.content for f in render.coordinator_files(s()) if f.path.endswith("/ssh_config")]
    text = text.replace(f"{render.KEY_DIR}/id_ed25519", str(root / "coordinator"))
    text = text.replace(render.KNOWN_HOSTS, str(known_hosts))
    path = root / f"ssh_config-{known_hosts.parent.name}"
    path.write_text(text + f"    Port {port}\n")
    return path


def coordinator_ssh(config: Path, address: str, *options: str) -> subprocess.CompletedProcess:
    """As the coordinator logs in (its ssh_config, from its address)."""
    return subprocess.run(["ssh", "-F", str(config), "-b", COORDINATOR, "-o", "ControlPath=none", *options,
                           f"root@{address}", "echo logged-in"], capture_output=True, text=True, timeout=60)


def operator_ssh(servers_, address: str) -> subprocess.CompletedProcess:
    running = servers_[0]
    return subprocess.run(["ssh", "-i", str(running.root / "operator"), "-p", str(running.port),
                           "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", f"UserKnownHostsFile={running.root}/operator_known_hosts",
                           f"root@{address}", "echo logged-in"], capture_output=True, text=True, timeout=60)


def logged_in(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 0 and result.stdout.strip() == "logged-in"


def hashed(host: str, key: str) -> str:
    """A known_hosts line with the host name hashed, as HashKnownHosts writes it."""
    salt = os.urandom(20)
    digest = hmac.new(salt, host.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()} {key}"


def host_key(running, address: str) -> str:
    return " ".join(running.host_key(address).split()[:2])


# ------------------------------------------------ known_hosts: replaced server

def forget_script(directory: Path, port: int) -> Path:
    (text,) = [f.content for f in render.forget_files(s())]
    assert f"dir={render.KEY_DIR}\n" in text and "port=22\n" in text
    text = text.replace(render.KEY_DIR, str(directory)).replace("port=22\n", f"port={port}\n")
    path = directory.parent / f"forget-hosts-{directory.name}.sh"
    path.write_text(text)
    path.chmod(0o755)
    return path


def forget(script: Path, ids: dict[str, str]) -> subprocess.CompletedProcess:
    """The step's follow-up command as rendered for these instance IDs."""
    command = local(render.forget_run(s(), ids)).replace(f"{render.LIBEXEC}/forget-hosts.sh", str(script))
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True)


def test_a_replaced_server_is_forgotten_by_the_coordinator_and_only_it(servers):
    running, homes, coordinator, _ = servers
    port = running.port
    for a in HOSTS:   # the coordinator's key is trusted (as the authorize step leaves it)
        (homes[a] / ".ssh/authorized_keys").write_text(f"{coordinator}\n")
    directory = running.root / "coordinator-ssh"
    known = directory / "known_hosts"
    script = forget_script(directory, port)
    config = ssh_config(running.root, known, port)
    rw, ro, db = (host_of(a) for a in HOSTS)
    ids = {rw.name: "i-rw-1", ro.name: "i-ro-1", db.name: "i-db-1"}

    # First run (a fresh coordinator): nothing known yet, the IDs recorded.
    first = forget(script, ids)
    assert first.returncode == 0 and first.stdout == "", first.stdout + first.stderr
    assert (directory / "instance-ids").read_text().splitlines() == [
        f"{rw.name} {rw.alias} {RW} i-rw-1", f"{ro.name} {ro.alias} {RO} i-ro-1", f"{db.name} {db.alias} {DB} i-db-1"]

    # The coordinator learns every key on first use (one of them hashed), and
    # knows the two nodes by name and alias too, hashed or not.
    assert logged_in(coordinator_ssh(config, RW))
    assert logged_in(coordinator_ssh(config, RO, "-o", "HashKnownHosts=yes"))
    assert logged_in(coordinator_ssh(config, DB))
    old_ro, rw_key = host_key(running, RO), host_key(running, RW)
    with known.open("a") as f:
        f.write(f"{ro.name} {old_ro}\n{hashed(ro.alias, old_ro)}\n{hashed(f'[{ro.name}]:{port}', old_ro)}\n"
                f"{rw.name},{rw.alias} {rw_key}\n{hashed(rw.alias, rw_key)}\n")
    before = known.read_text().splitlines()
    assert sum(old_ro in line for line in before) == 4
    assert any(line.startswith("|1|") and old_ro in line for line in before)

    # omeroreadonly-1 is replaced: same address, new host key. Refused.
    running.new_host_key(RO)
    refused = coordinator_ssh(config, RO)
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused.stderr
    assert logged_in(coordinator_ssh(config, RW))

    # The step, with its new instance ID, forgets exactly that host.
    replaced = forget(script, {**ids, ro.name: "i-ro-2"})
    assert replaced.returncode == 0, replaced.stderr
    assert replaced.stdout.splitlines() == [
        f"bfcache: forgot the host key of {ro.name} (replaced: instance i-ro-1 -> i-ro-2): "
        f"{ro.name} {ro.alias} [{ro.name}]:{port} [{RO}]:{port}"]
    assert known.read_text().splitlines() == [line for line in before if old_ro not in line]
    assert not (directory / "known_hosts.old").exists()     # the old key is not kept aside either
    assert f"{ro.name} {ro.alias} {RO} i-ro-2" in (directory / "instance-ids").read_text()
    # The new server is accepted (and learned); the others' entries are untouched.
    assert logged_in(coordinator_ssh(config, RO))
    assert logged_in(coordinator_ssh(config, RW)) and logged_in(coordinator_ssh(config, DB))
    after = known.read_text()
    assert after.splitlines()[:-1] == [line for line in before if old_ro not in line]
    assert host_key(running, RO) in after.splitlines()[-1]

    # Safe to re-run: the same IDs forget nothing.
    again = forget(script, {**ids, ro.name: "i-ro-2"})
    assert again.returncode == 0 and again.stdout == "" and known.read_text() == after

    # A host that leaves the environment is forgotten as well (a later server
    # at its address is then accepted); the rest stays.
    specs = [f"{ro.name},{ro.alias},{RO},i-ro-2", f"{db.name},{db.alias},{DB},i-db-1"]
    left = subprocess.run([str(script), *specs], capture_output=True, text=True)
    assert left.returncode == 0 and left.stdout.splitlines() == [
        f"bfcache: forgot the host key of {rw.name} (left the environment): {rw.name} {rw.alias} [{RW}]:{port}"], \
        left.stdout
    assert known.read_text().splitlines() == [line for line in after.splitlines() if rw_key not in line]
    assert rw.name not in (directory / "instance-ids").read_text()
    # A missing instance ID is refused, and nothing is forgotten.
    kept, record = known.read_text(), (directory / "instance-ids").read_text()
    bad = forget(script, {ro.name: "i-ro-3", db.name: "i-db-1"})     # omeroreadwrite has none
    assert bad.returncode == 2 and "expected NAME,ALIAS,ADDRESS,INSTANCE-ID, got 'test-omeroreadwrite" in bad.stderr
    bad = subprocess.run([str(script), f"{ro.name},{ro.alias},{RO},i-ro-3", f"{db.name},{db.alias},{DB}"],
                         capture_output=True, text=True)       # checked before omeroreadonly-1 is forgotten
    assert bad.returncode == 2 and bad.stdout == ""
    assert subprocess.run([str(script)], capture_output=True).returncode == 2    # no host at all
    assert known.read_text() == kept and (directory / "instance-ids").read_text() == record
    assert not list(directory.glob(".instance-ids.*"))


# ------------------------------------------------ generation 0: key revoked

def authorize(servers_, address: str, public_key: str, forced: str = "") -> subprocess.CompletedProcess:
    """The trust step's script as rendered, run for this host's scratch home."""
    text = render.authorize_script(s(), host_of(address), public_key, forced)
    return run_as_host(servers_, address, text)


def revoke_script(address: str) -> str:
    """The revoke step's script exactly as the component feeds it to the host."""
    host = host_of(address)
    return install_script(host.name, [], render.revoke_run(s(), host))


def run_as_host(servers_, address: str, text: str, home: Path | None = None) -> subprocess.CompletedProcess:
    running, homes, _, _ = servers_
    home = home or homes[address]
    line = 'home=$(getent passwd "$user" | cut -d: -f6)'
    assert line in text
    text = text.replace(line, f"home={home}").replace(f'from="{PROXY_IP}"', f'from="{COORDINATOR}"')
    bin_dir = running.root / f"bin-{address}"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "hostname").write_text(f"#!/bin/sh\necho {host_of(address).name}\n")
    (bin_dir / "hostname").chmod(0o755)
    return subprocess.run(["bash", "-s"], input=text, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})


def test_generation_zero_revokes_the_coordinators_key_and_keeps_every_other_line(servers):
    running, homes, coordinator, operator = servers
    directory = running.root / "revoke-ssh"
    directory.mkdir()
    config = ssh_config(running.root, directory / "known_hosts", running.port)
    ids = running.root / "ids.sh"
    ids.write_text("#!/bin/sh\necho ids-only\n")
    ids.chmod(0o755)
    unrelated = 'no-port-forwarding ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUnrelatedKeyOfSomeoneElseAAAAAAAAAAAAAAAA ci@x'
    for a in HOSTS:
        (homes[a] / ".ssh/authorized_keys").write_text(f"{operator}\n# kept: a comment\n{unrelated}\n")
    # The trust steps: this version's line on omeroreadwrite and the database
    # (forced to the ID query); on omeroreadonly-1 the line an older version wrote.
    assert authorize(servers, RW, coordinator).returncode == 0
    assert authorize(servers, DB, coordinator, str(ids)).returncode == 0
    legacy = f'from="{COORDINATOR}" {" ".join(coordinator.split()[:2])} idr-bfcache@test-proxy'
    with (homes[RO] / ".ssh/authorized_keys").open("a") as f:
        f.write(legacy + "\n")
    assert f"{render.AUTHORIZED_MARKER}@test-proxy" in (homes[RW] / ".ssh/authorized_keys").read_text()
    assert logged_in(coordinator_ssh(config, RW)) and logged_in(coordinator_ssh(config, RO))
    forced = coordinator_ssh(config, DB)
    assert forced.returncode == 0 and forced.stdout.strip() == "ids-only", forced.stderr
    # from=: the coordinator's key works from the coordinator's address only.
    assert not logged_in(subprocess.run(
        ["ssh", "-F", str(config), "-o", "ControlPath=none", f"root@{RW}", "echo logged-in"],
        capture_output=True, text=True, timeout=60))

    for a in HOSTS:
        inode = (homes[a] / ".ssh/authorized_keys").stat().st_ino
        out = run_as_host(servers, a, revoke_script(a))
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"bfcache: {host_of(a).name} no longer trusts the coordinator's key"
        keys = homes[a] / ".ssh/authorized_keys"
        assert keys.read_text() == f"{operator}\n# kept: a comment\n{unrelated}\n"
        assert keys.stat().st_ino != inode and oct(keys.stat().st_mode & 0o777) == "0o600"
        assert not list((homes[a] / ".ssh").glob(".authorized_keys.*"))

    for a in HOSTS:
        denied = coordinator_ssh(config, a)
        assert denied.returncode == 255 and "Permission denied" in denied.stderr, (a, denied.stdout, denied.stderr)
        assert logged_in(operator_ssh(servers, a)), a    # the login user's own key still works

    # Again: nothing to revoke, the file not even rewritten.
    inode = (homes[RW] / ".ssh/authorized_keys").stat().st_ino
    again = run_as_host(servers, RW, revoke_script(RW))
    assert again.returncode == 0 and "nothing to revoke" in again.stdout
    assert (homes[RW] / ".ssh/authorized_keys").stat().st_ino == inode
    # A new host that never had the key (no .ssh at all): nothing happens.
    fresh = running.root / "fresh-home"
    fresh.mkdir()
    out = run_as_host(servers, RO, revoke_script(RO), home=fresh)
    assert out.returncode == 0 and "has no authorized_keys" in out.stdout
    assert list(fresh.iterdir()) == []
    # On the wrong machine it refuses and changes nothing.
    wrong = run_as_host(servers, RW, revoke_script(RO))
    assert wrong.returncode == 1 and "refusing" in wrong.stderr
