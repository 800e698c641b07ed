"""Throw-away OpenSSH servers on loopback addresses, for the tests that log
in for real (the deployment step, cache regeneration, the coordinator's keys).

One daemon per address, all on one port; each address has its own directory
under `root` (root/<address>/: hostkey, hostkey.pub, sshd_config,
authorized_keys unless another file is given, pid, log). Root logs in with a
key only; StrictModes is off, so scratch directories need no special modes.

    with sshd.running(root, ["127.0.0.2", "127.0.0.3"], sshd.free_port(...),
                      authorized_keys=client_key) as servers:
        ...servers.log("127.0.0.2") ...
"""
from __future__ import annotations

import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

from tests.support.tools import tool

# Per address or one value for every address.
PerAddress = Union[str, Mapping[str, str]]


def keygen(path: Path, comment: str = "") -> str:
    """A new ed25519 key pair at `path` (and path.pub); returns the public line."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)
    return path.with_name(path.name + ".pub").read_text().strip()


def free_port(addresses: Iterable[str], ports: range) -> int:
    """The first port of `ports` that every address can bind."""
    addresses = list(addresses)
    for port in ports:
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1} on {', '.join(addresses)}")


def _per(value: Optional[PerAddress], address: str, default: str = "") -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    return value.get(address, default)


@dataclass
class Servers:
    root: Path
    port: int
    addresses: list[str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    # A host name per address: that daemon (and every session it starts) runs
    # in a UTS namespace of its own, so each "host" tells its own name.
    hostnames: Mapping[str, str] = field(default_factory=dict)

    def dir(self, address: str) -> Path:
        return self.root / address

    def log(self, address: str) -> str:
        return (self.dir(address) / "log").read_text()

    def host_key(self, address: str) -> str:
        """The daemon's public host key line (type, key, comment)."""
        return (self.dir(address) / "hostkey.pub").read_text().strip()

    def start(self, address: str) -> None:
        d = self.dir(address)
        command = [tool("sshd"), "-D", "-e", "-f", str(d / "sshd_config")]
        if address in self.hostnames:
            # unshare and sh exec: the daemon keeps the Popen's PID.
            command = [tool("unshare"), "--uts", "--", "/bin/sh", "-c", 'hostname "$0" && exec "$@"',
                       self.hostnames[address], *command]
        # Appended: a restarted daemon keeps the log of the one before.
        self.processes[address] = subprocess.Popen(command, stderr=open(d / "log", "a"))

    def stop(self, address: str) -> None:
        p = self.processes.pop(address, None)
        if p is not None:
            p.terminate()
            p.wait(timeout=10)

    def new_host_key(self, address: str) -> str:
        """The server at `address` is replaced: same address, a new host key.
        Returns the new public key line."""
        self.stop(address)
        line = keygen(self.dir(address) / "hostkey", f"new-server@{address}")
        self.start(address)
        self.wait(address)
        return line

    def wait(self, *addresses: str, seconds: float = 20) -> None:
        deadline = time.time() + seconds
        for address in addresses or self.addresses:
            while True:
                try:
                    socket.create_connection((address, self.port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.05)

    def stop_all(self) -> None:
        for p in self.processes.values():
            p.terminate()
        for p in self.processes.values():
            p.wait(timeout=10)
        self.processes.clear()


def start(root: Path, addresses: Sequence[str], port: int, *, authorized_keys: PerAddress = "",
          authorized_keys_file: Optional[Mapping[str, Path]] = None, max_sessions: int = 10,
          log_level: PerAddress = "INFO", options: Sequence[str] = (),
          hostnames: Optional[Mapping[str, str]] = None) -> Servers:
    """Start sshd on every address (port `port`) and wait until each answers.

    authorized_keys: the text of root's authorized_keys (one for all, or per
    address: e.g. a forced command on one); written to root/<address>/
    authorized_keys, or to authorized_keys_file[address] when given (a home
    directory's .ssh/authorized_keys that a script under test edits).
    log_level: sshd's LogLevel, for all or per address. options: more
    sshd_config lines (forwarding, sftp, ...). hostnames: the host name each
    address's daemon and its sessions see (Servers.hostnames)."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    servers = Servers(root, port, list(addresses), hostnames=dict(hostnames or {}))
    try:
        for address in addresses:
            d = root / address
            d.mkdir(parents=True)
            keygen(d / "hostkey", f"server@{address}")
            keys = (authorized_keys_file or {}).get(address, d / "authorized_keys")
            keys.parent.mkdir(parents=True, exist_ok=True)
            keys.write_text(_per(authorized_keys, address))
            keys.chmod(0o600)
            config = d / "sshd_config"
            config.write_text("\n".join([
                f"ListenAddress {address}:{port}", f"HostKey {d}/hostkey", f"PidFile {d}/pid",
                f"AuthorizedKeysFile {keys}", "PermitRootLogin prohibit-password",
                "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
                "MaxStartups 100", f"MaxSessions {max_sessions}", *options,
                f"LogLevel {_per(log_level, address, 'INFO')}", ""]))
            config.chmod(0o600)
            servers.start(address)
        servers.wait()
    except BaseException:
        servers.stop_all()
        raise
    return servers


@contextmanager
def running(root: Path, addresses: Sequence[str], port: int, **kw) -> Iterator[Servers]:
    """start(), and every daemon stopped at the end."""
    servers = start(root, addresses, port, **kw)
    try:
        yield servers
    finally:
        servers.stop_all()
