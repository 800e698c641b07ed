"""The probes of idr:probeAddresses under mocks: the key's validation, the
scrape jobs and modules the program hands IDR's playbooks, the dashboard
panel, what setting the key does to a running prod, and that a swap (the
two stacks' floatingIp exchanged) changes no rendered file. nginx's answer
and the real blackbox exporter: tests/integration/test_monitoring_probes.py."""
from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from components.hostfiles import TYPE as HOSTFILES
from components.layout import ENVIRONMENT_PATH
from components.offline import run_stack
from components.render import monitoring
from components.render.__main__ import write_tree
from components.settings import ConfigError
from tests.support.settings import settings_for

PUBLIC, SPARE = "203.0.113.10", "203.0.113.20"
REMOTE, LOCAL = "command:remote:Command", "command:local:Command"


@pytest.mark.parametrize("value,shown,allowed", [
    ('["203.0.113.300"]', "'203.0.113.300'", "an IPv4 address such as 203.0.113.10"),
    ('["203.0.113.10", "203.0.113.10"]', "'203.0.113.10', '203.0.113.10'", "IPv4 addresses, each once"),
    ("203.0.113.10", "'203.0.113.10'", "a list of strings"),
])
def test_bad_probe_addresses_name_key_value_and_what_is_allowed(value, shown, allowed):
    with pytest.raises(ConfigError) as error:
        run_stack("prod", {"probeAddresses": value})
    message = str(error.value)
    assert message.startswith("config idr:probeAddresses = ") and "\n" not in message
    assert shown in message and allowed in message
    assert isinstance(error.value, pulumi.RunError)


def test_both_stack_files_list_the_same_addresses_holding_their_floating_ip():
    prod, newidr = settings_for("prod"), settings_for("newidr")
    assert prod.probe_addresses == newidr.probe_addresses == (PUBLIC, SPARE)
    assert prod.floating_ip == PUBLIC and newidr.floating_ip == SPARE
    assert monitoring.probe_list_warning(prod) == monitoring.probe_list_warning(newidr) == ""


def test_a_floating_ip_outside_the_list_is_a_warning_not_a_refusal(monkeypatch):
    """A floating IP moved by hand, or a new spare, must not stop an update
    for a monitoring list: the update runs, and says what to fix."""
    said = []
    monkeypatch.setattr("components.monitoring.pulumi.log.warn", lambda text, resource=None: said.append(text))
    run = run_stack("prod", {"floatingIp": "203.0.113.99"})
    assert run.of_type("openstack:networking/floatingIpAssociate:FloatingIpAssociate")
    assert said == ["config idr:probeAddresses = ['203.0.113.10', '203.0.113.20'] does not hold idr:floatingIp "
                    "(203.0.113.99): nothing probes which environment holds it; list the public and the spare "
                    "address, the same in both stack files"]
    said.clear()
    run_stack("prod")
    assert said == []


def test_program_vars_probe_every_address_with_both_modules(prod_run):
    step = prod_run.named("prod-deployment", LOCAL)
    values = yaml.safe_load(step.inputs["environment"]["IDR_DEPLOYMENT_PROGRAM_VARS"])
    jobs = {j["job_name"]: j for j in values["prometheus_custom_targets"]}
    for job, module in ((monitoring.HOLDS_JOB, monitoring.HOLDS_MODULE),
                        (monitoring.ANSWERS_JOB, monitoring.ANSWERS_MODULE)):
        assert jobs[job]["params"] == {"module": [module]}
        assert jobs[job]["static_configs"] == [{"targets": [PUBLIC, SPARE]}]
        target, instance, address = jobs[job]["relabel_configs"]
        assert target["replacement"] == f"http://${{1}}{ENVIRONMENT_PATH}"   # plain HTTP to the address
        assert instance == {"source_labels": ["__address__"], "target_label": "instance"}
        assert address["replacement"] == "blackbox-exporter:9115"          # IDR's container, as its own jobs
    assert values["prometheus_blackboxexporter_version"] == monitoring.BLACKBOX_VERSION
    assert values["idr_monitoring"]["blackbox_file"] == monitoring.BLACKBOX_FILE
    # The modules: IDR's own kept (its jobs use http_2xx, rsync_banner), the program's added.
    config = yaml.safe_load(monitoring.blackbox_config(settings_for("prod")))
    assert set(config["modules"]) >= {"http_2xx", "rsync_banner", monitoring.HOLDS_MODULE, monitoring.ANSWERS_MODULE}
    holds = config["modules"][monitoring.HOLDS_MODULE]["http"]
    assert holds["fail_if_body_not_matches_regexp"] == [r"\Aprod\n\z"]
    newidr = yaml.safe_load(monitoring.blackbox_config(settings_for("newidr")))
    assert newidr["modules"][monitoring.HOLDS_MODULE]["http"]["fail_if_body_not_matches_regexp"] == [r"\Anewidr\n\z"]


def test_no_list_no_probe_jobs():
    jobs = monitoring.scrape_jobs(settings_for("prod", {"probeAddresses": "[]"}))
    assert [j["job_name"] for j in jobs] == ["nginx-mtail"]


def test_dashboard_and_alert_read_the_jobs_the_program_scrapes():
    board = json.loads((monitoring.FILES / "grafana" / "idr-cache.json").read_text())
    (panel,) = [p for p in board["panels"] if "probeAddresses" in p["title"]]
    assert [t["expr"] for t in panel["targets"]] == [f'probe_success{{job="{monitoring.HOLDS_JOB}"}}',
                                                      f'probe_success{{job="{monitoring.ANSWERS_JOB}"}}']
    rules = [r for g in monitoring.rules(settings_for("prod"))["groups"] for r in g["rules"]]
    (silent,) = [r for r in rules if r["alert"] == "ProbeAddressSilent"]
    assert silent["expr"] == f'probe_success{{job="{monitoring.ANSWERS_JOB}"}} == 0'


def test_playbook_puts_the_modules_where_the_exporter_reads_them():
    (play,) = yaml.safe_load((monitoring.FILES.parent.parent / "playbooks" / "monitoring.yml").read_text())
    tasks = {t["name"]: t for t in play["tasks"]}
    copy = tasks["Blackbox exporter configuration"]["ansible.builtin.copy"]
    assert (copy["src"], copy["dest"], copy["remote_src"]) == (
        "{{ idr_monitoring.blackbox_file }}", "{{ idr_monitoring.blackbox_target }}", True)
    assert monitoring.BLACKBOX_TARGET == "/etc/prometheus/blackbox-exporter.yml"  # ome.prometheus's mount
    hup = tasks["Blackbox exporter reads its configuration again"]
    assert hup["when"] == "idr_blackbox_config is changed" and "HUP blackbox-exporter" in hup["ansible.builtin.command"]


def _tree(tmp_path, name, overrides):
    out = tmp_path / name
    write_tree(run_stack("prod", overrides), out)
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("bastion", ["", PUBLIC])
def test_a_swap_changes_no_rendered_file(tmp_path, bastion):
    """prod with newidr's floatingIp (a swap exchanges the two): every file
    on every host, and what the deployment step runs with, byte-identical.
    Only the stack's own outputs name the address (and the inventory's
    bastion, when it follows the floating IP)."""
    pinned = {"sshBastion": bastion} if bastion else {}
    before = _tree(tmp_path, "before", pinned)
    after = _tree(tmp_path, "after", {"floatingIp": SPARE, **pinned})
    differ = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    assert differ <= {"outputs.json", "resources.txt", "inventory.yaml"}
    assert ("inventory.yaml" in differ) == (not bastion)
    for path in ("prod-management/etc/idr/blackbox-exporter.yml", "prod-proxy/etc/nginx/conf.d/idr.conf",
                 "local/.commands/prod-deployment.program-vars.yml"):
        assert path in before and before[path] == after[path]
    # The probes name both addresses, whichever this stack holds.
    jobs = yaml.safe_load(before["local/.commands/prod-deployment.program-vars.yml"])["prometheus_custom_targets"]
    assert [j["static_configs"] for j in jobs if j["job_name"] == monitoring.HOLDS_JOB] == [[{"targets": [PUBLIC, SPARE]}]]


def test_setting_the_list_on_a_running_prod_reruns_only_the_playbooks():
    """No server, volume, port or rule changes; the deployment step runs
    again (new scrape jobs), nothing else: the blackbox modules and nginx's
    answer do not depend on the list."""
    first = run_stack("prod", {"probeAddresses": "[]"})
    after = run_stack("prod", deployed=first.outputs)
    changed = {(r.type, r.name) for r in after.resources
               if (b := first.by_urn(r.urn)) is None or b.inputs != r.inputs}
    assert {(t, n) for t, n in changed if t not in (HOSTFILES, REMOTE, LOCAL)} == set()
    assert {n for t, n in changed if t in (HOSTFILES, REMOTE, LOCAL)} == {"prod-deployment"}


def test_mtail_s_new_scheduling_on_a_running_prod_reruns_only_the_proxy_exporters(monkeypatch):
    """A prod deployed with the unit as it was (Nice=10), updated to
    SCHED_IDLE: only the proxy's exporter step runs again (it reinstalls the
    unit and restarts mtail and node_exporter); no server, volume, port or
    rule changes, nginx's files and the deployment step stay as they are."""
    real = monitoring.proxy_files

    def as_before(s):
        files = real(s)
        for f in files:
            if f.path.endswith("/idr-mtail.service"):
                assert "CPUSchedulingPolicy=idle\n" in f.content
                object.__setattr__(f, "content", f.content.replace("CPUSchedulingPolicy=idle\nIOSchedulingClass=idle\n",
                                                                   "Nice=10\n"))
        return files

    monkeypatch.setattr(monitoring, "proxy_files", as_before)
    first = run_stack("prod")
    monkeypatch.setattr(monitoring, "proxy_files", real)
    after = run_stack("prod", deployed=first.outputs)
    changed = {(r.type, r.name) for r in after.resources
               if (b := first.by_urn(r.urn)) is None or b.inputs != r.inputs}
    assert changed == {(HOSTFILES, "prod-monitoring-proxy-exporters"), (REMOTE, "prod-monitoring-proxy-exporters")}
