"""The deployment step against IDR's real playbooks and pinned roles: the
offline snapshot of IDR/deployment at the commit both stack files pin, with
every role of its requirements.yml (../shared/reference/idr-deployment/).

- Every playbook the step can run passes ansible-playbook's syntax check
  with the project's pinned Ansible, on each stack's rendered inventory.
- IDR's idr-hosts.yml, run by the step's rendered command against the sshd
  "hosts" (each tells its own host name), writes an entry for every host,
  the proxy's included, while no task runs on the proxy; /etc/hosts stays
  the program's (the role writes its copy beside it).
- The program's post-install, with IDR's real ome.omero_user role, against
  a stand-in `omero` CLI (tests/support/omero_standin.py, which records
  every call): the first run creates the group and the public user, the
  second changes nothing.
The hosts here are Debian, not Rocky Linux: only the tagged parts that run
on any Linux are run (ANSIBLE_RUN_TAGS); IDR's package tasks cannot.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from components.offline import PROJECT_DIR, run_stack
from components.render.deployment import HOSTS_POPULATE_TARGET
from tests.support.deployment_hosts import ADDRESSES, BASTION, NAMES, SECRET_VARS, check_only, render_step, run_step
from tests.support.settings import settings_for

pytestmark = pytest.mark.integration

SNAPSHOT = PROJECT_DIR.parent / "shared/reference/idr-deployment/idr-deployment-61583a5.tar.gz"
SNAPSHOT_SHA256 = "b38f0868111f7c6f612e448d9ed91d8770a94ba4ae771b36504da83bea878ec8"
# What operators may add to idr:deploymentPlaybooks (README), besides the default.
OPTIONAL_PLAYBOOKS = ["idr-upgrade-dist.yml", "idr-journald.yml", "idr-02-services.yml", "idr-09-monitoring.yml",
                      "idr-ebi-nfs.yml", "idr-dundee-nfs.yml"]


@pytest.fixture(scope="module")
def idr_deployment(tmp_path_factory) -> Path:
    """The snapshot, unpacked: IDR/deployment with its roles in ansible/vendor."""
    assert SNAPSHOT.exists(), f"IDR/deployment snapshot {SNAPSHOT} is absent: the tests need ../shared beside the project"
    assert hashlib.sha256(SNAPSHOT.read_bytes()).hexdigest() == SNAPSHOT_SHA256
    root = tmp_path_factory.mktemp("idr-snapshot")
    with tarfile.open(SNAPSHOT) as tar:
        tar.extractall(root, filter="data")
    return root / "idr-deployment"


@pytest.mark.parametrize("stack", ["prod", "newidr"])
def test_every_playbook_passes_the_syntax_check_with_the_pinned_ansible(idr_deployment, stack, tmp_path):
    playbooks = ["idr-01-install-idr.yml", *OPTIONAL_PLAYBOOKS]
    run = run_stack(stack, {"deploymentPath": str(idr_deployment), "deploymentPlaybooks": json.dumps(playbooks)})
    (step,) = run.of_type("command:local:Command")
    result = check_only(step, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # Both stacks monitor themselves (idr:monitoringEnabled): IDR's playbook, then the program's.
    names = " ".join([*playbooks, "management-prometheus.yml", "monitoring.yml", "postinstall.yml"])
    assert f"syntax check passed: {names}\n" in result.stdout
    # Every pinned role was found installed: ansible-galaxy fetched nothing.
    assert result.stdout.count("is already installed, skipping.") == 51


def test_a_playbook_that_fails_the_syntax_check_stops_the_step_before_any_host(idr_deployment, tmp_path):
    broken = idr_deployment / "ansible" / "idr-broken.yml"
    broken.write_text("- hosts: all\n  roles:\n    - role: ome.no_such_role\n")
    run = run_stack("prod", {"deploymentPath": str(idr_deployment),
                             "deploymentPlaybooks": '["idr-01-install-idr.yml", "idr-broken.yml"]'})
    (step,) = run.of_type("command:local:Command")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "IDR_INVENTORY": step.inputs["environment"]["IDR_INVENTORY"],
           # A full run's input, aimed at an address where nothing listens.
           "IDR_SSH_BASTION": "127.0.0.254", "IDR_SSH_PRIVATE_KEY": "unused",
           "IDR_DEPLOYMENT_SECRET_VARS": SECRET_VARS.format(password="pg-pw"),
           "IDR_DEPLOYMENT_DIGEST": step.inputs["environment"]["IDR_DEPLOYMENT_DIGEST"],
           "IDR_DEPLOYMENT_PROGRAM_VARS": step.inputs["environment"]["IDR_DEPLOYMENT_PROGRAM_VARS"]}
    try:
        result = subprocess.run(step.inputs["interpreter"] + [step.inputs["create"]], cwd=step.inputs["dir"],
                                env=env, capture_output=True, text=True, timeout=300)
    finally:
        broken.unlink()
    assert result.returncode != 0
    failed = [line for line in result.stderr.splitlines() if line.startswith("deployment failed:")]
    assert failed == ["deployment failed: syntax check of idr-broken.yml: ERROR! the role 'ome.no_such_role' "
                      "was not found in " + failed[0].split("was not found in ", 1)[-1]], result.stderr
    assert "== " not in result.stdout   # no playbook, not even the facts run, started


def _program_hosts_step(run, tmp_path: Path) -> tuple[Path, Path]:
    """The program's /etc/hosts step of one host (its script and block)."""
    files = {f["path"]: f for r in run.of_type("idr:host:HostFiles") if r.name == "prod-database-etc-hosts"
             for f in r.inputs["files"]}
    script, block = tmp_path / "idr-hosts-block", tmp_path / "hosts.block"
    script.write_text(files["/usr/local/sbin/idr-hosts-block"]["content"])
    block.write_text(files["/etc/idr/hosts.block"]["content"])
    return script, block


def test_idr_hosts_and_postinstall_for_real_one_owner_of_etc_hosts(idr_deployment, hosts, tmp_path):
    root, _ = hosts
    omero = tmp_path / "omero"
    state = tmp_path / "omero-state.json"
    state.write_text(json.dumps({"root_password": "root-pw", "groups": [], "users": [], "calls": []}))
    omero.write_text(f"#!/bin/sh\nexec {sys.executable} {PROJECT_DIR}/tests/support/omero_standin.py "
                     f"{state} \"$@\"\n")
    omero.chmod(0o755)
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text(yaml.safe_dump({
        "hosts_populate_iface": "lo",             # the loopback "hosts" have no eth0
        "omero_user_system": "root", "omero_user_bin_omero": str(omero),
        "idr_public_password_file": f"{tmp_path}/public/{{{{ inventory_hostname }}}}",
        "idr_deployment_record": f"{tmp_path}/records/{{{{ inventory_hostname }}}}"}))
    run, step = render_step({"deploymentPath": str(idr_deployment), "deploymentVarsFile": str(vars_file),
                             "deploymentPlaybooks": '["idr-hosts.yml"]'})
    secret = SECRET_VARS.format(password="pg-pw") + "idr_secret_public_password: public-pw\n"
    # The parts that run on Debian: IDR's /etc/hosts role and the post-install.
    tags = {"ANSIBLE_RUN_TAGS": "skip_if_molecule_docker,idr-postinstall"}

    # The program's hosts step before and after the playbooks, twice.
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n10.0.0.1 kept-by-the-operator\n")
    script, block = _program_hosts_step(run, tmp_path)
    etc_hosts = Path("/etc/hosts").read_bytes()
    target = Path(HOSTS_POPULATE_TARGET)
    try:
        assert subprocess.run(["bash", str(script), str(block), str(hosts_file)], check=True,
                              capture_output=True, text=True).stdout == f"updated: {hosts_file}\n"
        first = run_step(step, hosts, secret_vars=secret, extra_env=tags)
        assert first.returncode == 0, first.stdout + first.stderr
        written = target.read_text()
        second = run_step(step, hosts, secret_vars=secret, extra_env=tags)
        assert second.returncode == 0, second.stdout + second.stderr
        assert subprocess.run(["bash", str(script), str(block), str(hosts_file)], check=True,
                              capture_output=True, text=True).stdout == f"unchanged: {hosts_file}\n"
        # IDR's role wrote its file beside /etc/hosts, never /etc/hosts itself.
        assert Path("/etc/hosts").read_bytes() == etc_hosts
        assert target.read_text() == written
    finally:
        target.unlink(missing_ok=True)
        for backup in target.parent.glob(target.name + ".*"):   # the role's backup=true copies
            backup.unlink()

    # Every host, the proxy's included, from each host's own facts.
    names = sorted(NAMES[a] for a in (BASTION, *(ADDRESSES[ip] for ip in
                                                 ("192.168.1.11", "192.168.1.12", "192.168.1.101",
                                                  "192.168.1.102", "192.168.1.13"))))
    entries = re.findall(r"^([0-9.]+) (\S+) (\S+)$", written, re.M)
    assert sorted(e[1] for e in entries if e[1] != "localhost") == names
    assert ("127.0.0.1", "prod-proxy", "proxy") in entries
    # ... while no task ran on the proxy: it only gave its facts.
    assert "changed: [prod-proxy]" not in first.stdout and "ok: [prod-proxy]" in first.stdout
    # The program's block once, with every host once; the operator's line kept.
    text = hosts_file.read_text()
    assert text.count("# BEGIN IDR prod hosts") == 1 and "10.0.0.1 kept-by-the-operator\n" in text
    for name in names:
        assert len(re.findall(rf"^\S+ {re.escape(name)}( |$)", text, re.M)) == 1, name

    # The post-install: the group and the public user once, as configured.
    omero_state = json.loads(state.read_text())
    assert omero_state["groups"] == [{"name": "demo", "type": "read-only"}]
    assert omero_state["users"] == [{"login": "public", "name": "public user", "password": "public-pw",
                                     "group": "demo"}]
    adds = [c for c in omero_state["calls"] if "add" in c]
    assert len(adds) == 2     # both in the first run: the second only listed
    assert all(c[c.index("-w") + 1] == "root-pw" for c in omero_state["calls"])
    assert re.search(r"prod-omeroreadwrite\s*: ok=\d+\s+changed=0 ", second.stdout.split("== postinstall.yml")[1])
    assert (tmp_path / "public" / "prod-omeroreadonly-2").read_text() == "public-pw\n"
    # No password in the output, though every omero call held one.
    for text in (first.stdout + first.stderr, second.stdout + second.stderr):
        assert "root-pw" not in text and "public-pw" not in text and "pg-pw" not in text


class Munch(dict):
    """What shade returns for a server: a dict with attribute access."""
    __getattr__ = dict.__getitem__


def test_idrs_dynamic_inventory_finds_the_groups_and_the_bastion_of_our_instances(idr_deployment, prod_run,
                                                                                  monkeypatch):
    """IDR's inventories/openstack-idr.py, run on the instances as the program
    declares them (Nova's view: name, metadata, fixed and floating
    addresses): the same groups as the program's inventory, and every host
    reached through the proxy's floating IP (ssh_proxy_host)."""
    for name in ("shade", "shade.inventory", "os_client_config"):   # its cloud client: not called here
        monkeypatch.setitem(sys.modules, name, type(sys)(name))
    spec = importlib.util.spec_from_file_location("openstack_idr", idr_deployment / "inventories/openstack-idr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    floating = prod_run.outputs["floatingIp"]
    servers = []
    for instance in prod_run.of_type("openstack:compute/instance:Instance"):
        name = instance.inputs["name"]
        (fixed,) = [h["fixedIp"] for h in prod_run.outputs["hosts"] if h["name"] == name]
        addresses = [{"addr": fixed, "OS-EXT-IPS:type": "fixed"}]
        if name == "prod-proxy":
            addresses.append({"addr": floating, "OS-EXT-IPS:type": "floating"})
        servers.append(Munch(id=f"id-{name}", name=name, cloud="idr", region="regionOne", az=None, interface_ip=fixed,
                             metadata=Munch(instance.inputs["metadata"]), flavor={}, image={},
                             addresses={"prod-network": addresses}))

    class Cloud:
        def list_hosts(self, **_):   # shade.inventory.OpenStackInventory's
            return servers

    monkeypatch.delenv("OS_PROXY_DISCOVER", raising=False)
    found = module.get_host_groups_from_cloud(Cloud())
    names = {f"id-{s['name']}": s["name"] for s in servers}
    ours = yaml.safe_load(prod_run.outputs["inventory"])["all"]["children"]
    for group, body in ours.items():
        assert {names[i] for i in found[group]} == set(body["hosts"]), group
    hostvars = found["_meta"]["hostvars"]
    # Its inventory returns private addresses only: every host, the proxy
    # too, is reached through the proxy's floating IP.
    for server_id, name in names.items():
        assert hostvars[server_id]["ansible_ssh_common_args"] == f'-o ProxyCommand="ssh  -W %h:%p -q %r@{floating}"'
        assert hostvars[server_id]["ansible_host"] != floating, name


# ------------------------------------------------------------ monitoring

def test_the_blackbox_modules_keep_idrs_own_as_its_role_has_them(idr_deployment):
    """The program writes the blackbox exporter's whole file (IDR's modules
    and its own): IDR's part is the pinned role's file, module for module."""
    from components.render import monitoring
    role_file = idr_deployment / "ansible/vendor/ome.prometheus/files/etc-prometheus-blackbox-exporter.yml"
    idrs = yaml.safe_load(role_file.read_text())["modules"]
    ours = yaml.safe_load(monitoring.blackbox_config(settings_for()))["modules"]
    assert {name: ours[name] for name in idrs} == idrs
    assert set(ours) - set(idrs) == {monitoring.HOLDS_MODULE, monitoring.ANSWERS_MODULE}


def _render_idr_prometheus(idr_deployment: Path, run, out: Path) -> Path:
    """IDR's ome.prometheus templates (prometheus.yml, its alert rules) as
    its role renders them on the management host: Ansible's template module,
    IDR's play parameters from management-prometheus.yml, the program's vars
    last, the stack's inventory with each host's address as its facts would
    give it (ansible_eth0, ansible_hostname)."""
    ansible = idr_deployment / "ansible"
    role = ansible / "vendor" / "ome.prometheus"
    plays = yaml.safe_load((ansible / "management-prometheus.yml").read_text())
    (play,) = [p for p in plays if any(isinstance(r, dict) and r.get("role") == "ome.prometheus"
                                       for r in p.get("roles", []))]
    (params,) = [r for r in play["roles"] if r.get("role") == "ome.prometheus"]
    (step,) = run.of_type("command:local:Command")
    inventory = yaml.safe_load(step.inputs["environment"]["IDR_INVENTORY"])
    for name, host in inventory["all"]["hosts"].items():
        host.update(ansible_eth0={"ipv4": {"address": host["idr_fixed_ip"]}}, ansible_hostname=name)
    rules = out / "rules"
    rules.mkdir(parents=True)
    (out / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    (out / "idr-play.yml").write_text(yaml.safe_dump({**{k: v for k, v in params.items() if k != "role"},
                                                      **play.get("vars", {})}))
    (out / "program-vars.yml").write_text(step.inputs["environment"]["IDR_DEPLOYMENT_PROGRAM_VARS"])
    tasks = [{"ansible.builtin.template": {"src": str(role / "templates" / src), "dest": str(dest)}}
             for src, dest in (("etc-prometheus-prometheus-yml.j2", out / "prometheus.yml"),
                               ("etc-prometheus-default-alert-rules-yml.j2", rules / "default-alert.rules.yml"),
                               ("etc-prometheus-additional-alert-rules-yml.j2", rules / "additional-alert.rules.yml"))]
    (out / "render.yml").write_text(yaml.safe_dump([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars_files": [str(role / "defaults" / "main.yml")], "tasks": tasks}]))
    result = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(out / "inventory.yaml"),
                             "-e", f"idr_environment={run.stack}", "-e", f"@{out / 'idr-play.yml'}",
                             "-e", f"@{out / 'program-vars.yml'}", str(out / "render.yml")],
                            capture_output=True, text=True, cwd=ansible)
    assert result.returncode == 0, result.stdout + result.stderr
    # The program's rules beside IDR's: the file its host step puts there.
    (files,) = [r for r in run.resources
                if r.type == "idr:host:HostFiles" and r.name == f"{run.stack}-monitoring-management"]
    (text,) = [f["content"] for f in files.inputs["files"] if f["path"] == "/etc/prometheus/rules/idr.rules.yml"]
    (rules / "idr.rules.yml").write_text(text)
    return out / "prometheus.yml"


@pytest.mark.parametrize("stack", ["prod", "newidr"])
def test_idrs_prometheus_config_with_the_programs_vars_passes_promtool(idr_deployment, stack, tmp_path, prod_run):
    from tests.support.tools import tool
    run = run_stack(stack, {"deploymentPath": str(idr_deployment)},
                    stack_outputs={"prod": prod_run.outputs} if stack != "prod" else None)
    config = _render_idr_prometheus(idr_deployment, run, tmp_path)
    checked = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # IDR's 2 rules (instance_down) and the program's 8, each file checked.
    assert re.search(r"default-alert.rules.yml\n  SUCCESS: 2 rules found", checked.stdout), checked.stdout
    assert re.search(r"idr.rules.yml\n  SUCCESS: 9 rules found", checked.stdout), checked.stdout
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    proxy = f"{stack}-proxy"
    # Every host's node_exporter, the proxy's and the management host's included.
    nodes = [t for c in jobs["node-exporter"]["static_configs"] for t in c["targets"]]
    assert "192.168.1.10:9100" in nodes and "192.168.1.14:9100" in nodes and len(nodes) == 9
    assert jobs["nginx-mtail"]["static_configs"] == [{"targets": ["192.168.1.10:3903"], "labels": {"instance": proxy}}]
    external = jobs["blackbox_http_2xx_external"]["static_configs"][0]["targets"]
    assert external == ["https://idr.openmicroscopy.org/about/"]
    # The probes of idr:probeAddresses, through ome.prometheus's custom targets.
    for job in ("idr_address_holder", "idr_address_answers"):
        assert jobs[job]["static_configs"] == [{"targets": ["203.0.113.10", "203.0.113.20"]}]
    assert [t for c in jobs["postgres-exporter"]["static_configs"] for t in c["targets"]] == ["192.168.1.12:9187"]


def test_idrs_instance_down_alert_with_promtool(idr_deployment, tmp_path, prod_run):
    """IDR's only alert (a host or an exporter down), as its role renders it,
    on the Prometheus version the program runs."""
    from tests.support.tools import tool
    run = run_stack("prod", {"deploymentPath": str(idr_deployment)})
    _render_idr_prometheus(idr_deployment, run, tmp_path)
    rules = tmp_path / "rules" / "default-alert.rules.yml"
    down = {"job": "node-exporter", "instance": "prod-database"}

    def expected(severity, after):
        return {"exp_labels": {**down, "severity": severity},
                "exp_annotations": {"summary": f"Instance prod-database {'may be ' if severity == 'warn' else ''}down",
                                    "description": f"prod-database of job node-exporter has been down for more than "
                                                   f"{after}."}}
    series = 'up{job="node-exporter",instance="prod-database"}'
    tests = {"rule_files": [str(rules)], "evaluation_interval": "5s", "tests": [
        {"interval": "5s", "input_series": [{"series": series, "values": "0x60"}],
         "alert_rule_test": [{"eval_time": "3m", "alertname": "instance_down",
                              "exp_alerts": [expected("warn", "5s"), expected("error", "2m")]}]},
        {"interval": "5s", "input_series": [{"series": series, "values": "1x60"}],
         "alert_rule_test": [{"eval_time": "3m", "alertname": "instance_down", "exp_alerts": []}]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run([tool("promtool"), "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
