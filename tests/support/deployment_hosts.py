"""What the deployment step's integration tests share: sshd "hosts" on
loopback (a bastion and one daemon per fixed address of prod, each telling
its host's name), the step as the program renders it, and how to run it
against them as pulumi-command would. Only addresses and the SSH port of the
rendered inventory are rewritten; the command's text is run as rendered."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from components.offline import PROJECT_DIR, run_stack
from tests.support import sshd

BASTION = "127.0.0.20"
# Fixed addresses of prod (two read-only servers) -> the sshd standing in.
ADDRESSES = {"192.168.1.11": "127.0.0.21", "192.168.1.12": "127.0.0.22", "192.168.1.101": "127.0.0.23",
             "192.168.1.102": "127.0.0.24", "192.168.1.13": "127.0.0.25", "192.168.1.103": "127.0.0.26"}
FIXTURE = "tests/fixtures/deployment"
# Host names of prod with two (or three) read-only servers, by address.
NAMES = {BASTION: "prod-proxy", "127.0.0.21": "prod-omeroreadwrite", "127.0.0.22": "prod-database",
         "127.0.0.23": "prod-omeroreadonly-1", "127.0.0.24": "prod-omeroreadonly-2",
         "127.0.0.25": "prod-dockermanager", "127.0.0.26": "prod-omeroreadonly-3"}
# The secret vars the step requires (never the roles' default 'omero').
SECRET_VARS = ("omero_server_rootpassword: root-pw\nidr_secret_postgresql_password: {password}\n"
               "idr_secret_postgresql_password_ro: ro-pw\n")
ROLE_GROUP = {"prod-omeroreadwrite": "omeroreadwrite-hosts", "prod-database": "database-hosts",
              "prod-omeroreadonly-1": "omeroreadonly-hosts", "prod-omeroreadonly-2": "omeroreadonly-hosts",
              "prod-dockermanager": "dockermanager-hosts"}


@contextmanager
def loopback_hosts() -> Iterator[tuple[Path, int]]:
    """sshd on the bastion address and every host address, one port; root
    logs in with one key (the program's idr:sshPrivateKey stand-in).
    Yields (the directory of the key and the daemons, the port)."""
    root = Path(tempfile.mkdtemp(prefix="idr-deployment-"))
    root.chmod(0o755)
    key = sshd.keygen(root / "key")
    addresses = (BASTION, *ADDRESSES.values())
    port = sshd.free_port(addresses, range(22600, 22700))
    try:
        with sshd.running(
                root, addresses, port, authorized_keys=f"{key}\n", max_sessions=100,
                options=["AllowTcpForwarding yes", "Subsystem sftp internal-sftp"],
                # The bastion logs every forward it makes (direct-tcpip targets).
                log_level={a: "DEBUG1" if a == BASTION else "VERBOSE" for a in addresses},
                hostnames=NAMES):
            yield root, port
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render_step(overrides: dict):
    """The deployment command as the program declares it for prod (two
    read-only servers, root as the login user, the bastion on loopback)."""
    # Without the monitoring host (no sshd stands in for it): its playbooks
    # are checked in test_deployment_idr.py and tests/test_monitoring.py.
    run = run_stack("prod", {"omeroreadonlyCount": "2", "sshUser": "root", "sshBastion": BASTION,
                             "floatingIp": "", "monitoringEnabled": "false", **overrides})
    (step,) = run.of_type("command:local:Command")
    return run, step


def loopback_inventory(text: str, port: int) -> str:
    """The rendered inventory with fixed addresses and the SSH port moved to loopback."""
    inv = yaml.safe_load(text)
    inv["all"]["vars"]["ansible_port"] = port
    for host in inv["all"]["hosts"].values():
        host["ansible_host"] = ADDRESSES.get(host["ansible_host"], host["ansible_host"])
        if "ansible_ssh_common_args" in host:
            assert host["ansible_ssh_common_args"] == f"-o ProxyJump=root@{BASTION}"
            host["ansible_ssh_common_args"] = f"-o ProxyJump=root@{BASTION}:{port}"
    return yaml.safe_dump(inv)


def run_step(step, hosts, secret_vars: str = SECRET_VARS.format(password="pg-pw"), pin_bastion: bool = True,
             extra_env=None):
    root, port = hosts
    env = step.inputs["environment"]
    assert env["IDR_SSH_BASTION"] == BASTION
    command_env = {
        "PATH": os.environ["PATH"], "HOME": str(root), "LANG": "C.UTF-8",
        "IDR_INVENTORY": loopback_inventory(env["IDR_INVENTORY"], port),
        "IDR_SSH_BASTION": BASTION,
        "IDR_SSH_PRIVATE_KEY": (root / "key").read_text(),
        "IDR_SSH_BASTION_HOST_KEY": ((root / BASTION / "hostkey.pub").read_text().split()[0] + " "
                                     + (root / BASTION / "hostkey.pub").read_text().split()[1]) if pin_bastion else "",
        "IDR_DEPLOYMENT_SECRET_VARS": secret_vars,
        "IDR_DEPLOYMENT_DIGEST": env["IDR_DEPLOYMENT_DIGEST"],
        "IDR_DEPLOYMENT_PROGRAM_VARS": env["IDR_DEPLOYMENT_PROGRAM_VARS"],
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",   # the stand-in hosts' system Python
        "TMPDIR": str(root),
        **(extra_env or {}),
    }
    # As pulumi-command runs it: its interpreter, in its directory.
    assert step.inputs["interpreter"] == ["/bin/bash", "-c"]
    assert step.inputs["dir"] == str(PROJECT_DIR)
    return subprocess.run(step.inputs["interpreter"] + [step.inputs["create"]], cwd=step.inputs["dir"],
                          env=command_env, capture_output=True, text=True, timeout=300)


def markers(marker_dir: Path) -> dict[str, set[str]]:
    if not marker_dir.exists():
        return {}
    return {play.name: {m.name for m in play.iterdir()} for play in marker_dir.iterdir()}


def check_only(step, home: Path, extra_env=None) -> subprocess.CompletedProcess:
    """The step as rendered, in its check-only mode: no host is reached."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "IDR_INVENTORY": step.inputs["environment"]["IDR_INVENTORY"], "IDR_DEPLOYMENT_CHECK_ONLY": "1",
           "IDR_DEPLOYMENT_PROGRAM_VARS": step.inputs["environment"]["IDR_DEPLOYMENT_PROGRAM_VARS"],
           **(extra_env or {})}
    return subprocess.run(step.inputs["interpreter"] + [step.inputs["create"]], cwd=step.inputs["dir"], env=env,
                          capture_output=True, text=True, timeout=600)
