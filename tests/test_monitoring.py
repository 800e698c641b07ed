"""Monitoring (idr:monitoringEnabled): the management host under mocks, and
every rendered monitoring file checked by the software that reads it:
promtool (rules, every alert unit-tested: fires on the bad series, silent on
the good; the dashboards' queries), amtool (Alertmanager's configuration as
Ansible renders it, for each receiver), mtail (its program compiles, its URL
families are nginx's). The cache metrics from real nginx's access log:
tests/integration/test_monitoring_cache.py.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from components import layout
from components.layout import MONITORING_LOCATIONS
from components.offline import run_stack
from components.render import monitoring, nginx
from components.render.deployment import program_vars
from components.settings import ConfigError
from tests.support.settings import SECRET_VARS, settings_for
from tests.support.tools import VENV_BIN, tool

INSTANCE, PORT, VOLUME, ATTACH = ("openstack:compute/instance:Instance", "openstack:networking/port:Port",
                                  "openstack:blockstorage/volume:Volume", "openstack:compute/volumeAttach:VolumeAttach")
RULE, FIP = "openstack:networking/secGroupRule:SecGroupRule", "openstack:networking/floatingIpAssociate:FloatingIpAssociate"
INFRA = {INSTANCE, PORT, VOLUME, ATTACH, RULE, FIP, "openstack:networking/secGroup:SecGroup",
         "openstack:networking/network:Network", "openstack:networking/subnet:Subnet"}
PROMTOOL, AMTOOL, MTAIL = tool("promtool"), tool("amtool"), tool("mtail")
PLAYBOOKS = Path(__file__).resolve().parent.parent / "components" / "playbooks"
RAW = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY test", "floatingIp": "203.0.113.10",
       "deploymentRef": "61583a53cbf940c84a7b0919653cd5a2901e3483", "monitoringEnabled": "true",
       "deploymentSecretVars": SECRET_VARS}


def settings(**raw):
    values = {**RAW, **raw}
    return settings_for("prod", base=values, secret=lambda k: "secret" if k == "sshPrivateKey" else values.get(k))


def run_tool(*cmd, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)


# ------------------------------------------------------------ under mocks

def test_management_host_internal_only_with_its_protected_volume(prod_run):
    run = prod_run
    host = run.named("prod-management", INSTANCE)
    assert host.inputs["flavorName"] == "m1.medium"
    assert host.options.protect and host.options.delete_before_replace
    port = run.named("prod-management", PORT)
    internal = run.named("prod-internal", "openstack:networking/secGroup:SecGroup").id
    # The internal group only: nothing of the management host is public.
    assert port.inputs["securityGroupIds"] == [internal]
    assert port.inputs["fixedIps"][0]["ipAddress"] == "192.168.1.14"
    assert all(a.inputs["portId"] != port.id for a in run.of_type(FIP))
    volume = run.named("prod-management-data", VOLUME)
    assert volume.inputs["size"] == 100 and volume.options.protect and volume.options.retain_on_delete
    assert volume.inputs["metadata"]["idr-mount"] == "/data"
    (attach,) = [a for a in run.of_type(ATTACH) if a.inputs["volumeId"] == volume.id]
    assert attach.inputs["instanceId"] == host.id
    groups = yaml.safe_load(run.outputs["inventory"])["all"]["children"]
    assert list(groups["prod-management-hosts"]["hosts"]) == ["prod-management"]
    assert "prod-management" in groups["prod-hosts"]["hosts"] and "prod-management" in groups["management-hosts"]["hosts"]


def test_the_management_volume_is_never_cloned(newidr_run, prod_run):
    """newidr clones prod's data volumes (cloneFromStack), never its metrics:
    a release starts empty, or from a snapshot of its own."""
    volume = newidr_run.named("newidr-management-data", VOLUME)
    assert "sourceVolId" not in volume.inputs and "snapshotId" not in volume.inputs
    assert "sourceVolId" in newidr_run.named("newidr-database-data", VOLUME).inputs
    snap = "aaaabbbb-cccc-dddd-eeee-ffff00001111"
    restored = run_stack("newidr", {"managementVolumeFromSnapshot": snap}, stack_outputs={"prod": prod_run.outputs})
    assert restored.named("newidr-management-data", VOLUME).inputs["snapshotId"] == snap


def test_enabling_monitoring_on_a_running_prod_only_adds_the_host_and_its_volume():
    """Nothing existing is replaced or changed: every server, port, volume,
    attachment, group and rule keeps its inputs; the additions are the
    management server, its port, volume and attachment (no rule: the
    internal group already admits every host of the environment)."""
    before = run_stack("prod", {"monitoringEnabled": "false"})
    after = run_stack("prod", deployed=before.outputs)
    old = {r.urn: r for r in before.resources if r.type in INFRA}
    new = {r.urn: r for r in after.resources if r.type in INFRA}
    assert old.keys() <= new.keys()
    for urn, r in old.items():
        kept = {k: v for k, v in new[urn].inputs.items() if k not in new[urn].options.ignore_changes}
        assert kept == {k: v for k, v in r.inputs.items() if k not in r.options.ignore_changes}, r.name
    assert sorted((new[u].type, new[u].name) for u in new.keys() - old.keys()) == sorted([
        (INSTANCE, "prod-management"), (PORT, "prod-management"), (VOLUME, "prod-management-data"),
        (ATTACH, "prod-management-data")])
    # Turning it off again would delete them: every one is protected, so the
    # engine stops before any change until an operator unprotects them.
    for urn in new.keys() - old.keys():
        assert new[urn].options.protect, new[urn].name


def test_monitoring_off_declares_nothing_of_it_and_routes_nothing():
    off = settings(monitoringEnabled="false")
    assert [h.role for h in layout.hosts(off)].count("management") == 0
    conf = nginx.idr_conf(off)
    assert "/grafana" not in conf and "/prometheus/federate" not in conf and "idr_grafana" not in conf
    assert "prometheus_node_args" not in yaml.safe_load(program_vars(off))
    on = nginx.idr_conf(settings())
    for location in MONITORING_LOCATIONS:
        assert on.count(f"location {location} {{") == 2, location      # HTTP and HTTPS
    assert "server 192.168.1.14:3000;" in on and "server 192.168.1.14:9090;" in on


def test_the_step_runs_idrs_monitoring_playbook_then_the_programs(prod_run):
    (step,) = prod_run.of_type("command:local:Command")
    script = step.inputs["create"]
    assert ('playbooks=(idr-01-install-idr.yml management-prometheus.yml "$project/components/playbooks/"monitoring.yml '
            '"$project/components/playbooks/postinstall.yml")') in script
    values = yaml.safe_load(step.inputs["environment"]["IDR_DEPLOYMENT_PROGRAM_VARS"])
    # The contract with the regeneration dispatcher (metrics-contract.md).
    assert values["prometheus_node_args"] == "--collector.textfile.directory=/var/lib/node_exporter/textfile"
    assert values["prometheus_custom_targets"][0]["static_configs"][0]["targets"] == ["192.168.1.10:3903"]
    assert values["prometheus_http_2xx_external_targets"] == ["https://idr.openmicroscopy.org/about/"]
    assert values["prometheus_version"] == _debian_version(PROMTOOL)
    assert values["prometheus_alertmanager_version"] == _debian_version(AMTOOL)
    # The management host's files and data directories come before the playbooks.
    files = prod_run.named("prod-monitoring-management", "command:remote:Command")
    assert files.urn in step.options.depends_on


def _debian_version(binary) -> str:
    out = run_tool(binary, "--version")
    return re.search(r"version (\d+\.\d+\.\d+)", out.stdout + out.stderr).group(1)


def test_the_proxy_gets_its_exporters(prod_run):
    step = prod_run.named("prod-monitoring-proxy-exporters", "command:remote:Command")
    assert monitoring.PROXY_INSTALL in step.inputs["stdin"]
    paths = {f.path for f in monitoring.proxy_files(settings())}
    assert paths == {"/usr/local/sbin/idr-monitoring-exporters", "/etc/mtail/idr-nginx.mtail",
                     "/etc/systemd/system/prometheus-node-exporter.service", "/etc/systemd/system/idr-mtail.service"}
    result = run_tool(tool("shellcheck"), monitoring.FILES / "idr-monitoring-exporters")
    assert result.returncode == 0, result.stdout
    unit = (monitoring.FILES / "prometheus-node-exporter.service").read_text()
    assert f"--collector.textfile.directory={monitoring.NODE_TEXTFILE_DIR}" in unit


def test_the_proxy_exporters_units_pass_systemd_analyze_verify(tmp_path):
    """The proxy's two units as systemd reads them (their binaries moved into
    tmp); mtail runs only on idle CPU time (serving comes first), and a
    misspelt policy is reported."""
    units = {}
    for f in monitoring.proxy_files(settings()):
        if f.path.endswith(".service"):
            text = f.content
            for binary in re.findall(r"^ExecStart=(\S+)", text, re.M):
                stand_in = tmp_path / Path(binary).name
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
                text = text.replace(binary, str(stand_in))
            units[Path(f.path).name] = tmp_path / Path(f.path).name
            units[Path(f.path).name].write_text(text)
    assert re.search(r"^CPUSchedulingPolicy=idle$", units["idr-mtail.service"].read_text(), re.M)
    analyze = tool("systemd-analyze")
    done = subprocess.run([analyze, "verify", *map(str, units.values())], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    mtail = units["idr-mtail.service"]
    mtail.write_text(mtail.read_text().replace("CPUSchedulingPolicy=idle", "CPUSchedulingPolicy=idel"))
    done = subprocess.run([analyze, "verify", str(mtail)], capture_output=True, text=True)
    assert "Failed to parse CPU scheduling policy" in done.stderr


@pytest.mark.parametrize("raw,key,allowed", [
    ({"alertReceiver": "email"}, "idr:alertReceiver", "slack, webhook, or empty"),
    ({"alertReceiver": "slack"}, "idr:deploymentSecretVars", "idr_secret_management_slack_webhook"),
    ({"alertReceiver": "webhook", "deploymentSecretVars": SECRET_VARS + "idr_secret_alert_webhook_url: ftp://x\n"},
     "idr:deploymentSecretVars", "idr_secret_alert_webhook_url"),
    ({"alertSlackChannel": "idr notify"}, "idr:alertSlackChannel", "a Slack channel"),
    ({"nginxDirectRedirects": '["^~ /grafana/ 302 /"]'}, "idr:nginxDirectRedirects", "monitoring's"),
])
def test_bad_monitoring_config_is_one_line_naming_the_key(raw, key, allowed):
    with pytest.raises(ConfigError) as error:
        settings(**raw)
    assert error.value.key == key and allowed in str(error.value) and "\n" not in str(error.value)
    assert "ftp://x" not in str(error.value)   # never a secret's value


def test_receivers_with_their_secret_are_accepted():
    assert settings(alertReceiver="slack", deploymentSecretVars=SECRET_VARS +
                    "idr_secret_management_slack_webhook: T000/B000/XXXXXXXX\n").alert_receiver == "slack"
    assert settings(alertReceiver="webhook", deploymentSecretVars=SECRET_VARS +
                    "idr_secret_alert_webhook_url: https://alerts.example.org/idr\n").alert_receiver == "webhook"


# ------------------------------------------------------------ alert rules

def write_rules(tmp_path: Path) -> Path:
    path = tmp_path / "idr.rules.yml"
    path.write_text(monitoring.rules_text(settings()))
    return path


def test_rules_pass_promtool(tmp_path):
    result = run_tool(PROMTOOL, "check", "rules", write_rules(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


PROXY = {"instance": "prod-proxy", "job": "nginx-mtail"}


def _series(name: str, labels: dict, values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _requests(cache: str, status: str, values: str, family: str = "thumbnails") -> dict:
    return _series("idr_nginx_requests_total", {**PROXY, "family": family, "cache": cache, "status": status}, values)


def _fs(mount: str, avail: int, size: int = 100, instance: str = "prod-proxy") -> list[dict]:
    labels = {"instance": instance, "job": "node-exporter", "mountpoint": mount}
    return [_series("node_filesystem_avail_bytes", labels, f"{avail}x30"),
            _series("node_filesystem_size_bytes", labels, f"{size}x30")]


BACKUP = {"instance": "prod-management", "job": "node-exporter", "environment": "prod", "volume": "database",
          "name": "prod-database-data", "essential": "true"}
REGEN = {"instance": "prod-proxy", "job": "node-exporter", "run": "generation-3"}

# alert -> (interval, eval time, bad series, labels of the alert it must raise, good series)
CASES = {
    "ProxyErrorRatioHigh": ("1m", "25m",
                            [_requests("MISS", "502", "0+60x30", "render"), _requests("HIT", "200", "0+600x30")],
                            {},
                            [_requests("MISS", "502", "0+6x30", "render"), _requests("HIT", "200", "0+600x30")]),
    "CacheHitRatioLow": ("1m", "60m",
                         [_requests("HIT", "200", "0+60x60"), _requests("MISS", "200", "0+300x60"),
                          _requests("-", "200", "0+6000x60", "other")],
                         {},
                         [_requests("HIT", "200", "0+300x60"), _requests("MISS", "200", "0+60x60"),
                          _requests("-", "200", "0+6000x60", "other")]),
    "PublicAddressDown": ("1m", "10m",
                          [_series("probe_success", {"instance": "https://idr.openmicroscopy.org/about/",
                                                     "job": "blackbox_http_2xx_external"}, "0x10")],
                          {"instance": "https://idr.openmicroscopy.org/about/", "job": "blackbox_http_2xx_external"},
                          [_series("probe_success", {"instance": "https://idr.openmicroscopy.org/about/",
                                                     "job": "blackbox_http_2xx_external"}, "1x10")]),
    # The spare address answers no proxy; the public one answers (held by the other environment).
    "ProbeAddressSilent": ("1m", "15m",
                           [_series("probe_success", {"instance": "203.0.113.20", "job": "idr_address_answers"}, "0x15"),
                            _series("probe_success", {"instance": "203.0.113.10", "job": "idr_address_answers"}, "1x15"),
                            _series("probe_success", {"instance": "203.0.113.10", "job": "idr_address_holder"}, "0x15")],
                           {"instance": "203.0.113.20", "job": "idr_address_answers"},
                           [_series("probe_success", {"instance": "203.0.113.20", "job": "idr_address_answers"},
                                    "1x15"),
                            _series("probe_success", {"instance": "203.0.113.10", "job": "idr_address_holder"},
                                    "0x15")]),
    "DataVolumeFilling": ("1m", "20m",
                          _fs("/var/cache/nginx", 10) + _fs("/", 5),
                          {"instance": "prod-proxy", "job": "node-exporter", "mountpoint": "/var/cache/nginx"},
                          _fs("/var/cache/nginx", 50) + _fs("/", 5)),
    # Scraped every minute (a sample per hour would be stale between them).
    # As operations.backup writes them; the nginx cache (essential="false") may be old.
    "BackupTooOld": ("1m", "8d",
                     [_series("idr_backup_last_snapshot_timestamp_seconds", BACKUP, "0x11600")],
                     {"volume": "database"},
                     [_series("idr_backup_last_snapshot_timestamp_seconds", BACKUP, "0+60x11600"),
                      _series("idr_backup_last_snapshot_timestamp_seconds",
                              {**BACKUP, "volume": "proxy", "name": "prod-proxy-data", "essential": "false"},
                              "0x11600")]),
    "PostgresConnectionsNearLimit": (
        "1m", "15m",
        [_series("pg_stat_activity_count", {"instance": "prod-database", "datname": "idr", "state": "active"}, "90x20"),
         _series("pg_settings_max_connections", {"instance": "prod-database", "server": "x"}, "100x20")],
        {"instance": "prod-database"},
        [_series("pg_stat_activity_count", {"instance": "prod-database", "datname": "idr", "state": "active"}, "50x20"),
         _series("pg_settings_max_connections", {"instance": "prod-database", "server": "x"}, "100x20")]),
    "PostgresStatementPastTimeout": (
        "1m", "5m",
        [_series("pg_stat_activity_max_tx_duration", {"instance": "prod-database", "datname": "idr", "state": "active"},
                 "120x10")],
        {"instance": "prod-database", "datname": "idr"},
        [_series("pg_stat_activity_max_tx_duration", {"instance": "prod-database", "datname": "idr", "state": "active"},
                 "30x10"),
         _series("pg_stat_activity_max_tx_duration", {"instance": "prod-database", "datname": "idr",
                                                      "state": "idle in transaction"}, "120x10")]),
    # Results stopped at 1m; no result at all since the start (at 0);
    # good: results every minute, or the run finished (running 0).
    "RegenerationStalled": (
        "1m", "40m",
        [_series("idr_bfcache_running", REGEN, "1x40"),
         _series("idr_bfcache_last_result_timestamp_seconds", {**REGEN, "node": "omeroreadonly-1"}, "60x40"),
         _series("idr_bfcache_running", {**REGEN, "run": "screen-1101"}, "1x40"),
         _series("idr_bfcache_start_timestamp_seconds", {**REGEN, "run": "screen-1101"}, "0x40")],
        {"run": "generation-3"},
        [_series("idr_bfcache_running", REGEN, "1x40"),
         _series("idr_bfcache_last_result_timestamp_seconds", {**REGEN, "node": "omeroreadonly-1"}, "60+60x40"),
         _series("idr_bfcache_running", {**REGEN, "run": "generation-2"}, "0x40"),
         _series("idr_bfcache_last_result_timestamp_seconds", {**REGEN, "run": "generation-2", "node": "x"}, "60x40")]),
}
# The stalled case has two runs stalled: both fire.
EXTRA_EXPECTED = {"RegenerationStalled": [{"run": "screen-1101"}]}


def _annotations(rule: dict, labels: dict) -> dict:
    """The rule's annotations as Prometheus expands them (no $value in them)."""
    return {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
            for k, v in rule["annotations"].items()}


# Rules evaluated every minute but this one (8 days of minutes is slow).
EVALUATION_INTERVAL = {"BackupTooOld": "1h"}


def _rule_tests(rules_file: Path, good: bool, every: str) -> dict:
    by_name = {r["alert"]: r for g in monitoring.rules(settings())["groups"] for r in g["rules"]}
    tests = []
    for name, (interval, at, bad_series, labels, good_series) in CASES.items():
        if EVALUATION_INTERVAL.get(name, "1m") != every:
            continue
        rule = by_name[name]
        expected = [] if good else [
            {"exp_labels": {**lbl, "severity": rule["labels"]["severity"]}, "exp_annotations": _annotations(rule, lbl)}
            for lbl in [labels, *EXTRA_EXPECTED.get(name, [])]]
        tests.append({"name": f"{name} {'silent' if good else 'fires'}", "interval": interval,
                      "input_series": good_series if good else bad_series,
                      "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}]})
    return {"rule_files": [str(rules_file)], "evaluation_interval": every, "tests": tests}


def test_no_annotation_depends_on_the_value():
    """Expected annotations are exact: they may name labels, not $value."""
    for group in monitoring.rules(settings())["groups"]:
        for rule in group["rules"]:
            assert "$value" not in json.dumps(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_unit_test():
    names = {r["alert"] for g in monitoring.rules(settings())["groups"] for r in g["rules"]}
    assert names == set(CASES)


@pytest.mark.parametrize("good", [False, True], ids=["fires-on-the-bad-series", "silent-on-the-good"])
def test_every_alert_rule_with_promtool(tmp_path, good):
    rules_file = write_rules(tmp_path)
    for every in {"1m", *EVALUATION_INTERVAL.values()}:
        tests = tmp_path / f"tests-{every}.yml"
        tests.write_text(yaml.safe_dump(_rule_tests(rules_file, good, every), sort_keys=False))
        result = run_tool(PROMTOOL, "test", "rules", tests)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_the_statement_timeout_is_the_configured_one():
    rules = monitoring.rules_text(settings(statementTimeoutMs="45000"))
    assert 'pg_stat_activity_max_tx_duration{state="active"}) > 45' in rules


# ------------------------------------------------------------ Alertmanager

def render_alertmanager(tmp_path: Path, receiver: str, secrets: dict) -> Path:
    """The template as the playbook renders it: Ansible's own template module."""
    out = tmp_path / f"alertmanager-{receiver or 'log'}.yml"
    vars_file = tmp_path / "vars.yml"
    vars_file.write_text(yaml.safe_dump({
        "idr_environment": "prod", **secrets,
        "idr_monitoring": {"alert_receiver": receiver, "slack_channel": "#idr-notify"}}))
    result = run_tool(VENV_BIN / "ansible", "localhost", "-c", "local", "-i", "localhost,", "-m",
                      "ansible.builtin.template", "-a", f"src={PLAYBOOKS / 'templates' / 'alertmanager.yml.j2'} dest={out}",
                      "-e", f"@{vars_file}")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("receiver,secrets,sends", [
    ("", {}, None),
    ("slack", {"idr_secret_management_slack_webhook": "T000/B000/XXXX'\"x"}, "slack_configs"),
    ("webhook", {"idr_secret_alert_webhook_url": "https://alerts.example.org/idr?a=1&b=\"2\""}, "webhook_configs"),
])
def test_alertmanager_configuration_passes_amtool(tmp_path, receiver, secrets, sends):
    path = render_alertmanager(tmp_path, receiver, secrets)
    result = run_tool(AMTOOL, "check-config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    assert config["route"]["receiver"] == (receiver or "log")
    (chosen,) = [r for r in config["receivers"] if r["name"] == config["route"]["receiver"]]
    if sends is None:
        assert set(chosen) == {"name"}          # logged only: sent nowhere
    else:
        (target,) = chosen[sends]
        secret = next(iter(secrets.values()))
        assert (target.get("api_url") or target.get("url")).endswith(secret)   # quoting kept it whole
    routed = run_tool(AMTOOL, "config", "routes", "test", "--config.file", path, "alertname=RegenerationStalled",
                      "severity=error")
    assert routed.stdout.strip() == (receiver or "log")


# ------------------------------------------------------------ Grafana

def test_dashboards_parse_and_every_query_passes_promtool(tmp_path):
    files = {f.path: f.content for f in monitoring.management_files(settings())}
    records = []
    for name in monitoring.DASHBOARDS:
        board = json.loads(files[f"{monitoring.GRAFANA_DASHBOARDS}/idr/{name}"])
        assert board["uid"] == name.removesuffix(".json") and board["panels"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "prometheus" and panel["targets"], panel["title"]
            records += [{"record": f"dashboard:{board['uid'].replace('-', '_')}:{panel['id']}{t['refId']}",
                         "expr": t["expr"]} for t in panel["targets"]]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": records}]}))
    result = run_tool(PROMTOOL, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(records)} rules found" in result.stdout


def test_grafana_provisioning_matches_the_container_the_playbook_runs():
    files = {f.path: yaml.safe_load(f.content) for f in monitoring.management_files(settings())
             if f.path.endswith(".yml") and "/grafana/" in f.path}
    (source,) = files[f"{monitoring.GRAFANA_ETC}/provisioning/datasources/idr.yml"]["datasources"]
    assert (source["name"], source["uid"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    (provider,) = files[f"{monitoring.GRAFANA_ETC}/provisioning/dashboards/idr.yml"]["providers"]
    assert not provider["allowUiUpdates"]
    (play,) = yaml.safe_load((PLAYBOOKS / "monitoring.yml").read_text())
    (grafana,) = [t for t in play["tasks"] if t["name"] == "Grafana"]
    container = grafana["community.docker.docker_container"]
    mounts = dict(v.split(":")[:2][::-1] for v in container["volumes"])
    assert mounts[provider["options"]["path"]] == "{{ idr_monitoring.grafana_etc }}/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "{{ idr_monitoring.grafana_etc }}/provisioning"
    assert container["env"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert container["env"]["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert container["networks"] == [{"name": "monitoring"}]     # IDR's prometheus_docker_network


# ------------------------------------------------------------ mtail

def test_mtail_program_compiles_and_knows_nginx_url_families(tmp_path):
    (tmp_path / monitoring.MTAIL_PROGRAM).write_text((monitoring.FILES / monitoring.MTAIL_PROGRAM).read_text())
    result = run_tool(MTAIL, "-compile_only", "-progs", tmp_path, "-logtostderr")
    assert result.returncode == 0, result.stderr
    program = (monitoring.FILES / monitoring.MTAIL_PROGRAM).read_text()
    found = [(m.group(1).replace("\\/", "/"), m.group(2))
             for m in re.finditer(r'\$path =~ /(.+?)/ \{\n\s+idr_nginx_requests_total\["([\w-]+)"\]', program)]
    assert found == [(f.regex, f.name) for f in (*nginx.CACHED_FAMILIES, nginx.MAPR)]


def test_proxy_units_pass_systemd_analyze_verify(tmp_path):
    """The two units as systemd reads them, the binaries' paths moved into
    tmp (mtail: Debian's; node_exporter: an executable standing in)."""
    node = tmp_path / "node_exporter"
    node.write_text("#!/bin/sh\n")
    node.chmod(0o755)
    paths = []
    for unit in monitoring.PROXY_UNITS:
        text = (monitoring.FILES / unit).read_text()
        text = text.replace("/opt/mtail/mtail", MTAIL).replace("/opt/prometheus/node_exporter/node_exporter", str(node))
        (tmp_path / unit).write_text(text)
        paths.append(tmp_path / unit)
    done = run_tool(tool("systemd-analyze"), "verify", *paths)
    assert done.returncode == 0 and done.stderr == "", done.stderr
