"""The deployment step under mocks: where it sits in the order of `pulumi up`,
what makes it run again, the inventory it runs against (checked with
ansible's own tools), and bad config refused before anything is declared."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from components.offline import PROJECT_DIR, IdrMocks, effective_config, run_config, run_stack
from components.settings import ConfigError
from tests.support.tools import VENV_BIN

LOCAL = "command:local:Command"
REMOTE = "command:remote:Command"
FIXTURE = "tests/fixtures/deployment"


def step_of(run):
    (step,) = run.of_type(LOCAL)
    return step


def test_the_step_waits_for_every_mount_and_hosts_step_and_what_needs_software_waits_for_it(every_feature_run):
    run = every_feature_run
    step = step_of(run)
    waits_for = set(step.options.depends_on)
    mounts = [c for c in run.of_type(REMOTE) if c.name.endswith("-mount") or c.name.endswith("-etc-hosts")]
    assert len(mounts) == len(run.outputs["dataVolumes"]) + len(run.outputs["hosts"])
    assert {c.urn for c in mounts} <= waits_for
    # The statement timeout and every regeneration step need PostgreSQL or OMERO.
    for cmd in run.of_type(REMOTE):
        if cmd.name.startswith(("prod-database-settings", "prod-bfcache")):
            assert step.urn in cmd.options.depends_on, cmd.name
    # The proxy's nginx does not wait: the playbooks never touch the proxy.
    nginx = run.named("prod-proxy-nginx-nginx", REMOTE)
    assert step.urn not in nginx.options.depends_on


def test_the_step_runs_the_playbooks_on_every_host_but_the_proxy(prod_run):
    step = step_of(prod_run)
    script = step.inputs["create"]
    # The hosts come from facts.yml's list, which never holds the proxy.
    assert '"$project/components/playbooks/facts.yml"' in script and 'limit=$(paste -sd, "$work/todo")' in script
    facts = yaml.safe_load((PROJECT_DIR / "components/playbooks/facts.yml").read_text())
    assert facts[0]["hosts"] == "{{ idr_environment }}-hosts"       # facts of all, the proxy's included
    assert facts[1]["hosts"] == "{{ idr_environment }}-hosts:!{{ idr_environment }}-proxy-hosts"
    assert 'run "$(basename "$playbook")" --limit "$limit" "$playbook"' in script
    assert "idr-01-install-idr.yml" in script and "idr_environment=prod" in script
    assert step.inputs["update"] == "true"       # a change of connection data runs nothing
    assert step.inputs["environment"]["IDR_INVENTORY"] == prod_run.outputs["inventory"]
    # Secrets reach it by its environment only, never in its text.
    assert "IDR_SSH_PRIVATE_KEY" in step.inputs["environment"]
    assert "PRIVATE KEY" not in script and "OFFLINE RENDER" not in script


def _program_vars(run) -> dict:
    return yaml.safe_load(step_of(run).inputs["environment"]["IDR_DEPLOYMENT_PROGRAM_VARS"])


def test_the_statement_timeout_and_hosts_file_reach_the_playbooks_last(prod_run):
    script = step_of(prod_run).inputs["create"]
    # After the operator's vars file and the secret vars: the program's win.
    assert script.index('extra+=(-e "@$work/program-vars.yml")') > script.index('extra+=(-e "@$work/secret-vars.yml")')
    # (prod's monitoring vars: tests/test_monitoring.py)
    assert {k: v for k, v in _program_vars(prod_run).items() if not k.startswith(("prometheus_", "idr_monitoring"))} == {
        "hosts_populate_etc_hosts": "/etc/hosts.idr-playbooks",
        "idr_omero_readonly_database": {"name": "idr", "user": "omeroreadonly",
                                        "password": "{{ idr_secret_postgresql_password_ro }}",
                                        "statement_timeout": 60000}}
    run = run_stack("prod", {"statementTimeoutMs": "45000"})
    assert _program_vars(run)["idr_omero_readonly_database"]["statement_timeout"] == 45000
    # A new timeout does not run every playbook again (same script and
    # triggers: pulumi-command's update, `true`, only stores the new vars):
    # the SQL step applies it now, the playbooks keep it whenever they run.
    assert _shape(run) == _shape(prod_run) and _digest(run) == _digest(prod_run)
    sql = run.named("prod-database-settings-statement-timeout", REMOTE)
    assert sql.inputs["triggers"] != prod_run.named(sql.name, REMOTE).inputs["triggers"]


def _digest(run):
    return step_of(run).inputs["environment"]["IDR_DEPLOYMENT_DIGEST"]


@pytest.mark.parametrize("change", [{"omeroreadonlyCount": "5"}, {"sshBastion": "198.51.100.7"},
                                    {"bfcacheGeneration": "2"}, {"statementTimeoutMs": "30000"}])
def test_a_changed_host_set_keeps_the_digest_so_only_new_hosts_are_deployed(prod_run, change):
    """The step skips hosts that recorded its digest (facts.yml): a new or
    replaced server changes the triggers, not the digest."""
    assert _digest(run_stack("prod", change)) == _digest(prod_run)


@pytest.mark.parametrize("change", [
    {"deploymentGeneration": "1"},
    {"deploymentRef": "0123456789abcdef0123456789abcdef01234567"},
    {"deploymentVarsFile": f"{FIXTURE}/ansible/group_vars/all.yml"},
    {"deploymentPlaybooks": '["idr-01-install-idr.yml", "idr-02-services.yml"]'},
    {"deploymentExtraGroups": '["ebi-nfs=omeroreadwrite"]'},
    {"deploymentSecretVars": "omero_server_rootpassword: a\nidr_secret_postgresql_password: b\n"
                             "idr_secret_postgresql_password_ro: c\n"},
])
def test_what_is_deployed_changes_the_digest_so_every_host_is_deployed(prod_run, change):
    assert _digest(run_stack("prod", change)) != _digest(prod_run)


def test_extra_groups_reach_the_inventory_and_the_instances_metadata():
    run = run_stack("prod", {"deploymentExtraGroups": '["ebi-nfs=omeroreadwrite", "uod-nfs=omeroreadwrite", '
                                                      '"uod-nfs=omeroreadonly"]', "omeroreadonlyCount": "2"})
    inv = yaml.safe_load(run.outputs["inventory"])
    assert set(inv["all"]["children"]["prod-ebi-nfs"]["hosts"]) == {"prod-omeroreadwrite"}
    assert set(inv["all"]["children"]["prod-uod-nfs"]["hosts"]) == {"prod-omeroreadwrite", "prod-omeroreadonly-1",
                                                                    "prod-omeroreadonly-2"}
    metadata = {i.inputs["name"]: i.inputs["metadata"] for i in run.of_type("openstack:compute/instance:Instance")}
    assert metadata["prod-omeroreadwrite"]["groups"].endswith(",prod-ebi-nfs,prod-uod-nfs")
    assert "nfs" not in metadata["prod-database"]["groups"]


def test_instances_tell_idrs_dynamic_inventory_how_to_reach_them(prod_run):
    """IDR's inventories/openstack-idr.py: `ssh_proxy_host=proxy` marks the
    bastion, `required` the hosts reached through it. Metadata changes in place."""
    for instance in prod_run.of_type("openstack:compute/instance:Instance"):
        expected = "proxy" if instance.inputs["name"] == "prod-proxy" else "required"
        assert instance.inputs["metadata"]["ssh_proxy_host"] == expected


def _shape(run):
    step = step_of(run)
    return step.inputs["create"], step.inputs["triggers"]


@pytest.mark.parametrize("change", [
    {"sshBastion": "198.51.100.7"},                # a swap moves the bastion
    {"floatingIp": "203.0.113.99"},
    {"sshBastionHostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKUKz3MaP5c9vbrtDe+443tLoJwM33BYhOrINrUY02Aj"},
    {"cachePurgeGeneration": "3"}, {"bfcacheGeneration": "2"}, {"maintenance": "true"},
])
def test_connection_and_unrelated_changes_do_not_rerun_the_playbooks(prod_run, change):
    assert _shape(run_stack("prod", change)) == _shape(prod_run)


@pytest.mark.parametrize("change", [
    {"deploymentGeneration": "1"},
    {"deploymentRef": "0123456789abcdef0123456789abcdef01234567"},
    {"deploymentPlaybooks": '["idr-01-install-idr.yml", "idr-02-services.yml"]'},
    {"omeroreadonlyCount": "5"},                   # the set of hosts
    {"deploymentVarsFile": f"{FIXTURE}/ansible/group_vars/all.yml"},
    {"deploymentPath": FIXTURE},
])
def test_the_playbooks_run_again_on_their_triggers(prod_run, change):
    before_create, before = _shape(prod_run)
    after_create, after = _shape(run_stack("prod", change))
    assert after != before


def test_a_changed_vars_file_or_checkout_runs_them_again(tmp_path):
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text("a: 1\n")
    first = _shape(run_stack("prod", {"deploymentVarsFile": str(vars_file)}))
    assert _shape(run_stack("prod", {"deploymentVarsFile": str(vars_file)})) == first
    vars_file.write_text("a: 2\n")
    assert _shape(run_stack("prod", {"deploymentVarsFile": str(vars_file)}))[1] != first[1]


def test_a_replaced_server_runs_them_again_but_not_a_replaced_proxy(prod_run):
    step = step_of(prod_run)
    ids = {i.name: i.id for i in prod_run.of_type("openstack:compute/instance:Instance")}
    for name, instance_id in ids.items():
        assert (instance_id in step.inputs["triggers"]) == (name != "prod-proxy"), name


def test_switched_off_no_step_and_software_steps_wait_in_one_line(tmp_path):
    run = run_stack("prod", {"deploymentEnabled": "false", "deploymentRef": ""})
    assert run.of_type(LOCAL) == []
    apply_sql = next(f for r in run.of_type("idr:host:HostFiles") for f in r.inputs["files"]
                     if f["path"] == "/usr/local/sbin/idr-apply-sql")
    # Run it for real on a machine without PostgreSQL: one line, success.
    script = tmp_path / "idr-apply-sql"
    script.write_text(apply_sql["content"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hostname").symlink_to("/bin/hostname")
    result = subprocess.run(["/bin/bash", str(script), "/dev/null"], capture_output=True, text=True,
                            env={"PATH": str(bin_dir)})
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("waiting for PostgreSQL on ") and "bump idr:deploymentGeneration" in result.stdout
    # With the step on, the same absence is a failure.
    on = next(f for r in run_stack("prod").of_type("idr:host:HostFiles") for f in r.inputs["files"]
              if f["path"] == "/usr/local/sbin/idr-apply-sql")
    script.write_text(on["content"])
    failed = subprocess.run(["/bin/bash", str(script), "/dev/null"], capture_output=True, text=True,
                            env={"PATH": str(bin_dir)})
    assert failed.returncode == 1 and "deployment playbooks should have installed PostgreSQL" in failed.stderr
    # A bump re-runs the statement timeout once the software is there.
    timeout = run.named("prod-database-settings-statement-timeout", REMOTE)
    bumped = run_stack("prod", {"deploymentEnabled": "false", "deploymentRef": "", "deploymentGeneration": "1"})
    assert bumped.named(timeout.name, REMOTE).inputs["triggers"] != timeout.inputs["triggers"]


def test_offline_render_writes_the_local_step(rendered):
    script = rendered["prod"] / "local" / ".commands" / "prod-deployment.sh"
    assert script.read_text().startswith("#!/bin/bash\n# Deployment step of the prod environment")
    result = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# ------------------------------------------------------------- inventory

PATTERNS = {
    "prod-hosts": "all", "prod-database-hosts": {"database"},
    "prod-omero-hosts": {"omeroreadwrite", "omeroreadonly"}, "prod-omeroreadwrite-hosts": {"omeroreadwrite"},
    "prod-omeroreadonly-hosts": {"omeroreadonly"}, "prod-proxy-hosts": {"proxy"},
    "prod-bastion-hosts": {"proxy"}, "prod-dockermanager-hosts": {"dockermanager"},
    "prod-docker-hosts": {"dockermanager"},
    "database-hosts": {"database"}, "omero-hosts": {"omeroreadwrite", "omeroreadonly"},
    "omeroreadwrite-hosts": {"omeroreadwrite"}, "omeroreadonly-hosts": {"omeroreadonly"},
    "proxy-hosts": {"proxy"}, "bastion-hosts": {"proxy"}, "dockermanager-hosts": {"dockermanager"},
}


def _expected(run, roles) -> set[str]:
    return {h["name"] for h in run.outputs["hosts"] if roles == "all" or h["role"] in roles}


def test_ansible_inventory_graph_shows_idrs_groups(rendered, prod_run):
    result = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(rendered["prod"] / "inventory.yaml"),
                             "--graph"], capture_output=True, text=True, check=True)
    graph = result.stdout
    for group in PATTERNS:
        assert f"@{group}:" in graph, group


@pytest.mark.parametrize("pattern", sorted(PATTERNS) + ["prod-hosts:!prod-proxy-hosts"])
def test_ansible_playbook_list_hosts_for_each_pattern(rendered, prod_run, tmp_path, pattern):
    playbook = tmp_path / "probe.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": pattern, "gather_facts": False, "tasks": []}]))
    result = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", str(rendered["prod"] / "inventory.yaml"),
                             "--list-hosts", str(playbook)], capture_output=True, text=True, check=True)
    listed = {line.strip() for line in result.stdout.split("hosts (", 1)[1].splitlines()[1:] if line.strip()}
    if pattern == "prod-hosts:!prod-proxy-hosts":
        assert listed == _expected(prod_run, "all") - {"prod-proxy"}
    else:
        assert listed == _expected(prod_run, PATTERNS[pattern])


def test_inventory_reaches_hosts_through_the_proxy_and_sets_the_environment(prod_run):
    inv = yaml.safe_load(prod_run.outputs["inventory"])
    assert inv["all"]["vars"]["idr_environment"] == "prod"
    hosts = inv["all"]["hosts"]
    assert hosts["prod-proxy"]["ansible_host"] == "203.0.113.10"
    assert hosts["prod-database"]["ansible_host"] == "192.168.1.12"
    assert hosts["prod-database"]["ansible_ssh_common_args"] == "-o ProxyJump=rocky@203.0.113.10"


def test_instance_metadata_groups_match_the_inventory(prod_run):
    """IDR's dynamic inventory builds groups from the metadata key `groups`."""
    inv = yaml.safe_load(prod_run.outputs["inventory"])
    members: dict[str, set[str]] = {}
    for group, body in inv["all"]["children"].items():
        for host in body["hosts"]:
            members.setdefault(host, set()).add(group)
    for instance in prod_run.of_type("openstack:compute/instance:Instance"):
        groups = instance.inputs["metadata"]["groups"]
        assert set(groups.split(",")) == members[instance.inputs["name"]]
        assert len(groups) <= 255      # Nova's limit on a metadata value


def test_metadata_groups_fit_novas_limit_with_the_longest_environment_name():
    run = run_stack("prod", {"environment": "a" * 32, "omeroreadonlyCount": "2"})
    for instance in run.of_type("openstack:compute/instance:Instance"):
        assert len(instance.inputs["metadata"]["groups"]) <= 255


def test_host_groups_of_every_role():
    run = run_stack("prod", {"omeroreadonlyCount": "1"})
    names = {i.inputs["name"]: i.inputs["metadata"]["groups"].split(",") for i in run.of_type(
        "openstack:compute/instance:Instance")}
    assert names["prod-proxy"] == ["prod-hosts", "prod-proxy-hosts", "prod-bastion-hosts", "proxy-hosts",
                                   "bastion-hosts"]
    assert names["prod-omeroreadonly-1"] == ["prod-hosts", "prod-omeroreadonly-hosts", "prod-omero-hosts",
                                             "omeroreadonly-hosts", "omero-hosts"]
    assert names["prod-dockermanager"] == ["prod-hosts", "prod-dockermanager-hosts", "prod-docker-hosts",
                                           "dockermanager-hosts", "docker-hosts"]


# ------------------------------------------------------------- bad input

BAD = [
    ({"deploymentPath": "/nonexistent/deployment"}, "idr:deploymentPath", "/nonexistent/deployment",
     "a checkout of IDR/deployment"),
    ({"deploymentPath": FIXTURE, "deploymentPlaybooks": '["idr-09-nope.yml"]'}, "idr:deploymentPlaybooks",
     "idr-09-nope.yml", "playbooks that exist in"),
    ({"deploymentVarsFile": "/nonexistent/vars.yml"}, "idr:deploymentVarsFile", "/nonexistent/vars.yml",
     "a readable YAML file"),
    ({"deploymentVarsFile": FIXTURE}, "idr:deploymentVarsFile", FIXTURE, "a readable YAML file"),
    ({"deploymentVarsFile": f"{FIXTURE}/ansible/idr-01-install-idr.yml"}, "idr:deploymentVarsFile",
     "idr-01-install-idr.yml", "a YAML mapping"),
    ({"deploymentPlaybooks": '["idr-00-preinstall.yml"]'}, "idr:deploymentPlaybooks", "idr-00-preinstall.yml",
     "formats and mounts volumes"),
    ({"deploymentPlaybooks": '["idr-03-postinstall.yml"]'}, "idr:deploymentPlaybooks", "idr-03-postinstall.yml",
     "not idempotent"),
    ({"deploymentPlaybooks": '["../x.yml"]'}, "idr:deploymentPlaybooks", "../x.yml", "without '/'"),
    ({"deploymentPlaybooks": "[]"}, "idr:deploymentPlaybooks", "[]", "at least one playbook"),
    ({"deploymentRef": ""}, "idr:deploymentRef", "''", "or set deploymentPath to a local checkout"),
    ({"deploymentRef": "--upload-pack=x"}, "idr:deploymentRef", "--upload-pack", "a commit hash or tag name"),
    ({"deploymentRepository": "-oProxyCommand=x"}, "idr:deploymentRepository", "-oProxyCommand", "a git URL"),
    ({"deploymentGeneration": "-1"}, "idr:deploymentGeneration", "-1", "from 0 to"),
    ({"omeroWebPort": "0"}, "idr:omeroWebPort", "0", "from 1 to 65535"),
    ({"sessionCookieName": "session id"}, "idr:sessionCookieName", "'session id'", "a cookie name"),
    ({"omeroCliRenderVersion": "latest"}, "idr:omeroCliRenderVersion", "'latest'", "a release number"),
    ({"tlsCertificateChain": "not a certificate"}, "idr:tlsCertificateChain", "not a certificate", "PEM certificates"),
    ({"deploymentExtraGroups": '["ebi-nfs"]'}, "idr:deploymentExtraGroups", "ebi-nfs", "entries 'group=role'"),
    ({"deploymentExtraGroups": '["ebi-nfs=nfs"]'}, "idr:deploymentExtraGroups", "ebi-nfs=nfs", "a known role"),
    ({"deploymentExtraGroups": '["omero-hosts=proxy"]'}, "idr:deploymentExtraGroups", "omero-hosts=proxy",
     "a group the inventory does not already have"),
    # The secret vars with the step on: never their text in the message.
    ({"deploymentSecretVars": None}, "idr:deploymentSecretVars", "(secret)", "set (the deployment step is on)"),
    ({"deploymentSecretVars": "idr_secret_postgresql_password: s3cr3t-a\nidr_secret_postgresql_password_ro: s3cr3t-b\n"},
     "idr:deploymentSecretVars", "(secret)", "omero_server_rootpassword (OMERO's root password"),
    ({"deploymentSecretVars": "omero_server_rootpassword: s3cr3t-c\nidr_secret_postgresql_password: omero\n"
                              "idr_secret_postgresql_password_ro: s3cr3t-d\n"},
     "idr:deploymentSecretVars", "(secret)", "passwords other than the roles' default 'omero'"),
    ({"deploymentSecretVars": "- s3cr3t-e\n"}, "idr:deploymentSecretVars", "(secret)", "a YAML mapping"),
]


@pytest.mark.parametrize("overrides,key,value,allowed", BAD, ids=[b[1] + "=" + b[2][:20] for b in BAD])
def test_bad_deployment_config_is_one_line_before_anything_is_declared(overrides, key, value, allowed):
    config, secrets = effective_config("prod", overrides)
    mocks = IdrMocks()
    with pytest.raises(ConfigError) as error:
        run_config("prod", config, secrets, mocks)
    message = str(error.value)
    assert message.startswith(f"config {key} = ") and "\n" not in message
    assert value in message and allowed in message
    assert "s3cr3t" not in message
    assert mocks.calls == []


def test_a_private_key_is_required_with_a_certificate_chain():
    config, secrets = effective_config("prod", {"tlsCertificateChain": _CERT, "tlsPrivateKey": None})
    with pytest.raises(ConfigError, match=r"config idr:tlsPrivateKey = None is not allowed: a secret, required"):
        run_config("prod", config, secrets, IdrMocks())


_CERT = """-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUQk0mBmM1nZ6v7y1bRw6mX0xB8r8wCgYIKoZIzj0EAwIw
-----END CERTIFICATE-----"""


def test_relative_paths_are_the_projects():
    run = run_stack("prod", {"deploymentPath": FIXTURE, "deploymentVarsFile": f"{FIXTURE}/ansible/group_vars/all.yml"})
    script = step_of(run).inputs["create"]
    # As configured: the step reads the same on every operator's machine.
    assert f"cd {FIXTURE} && pwd" in script and str(PROJECT_DIR) not in script
    assert Path(FIXTURE, "ansible/idr-01-install-idr.yml").exists()
