"""Real tools for the tests: installed on demand, never skipped."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VENV_BIN = Path(sys.executable).parent

# binary -> Debian package that provides it
DEBIAN_PACKAGES = {
    "nginx": "nginx", "parallel": "parallel", "sshd": "openssh-server", "ssh": "openssh-client",
    "ssh-keygen": "openssh-client", "cloud-init": "cloud-init", "shellcheck": "shellcheck",
    "rsync": "rsync", "mkfs.xfs": "xfsprogs", "losetup": "mount", "blkid": "util-linux",
    "curl": "curl", "git": "git", "systemd-analyze": "systemd", "openssl": "openssl", "unshare": "util-linux", "sudo": "sudo",
    "promtool": "prometheus", "amtool": "prometheus-alertmanager", "mtail": "mtail",
    "prometheus-node-exporter": "prometheus-node-exporter", "prometheus-blackbox-exporter": "prometheus-blackbox-exporter",
}


def tool(binary: str) -> str:
    """Path of `binary`, from the venv, PATH or /usr/sbin; apt-installs its
    Debian package when missing (tests run as root, as CI does)."""
    for candidate in (VENV_BIN / binary, shutil.which(binary), f"/usr/sbin/{binary}"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    package = DEBIAN_PACKAGES.get(binary)
    if package is None:
        raise RuntimeError(f"{binary} is missing and no Debian package is known for it")
    subprocess.run(["apt-get", "install", "-y", "-q", package], check=True,
                   env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    found = shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if not found:
        raise RuntimeError(f"installed {package} but {binary} is still missing")
    return found

