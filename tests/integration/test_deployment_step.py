"""The deployment step for real: the command the program renders for
`pulumi up` (a local command) runs ansible-playbook against sshd "hosts" on
127.0.0.21-25, reached through a bastion sshd on 127.0.0.20 with the
inventory's ProxyJump. The playbooks are a stand-in tree
(tests/fixtures/deployment) whose plays target IDR's host patterns and write
a marker file per play and host. Only addresses and the SSH port of the
rendered inventory are rewritten; the command's text is run as rendered.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from components.offline import PROJECT_DIR, run_stack
from tests.integration import sshd

pytestmark = pytest.mark.integration

BASTION = "127.0.0.20"
# Fixed addresses of prod (two read-only servers) -> the sshd standing in.
ADDRESSES = {"192.168.1.11": "127.0.0.21", "192.168.1.12": "127.0.0.22", "192.168.1.101": "127.0.0.23",
             "192.168.1.102": "127.0.0.24", "192.168.1.13": "127.0.0.25"}
FIXTURE = "tests/fixtures/deployment"
PLAYS = {   # stand-in play -> the hosts IDR's pattern must reach
    "hosts": {"prod-omeroreadwrite", "prod-database", "prod-omeroreadonly-1", "prod-omeroreadonly-2",
              "prod-dockermanager"},
    "database": {"prod-database"},
    "omero": {"prod-omeroreadwrite", "prod-omeroreadonly-1", "prod-omeroreadonly-2"},
    "omeroreadwrite": {"prod-omeroreadwrite"},
    "omeroreadonly": {"prod-omeroreadonly-1", "prod-omeroreadonly-2"},
    "dockermanager": {"prod-dockermanager"},
    "docker": {"prod-dockermanager"},
    "services": {"prod-omeroreadwrite"},   # the second playbook
}
ROLE_GROUP = {"prod-omeroreadwrite": "omeroreadwrite-hosts", "prod-database": "database-hosts",
              "prod-omeroreadonly-1": "omeroreadonly-hosts", "prod-omeroreadonly-2": "omeroreadonly-hosts",
              "prod-dockermanager": "dockermanager-hosts"}


@pytest.fixture(scope="module")
def hosts():
    """sshd on the bastion address and every host address, one port; root
    logs in with one key (the program's idr:sshPrivateKey stand-in)."""
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
                log_level={a: "DEBUG1" if a == BASTION else "VERBOSE" for a in addresses}):
            yield root, port
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render_step(overrides: dict):
    """The deployment command as the program declares it for prod (two
    read-only servers, root as the login user, the bastion on loopback)."""
    run = run_stack("prod", {"omeroreadonlyCount": "2", "sshUser": "root", "sshBastion": BASTION,
                             "floatingIp": "", **overrides})
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


def run_step(step, hosts, secret_vars: str = "", pin_bastion: bool = True, extra_env=None):
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


@pytest.fixture
def vars_file(hosts):
    root, _ = hosts
    marker_dir = Path(tempfile.mkdtemp(prefix="markers-", dir=root))
    path = root / f"vars-{marker_dir.name}.yml"
    path.write_text(yaml.safe_dump({"marker_dir": str(marker_dir), "from_vars_file": "yes"}))
    return path, marker_dir


def test_every_play_reaches_exactly_its_hosts_never_the_proxy_with_vars_and_secret(hosts, vars_file):
    path, marker_dir = vars_file
    password = "s3cret-" + secrets.token_hex(8)
    _, step = render_step({"deploymentPath": FIXTURE, "deploymentVarsFile": str(path),
                           "deploymentPlaybooks": '["idr-01-install-idr.yml", "idr-02-services.yml"]'})
    result = run_step(step, hosts, secret_vars=f"idr_secret_postgresql_password: {password}\n")
    assert result.returncode == 0, result.stdout + result.stderr + (hosts[0] / BASTION / "log").read_text()
    # Every pattern reached exactly its hosts; the proxy (and bastion) plays none.
    assert markers(marker_dir) == PLAYS
    for play, names in PLAYS.items():
        for name in names:
            text = (marker_dir / play / name).read_text()
            fixed = ADDRESSES[_fixed_ip(step, name)]
            assert "environment=prod\n" in text
            assert f"group_var={ROLE_GROUP[name]}\n" in text       # group_vars keyed without prefix
            assert "from_vars_file=yes\n" in text                  # the vars file arrived
            assert f"secret_sha256={hashlib.sha256(password.encode()).hexdigest()}\n" in text
            # SSH reached the host's own address (through the bastion).
            assert re.search(rf"^ssh_connection=\S+ \d+ {re.escape(fixed)} \d+$", text, re.M), text
    # The secret was never printed, and its temporary file is gone.
    assert password not in result.stdout + result.stderr
    assert not list(hosts[0].glob("idr-deployment.*"))
    # Ansible's output is the step's output (what reaches the Pulumi log).
    assert "PLAY RECAP" in result.stdout and "== idr-02-services.yml" in result.stdout
    # Every connection went through the bastion: it forwarded to each host.
    bastion_log = (hosts[0] / BASTION / "log").read_text()
    for address in ADDRESSES.values():
        assert re.search(rf"direct.tcpip.*target {re.escape(address)} port {hosts[1]}", bastion_log), address


def _fixed_ip(step, name: str) -> str:
    inv = yaml.safe_load(step.inputs["environment"]["IDR_INVENTORY"])
    return inv["all"]["hosts"][name]["idr_fixed_ip"]


def test_a_failing_task_fails_the_step_naming_host_and_task(hosts, vars_file):
    path, marker_dir = vars_file
    path.write_text(path.read_text() + "fail_on: prod-database\n")
    _, step = render_step({"deploymentPath": FIXTURE, "deploymentVarsFile": str(path)})
    result = run_step(step, hosts)
    assert result.returncode != 0
    assert ("deployment failed: idr-01-install-idr.yml, host prod-database, task Fail where the test asks for it"
            in result.stderr.splitlines())
    # The other hosts went on; the failed one stopped there.
    assert "prod-database" not in markers(marker_dir).get("hosts", set())
    assert "prod-omeroreadwrite" in markers(marker_dir)["hosts"]


def test_a_wrong_pinned_bastion_key_is_refused(hosts, vars_file):
    path, marker_dir = vars_file
    _, step = render_step({"deploymentPath": FIXTURE, "deploymentVarsFile": str(path)})
    other = (hosts[0] / "127.0.0.21" / "hostkey.pub").read_text().split()
    result = run_step(step, hosts, pin_bastion=False,
                      extra_env={"IDR_SSH_BASTION_HOST_KEY": f"{other[0]} {other[1]}"})
    assert result.returncode != 0
    assert markers(marker_dir) == {}
    assert "UNREACHABLE" in result.stdout and "deployment failed: idr-01-install-idr.yml" in result.stderr


def test_a_pinned_ref_of_a_repository_is_checked_out_and_run(hosts, vars_file, tmp_path):
    """deploymentRepository + deploymentRef: the step clones into its cache and
    runs exactly the pinned commit, not what the branch has moved on to."""
    path, marker_dir = vars_file
    repo = tmp_path / "deployment"
    shutil.copytree(PROJECT_DIR / FIXTURE, repo)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "stand-in"], check=True)
    pinned = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    # A later commit that would fail every host: it must not run.
    (repo / "ansible/group_vars/all.yml").write_text("marker_dir: /nonexistent\nfail_on: prod-omeroreadwrite\n")
    subprocess.run(git + ["commit", "-qam", "later"], check=True)

    _, step = render_step({"deploymentRepository": str(repo), "deploymentRef": pinned,
                           "deploymentVarsFile": str(path)})
    cache = tmp_path / "cache"
    result = run_step(step, hosts, extra_env={"IDR_DEPLOYMENT_CACHE": str(cache)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"deployment playbooks: {repo} at {pinned}" in result.stdout
    assert markers(marker_dir)["omeroreadwrite"] == {"prod-omeroreadwrite"}
    # A second run uses the cached clone.
    again = run_step(step, hosts, extra_env={"IDR_DEPLOYMENT_CACHE": str(cache)})
    assert again.returncode == 0 and len(list(cache.iterdir())) == 1
