"""The deployment step for real: the command the program renders for
`pulumi up` (a local command) runs ansible-playbook against sshd "hosts" on
127.0.0.21-25, reached through a bastion sshd on 127.0.0.20 with the
inventory's ProxyJump. The playbooks are a stand-in tree
(tests/fixtures/deployment) whose plays target IDR's host patterns and write
a marker file per play and host; the program's own playbooks (facts,
post-install with a stand-in ome.omero_user, record) are the real ones. IDR's
real playbooks and roles run in test_deployment_idr.py. Only addresses and
the SSH port of the rendered inventory are rewritten; the command's text is
run as rendered.
"""
from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from components.offline import PROJECT_DIR
from tests.support import sshd
from tests.support.deployment_hosts import (ADDRESSES, BASTION, FIXTURE, ROLE_GROUP, SECRET_VARS, check_only, markers,
                                            render_step, run_step)

pytestmark = pytest.mark.integration

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
    "postinstall": {"prod-omeroreadwrite"},  # the program's post-install (public user)
}


@pytest.fixture
def vars_file(hosts):
    """A vars file with this test's marker directory; every "host" of one
    machine records its deployment and its public password in a file of
    its own (the real paths would be one file for all)."""
    root, _ = hosts
    marker_dir = Path(tempfile.mkdtemp(prefix="markers-", dir=root))
    path = root / f"vars-{marker_dir.name}.yml"
    path.write_text(yaml.safe_dump({
        "marker_dir": str(marker_dir), "from_vars_file": "yes",
        "idr_deployment_record": f"{marker_dir}-records/{{{{ inventory_hostname }}}}/deployed",
        "idr_public_password_file": f"{marker_dir}-public/{{{{ inventory_hostname }}}}"}))
    return path, marker_dir


def test_every_play_reaches_exactly_its_hosts_never_the_proxy_with_vars_and_secret(hosts, vars_file):
    path, marker_dir = vars_file
    password = "s3cret-" + secrets.token_hex(8)
    _, step = render_step({"deploymentPath": FIXTURE, "deploymentVarsFile": str(path),
                           "deploymentPlaybooks": '["idr-01-install-idr.yml", "idr-02-services.yml"]'})
    result = run_step(step, hosts, secret_vars=SECRET_VARS.format(password=password))
    assert result.returncode == 0, result.stdout + result.stderr + (hosts[0] / BASTION / "log").read_text()
    # Every pattern reached exactly its hosts; the proxy (and bastion) plays none.
    assert markers(marker_dir) == PLAYS
    for play, names in PLAYS.items():
        for name in names:
            if play == "postinstall":
                assert (marker_dir / play / name).read_text() == "users=public\ngroups=demo\n"
                continue
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
    for address in (ADDRESSES[_fixed_ip(step, name)] for name in ROLE_GROUP):
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
    # Refused at the first contact, the facts run: no playbook started.
    assert "UNREACHABLE" in result.stdout and "deployment failed: facts and deployed state, host " in result.stderr


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


def test_only_hosts_without_this_deployment_get_the_playbooks_facts_come_from_all(hosts, vars_file):
    """A host records the deployment it got; a later run deploys only the
    hosts that lack it: one more read-only server gets the playbooks alone,
    nothing runs when nothing changed, a generation bump runs everywhere."""
    path, marker_dir = vars_file
    base = {"deploymentPath": FIXTURE, "deploymentVarsFile": str(path)}
    _, first = render_step(base)
    assert run_step(first, hosts).returncode == 0
    assert markers(marker_dir) == {k: v for k, v in PLAYS.items() if k != "services"}

    shutil.rmtree(marker_dir)
    again = run_step(first, hosts)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "every host has this deployment already; nothing to run" in again.stdout
    assert markers(marker_dir) == {}

    # One more read-only server: its instance ID is a new trigger, the digest is the same.
    _, grown = render_step({**base, "omeroreadonlyCount": "3"})
    assert grown.inputs["environment"]["IDR_DEPLOYMENT_DIGEST"] == first.inputs["environment"]["IDR_DEPLOYMENT_DIGEST"]
    assert grown.inputs["triggers"] != first.inputs["triggers"]
    result = run_step(grown, hosts)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deployment of prod on: prod-omeroreadonly-3\n" in result.stdout
    new = {"prod-omeroreadonly-3"}
    assert markers(marker_dir) == {"hosts": new, "omero": new, "omeroreadonly": new}
    # Facts came from every host, the proxy's included (the fact cache the plays read).
    assert "ok: [prod-proxy]" in result.stdout and "ok: [prod-omeroreadwrite]" in result.stdout

    shutil.rmtree(marker_dir)
    _, bumped = render_step({**base, "omeroreadonlyCount": "3", "deploymentGeneration": "1"})
    assert run_step(bumped, hosts).returncode == 0
    assert markers(marker_dir)["hosts"] == PLAYS["hosts"] | new
    assert markers(marker_dir)["postinstall"] == {"prod-omeroreadwrite"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_roles_follow_the_ref_and_nothing_is_fetched_while_they_match(tmp_path):
    """A pinned ref's requirements.yml decides the roles: after a ref change
    a role installed at another version is replaced; with every role at its
    pin, nothing is fetched (the role's source can be gone)."""
    role = tmp_path / "role-source"
    (role / "meta").mkdir(parents=True)
    (role / "tasks").mkdir()
    (role / "meta/main.yml").write_text("galaxy_info: {author: t, description: t, license: MIT, min_ansible_version: '2.14'}\n")
    subprocess.run(["git", "init", "-q", str(role)], check=True)
    for tag in ("v1", "v2"):
        (role / "tasks/main.yml").write_text(f"- ansible.builtin.debug: {{msg: {tag}}}\n")
        _git(role, "add", ".")
        _git(role, "commit", "-qm", tag)
        _git(role, "tag", tag)
    repo = tmp_path / "deployment"
    shutil.copytree(PROJECT_DIR / FIXTURE, repo)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    pins = {}
    for tag in ("v1", "v2"):
        (repo / "ansible/requirements.yml").write_text(yaml.safe_dump(
            [{"src": f"git+file://{role}", "version": tag, "name": "test.role"}]))
        _git(repo, "add", ".")
        _git(repo, "commit", "-qm", f"role {tag}")
        pins[tag] = _git(repo, "rev-parse", "HEAD")
    cache = tmp_path / "cache"
    installed = None

    def check(tag: str) -> subprocess.CompletedProcess:
        nonlocal installed
        _, step = render_step({"deploymentRepository": str(repo), "deploymentRef": pins[tag]})
        result = check_only(step, tmp_path, {"IDR_DEPLOYMENT_CACHE": str(cache)})
        assert result.returncode == 0, result.stdout + result.stderr
        (installed,) = cache.glob("*/ansible/vendor/test.role")
        assert (installed / "tasks/main.yml").read_text() == f"- ansible.builtin.debug: {{msg: {tag}}}\n"
        return result

    assert "installing it again" not in check("v1").stdout
    moved = check("v2").stdout
    assert f"role {installed}: installed version differs from requirements.yml; installing it again" in moved
    shutil.rmtree(role)        # nothing to fetch from any more
    again = check("v2").stdout
    assert "installing it again" not in again and "is already installed, skipping" in again


def test_an_unpinned_bastion_key_is_recorded_on_first_contact_and_checked_after(hosts, vars_file, tmp_path):
    """Without idr:sshBastionHostKey the step trusts the bastion's key on
    first contact, keeps it per environment, and refuses another after."""
    root, _ = hosts
    path, marker_dir = vars_file
    _, step = render_step({"deploymentPath": FIXTURE, "deploymentVarsFile": str(path)})
    cache = tmp_path / "cache"
    first = run_step(step, hosts, pin_bastion=False, extra_env={"IDR_DEPLOYMENT_CACHE": str(cache)})
    assert first.returncode == 0, first.stdout + first.stderr
    recorded = cache / "known_hosts" / "prod"
    key_type, key = (root / BASTION / "hostkey.pub").read_text().split()[:2]
    assert recorded.read_text().split() == ["idr-bastion", key_type, key]
    # Another key answers at the bastion's address: refused before any play.
    other = sshd.keygen(tmp_path / "other")
    recorded.write_text("idr-bastion " + " ".join(other.split()[:2]) + "\n")
    shutil.rmtree(marker_dir)
    refused = run_step(step, hosts, pin_bastion=False, extra_env={"IDR_DEPLOYMENT_CACHE": str(cache)})
    assert refused.returncode != 0
    assert "deployment failed: facts and deployed state, host " in refused.stderr
    assert markers(marker_dir) == {}
