"""Monitoring (idr:monitoringEnabled): what the program adds to IDR's stack.

IDR's playbooks install Prometheus, Alertmanager and the blackbox exporter on
<env>-management (management-prometheus.yml, role ome.prometheus) and the
exporters on every host but the proxy. This module renders what IDR does not
have, as pure functions:
- the vars the program passes to those playbooks (`program_vars`): the
  exporters' flags, the versions the tests check the files with, the extra
  scrape jobs, the public probes;
- the alert rules (`rules`) and Grafana's provisioning and two dashboards,
  written on the management host by a host step;
- the proxy's exporters: node_exporter (the deployment step never touches
  the proxy) and mtail, which turns nginx's access log into cache metrics.
`components/monitoring.py` only wires them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .. import layout
from ..layout import DATA_VOLUME_MOUNTS, ENVIRONMENT_PATH, MANAGEMENT_MOUNT
from ..settings import Settings
from . import HostFile, render_template

FILES = Path(__file__).resolve().parent.parent / "files" / "monitoring"

# Ports (IDR's): Prometheus, Alertmanager, blackbox exporter, Grafana on the
# management host; node_exporter on every host; mtail on the proxy.
from .nginx import GRAFANA_PORT  # noqa: E402  (the proxy routes to them)
ALERTMANAGER_PORT, BLACKBOX_PORT = 9093, 9115
NODE_EXPORTER_PORT, MTAIL_PORT = 9100, 3903
# The versions the tests check the rendered files with (Debian's promtool and
# amtool), instead of ome.prometheus's 2.20.1 and 0.21.0: what is checked is
# what runs.
PROMETHEUS_VERSION, ALERTMANAGER_VERSION = "2.42.0", "0.25.0"
BLACKBOX_VERSION = "0.23.0"  # Debian's blackbox_exporter (ome.prometheus: 0.17.0)
# Grafana as a container beside Prometheus (IDR runs 7.2.0, without
# provisioning); files provisioned, anonymous read-only viewing.
GRAFANA_IMAGE = "grafana/grafana-oss:10.4.2"

# Node_exporter's textfile collector (the regeneration dispatcher writes
# idr_bfcache.prom there, operations.backup idr_backup.prom on the management
# host: docs/operations/monitoring.md).
NODE_TEXTFILE_DIR = "/var/lib/node_exporter/textfile"
# Where things live on the management host: Prometheus's rule files (the
# glob of ome.prometheus's prometheus.yml), Grafana's provisioning, the
# data of both on the management volume.
RULES_FILE = "/etc/prometheus/rules/idr.rules.yml"
GRAFANA_ETC = "/etc/idr/grafana"
GRAFANA_DASHBOARDS = f"{GRAFANA_ETC}/dashboards"
PROMETHEUS_DATA = f"{MANAGEMENT_MOUNT}/prometheus"
GRAFANA_DATA = f"{MANAGEMENT_MOUNT}/grafana"
# The blackbox exporter's config: IDR's modules and the program's; the
# program's playbook puts it where the exporter reads it.
BLACKBOX_FILE = "/etc/idr/blackbox-exporter.yml"
BLACKBOX_TARGET = "/etc/prometheus/blackbox-exporter.yml"
HOLDS_MODULE, ANSWERS_MODULE = "idr_environment_holds", "idr_environment_answers"
HOLDS_JOB, ANSWERS_JOB = "idr_address_holder", "idr_address_answers"
# The dashboards the program adds to IDR's four (ansible/grafana-dashboards/).
DASHBOARDS = ("idr-cache.json", "idr-regeneration.json")
# On the proxy: the exporters' install script, units and mtail's program.
PROXY_INSTALL = "/usr/local/sbin/idr-monitoring-exporters"
MTAIL_PROGS = "/etc/mtail"
MTAIL_PROGRAM = "idr-nginx.mtail"
UNIT_DIR = "/etc/systemd/system"
PROXY_UNITS = ("prometheus-node-exporter.service", "idr-mtail.service")

# Alert thresholds (docs/operations/monitoring.md says what to do for each).
ERROR_RATIO = 0.05              # of the proxy's answers being 5xx
MIN_REQUEST_RATE = 0.2          # requests/s under which ratios mean nothing
CACHE_HIT_RATIO_MIN = 0.5       # of cacheable requests answered from the cache
VOLUME_FULL = 0.85              # of a data volume used
PG_CONNECTIONS = 0.8            # of max_connections in use
REGENERATION_STALL_MINUTES = 30
BACKUP_MAX_AGE_DAYS = 7         # operations.backup's --keep-daily default
# Mount points of the data volumes (the proxy's holds the nginx cache zones).
DATA_MOUNTS = (*DATA_VOLUME_MOUNTS.values(), MANAGEMENT_MOUNT)


def enabled(settings: Settings) -> bool:
    return settings.monitoring_enabled


def probe_targets(settings: Settings) -> list[str]:
    """The public address, by name. Not this stack's floating IP: a swap
    changes idr:floatingIp and changes nothing on any host (the playbooks
    would not run to follow it); the addresses are probed from
    idr:probeAddresses instead (scrape_jobs)."""
    return [f"https://{settings.server_name}/about/"]


def _address_probe(job: str, module: str, addresses: tuple[str, ...]) -> dict[str, Any]:
    """A blackbox job over bare addresses: each becomes the URL of the
    proxy's environment location (plain HTTP: answered there even with
    idr:httpsRedirect, with no certificate to match an address), and stays
    the series' `instance`."""
    return {
        "job_name": job,
        "scrape_interval": "60s",
        "metrics_path": "/probe",
        "params": {"module": [module]},
        "static_configs": [{"targets": list(addresses)}],
        "relabel_configs": [
            {"source_labels": ["__address__"], "target_label": "__param_target",
             "replacement": f"http://${{1}}{ENVIRONMENT_PATH}"},
            {"source_labels": ["__address__"], "target_label": "instance"},
            {"target_label": "__address__", "replacement": f"blackbox-exporter:{BLACKBOX_PORT}"},
        ],
    }


def scrape_jobs(settings: Settings) -> list[dict[str, Any]]:
    """Scrape jobs ome.prometheus has no variable for (its
    prometheus_custom_targets): mtail on the proxy; the probes of
    idr:probeAddresses: does this environment answer there (holds it), does
    any IDR proxy answer there. The list is the same in every stack and a
    swap does not change it, so no job changes with a swap."""
    proxy = layout.host(settings, "proxy")
    jobs = [{
        "job_name": "nginx-mtail",
        "scrape_interval": "15s",
        "static_configs": [{"targets": [f"{proxy.fixed_ip}:{MTAIL_PORT}"], "labels": {"instance": proxy.name}}],
    }]
    if settings.probe_addresses:
        jobs += [_address_probe(HOLDS_JOB, HOLDS_MODULE, settings.probe_addresses),
                 _address_probe(ANSWERS_JOB, ANSWERS_MODULE, settings.probe_addresses)]
    return jobs


def probe_list_warning(settings: Settings) -> str:
    """Why the probes miss this stack's own address, or "". A warning, not
    an error: a floating IP moved by hand or a new spare must not stop an
    update for a monitoring list; the list is fixed in both stack files."""
    s = settings
    if not (s.monitoring_enabled and s.floating_ip and s.probe_addresses) or s.floating_ip in s.probe_addresses:
        return ""
    return (f"config idr:probeAddresses = {list(s.probe_addresses)} does not hold idr:floatingIp ({s.floating_ip}): "
            f"nothing probes which environment holds it; list the public and the spare address, the same in both "
            f"stack files")


def blackbox_modules(settings: Settings) -> dict[str, Any]:
    """The program's modules: `holds` succeeds only when the body is this
    environment's name (what the proxy's environment location answers), so
    its probe_success per address says "this environment holds it";
    `answers` when any IDR proxy answers there. No redirect is followed:
    the location answers itself."""
    def module(body: str) -> dict[str, Any]:
        return {"prober": "http", "timeout": "5s", "http": {
            "valid_status_codes": [200], "follow_redirects": False, "preferred_ip_protocol": "ip4",
            "ip_protocol_fallback": False, "fail_if_body_not_matches_regexp": [body]}}
    return {HOLDS_MODULE: module(rf"\A{settings.environment}\n\z"),
            ANSWERS_MODULE: module(r"\A[a-z0-9][a-z0-9-]*\n\z")}


def blackbox_config(settings: Settings) -> str:
    """IDR's modules (the role's file) and the program's."""
    base = (FILES / "blackbox-exporter.yml").read_text()
    ours = yaml.safe_dump({"modules": blackbox_modules(settings)}, sort_keys=False, width=200)
    return (base.rstrip("\n") + "\n  # The program's: which environment answers at an address of "
            "idr:probeAddresses.\n" + ours.split("modules:\n", 1)[1])


def program_vars(settings: Settings) -> dict[str, Any]:
    """Vars for IDR's monitoring playbooks and the program's own
    (components/playbooks/monitoring.yml); extra vars, so they win over the
    role parameters IDR's plays set."""
    s = settings
    return {
        # Every host's node_exporter (ome.prometheus_node): the textfile collector.
        "prometheus_node_args": f"--collector.textfile.directory={NODE_TEXTFILE_DIR}",
        "prometheus_version": PROMETHEUS_VERSION,
        "prometheus_alertmanager_version": ALERTMANAGER_VERSION,
        "prometheus_blackboxexporter_version": BLACKBOX_VERSION,
        # Metrics on the management volume, not in a Docker volume on the root disk.
        "prometheus_docker_data_volume": PROMETHEUS_DATA,
        # IDR's play requires its Slack secret; the program's Alertmanager
        # config (monitoring.yml) replaces the role's and uses it only with
        # idr:alertReceiver slack.
        "prometheus_alertmanager_slack_webhook": "{{ idr_secret_management_slack_webhook | default('') }}",
        "prometheus_http_2xx_external_targets": probe_targets(s),
        "prometheus_custom_targets": scrape_jobs(s),
        "idr_monitoring": {
            "alert_receiver": s.alert_receiver,
            "slack_channel": s.alert_slack_channel,
            "grafana_image": GRAFANA_IMAGE,
            "grafana_etc": GRAFANA_ETC,
            "grafana_data": GRAFANA_DATA,
            "grafana_port": GRAFANA_PORT,
            "root_url": f"https://{s.server_name}/grafana/",
            "blackbox_file": BLACKBOX_FILE,
            "blackbox_target": BLACKBOX_TARGET,
        },
    }


# ---------------------------------------------------------------- alert rules

def _alert(name: str, expr: str, duration: str, severity: str, summary: str, description: str) -> dict[str, Any]:
    return {"alert": name, "expr": " ".join(expr.split()), "for": duration, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description,
                            "runbook": f"docs/operations/monitoring.md#{name.lower()}"}}


def rules(settings: Settings) -> dict[str, Any]:
    """The program's alert rules (IDR's role adds instance_down: a host or
    an exporter down). Every rule has a unit test (promtool test rules)."""
    timeout_s = settings.statement_timeout_ms / 1000
    mounts = "|".join(DATA_MOUNTS)
    requests = "sum(rate(idr_nginx_requests_total[5m]))"
    cacheable = 'sum(rate(idr_nginx_requests_total{cache!~"-|BYPASS"}[30m]))'
    stall = REGENERATION_STALL_MINUTES * 60
    return {"groups": [
        {"name": "idr-proxy", "rules": [
            _alert("ProxyErrorRatioHigh",
                   f'sum(rate(idr_nginx_requests_total{{status=~"5.."}}[5m])) / {requests} > {ERROR_RATIO} '
                   f'and {requests} > {MIN_REQUEST_RATE}', "10m", "error",
                   f"The proxy answers more than {ERROR_RATIO:.0%} of requests with 5xx",
                   f"More than {ERROR_RATIO:.0%} of the proxy's answers are server errors for 10 minutes."),
            _alert("CacheHitRatioLow",
                   f'sum(rate(idr_nginx_requests_total{{cache=~"HIT|STALE|UPDATING|REVALIDATED"}}[30m])) '
                   f'/ {cacheable} < {CACHE_HIT_RATIO_MIN} and {cacheable} > {MIN_REQUEST_RATE}', "30m", "warn",
                   f"The nginx cache hit ratio is below {CACHE_HIT_RATIO_MIN:.0%}",
                   f"Fewer than {CACHE_HIT_RATIO_MIN:.0%} of cacheable requests were answered from the cache for 30 "
                   f"minutes."),
            _alert("PublicAddressDown", 'probe_success{job="blackbox_http_2xx_external"} == 0', "5m", "error",
                   "{{ $labels.instance }} does not answer",
                   "The blackbox exporter got no 2xx answer from a public address for 5 minutes."),
            # Unambiguous whichever environment holds what: no IDR proxy
            # answers at an address of the list (a swap takes seconds).
            _alert("ProbeAddressSilent", f'probe_success{{job="{ANSWERS_JOB}"}} == 0', "10m", "error",
                   "No IDR proxy answers at {{ $labels.instance }}",
                   "An address of idr:probeAddresses (the public or the spare floating IP) has answered no IDR "
                   "proxy's environment location for 10 minutes."),
        ]},
        {"name": "idr-storage", "rules": [
            _alert("DataVolumeFilling",
                   f'1 - node_filesystem_avail_bytes{{mountpoint=~"{mounts}"}} '
                   f'/ node_filesystem_size_bytes{{mountpoint=~"{mounts}"}} > {VOLUME_FULL}', "15m", "warn",
                   "{{ $labels.mountpoint }} on {{ $labels.instance }} is more than " f"{VOLUME_FULL:.0%} full",
                   f"A data volume is more than {VOLUME_FULL:.0%} full."),
            _alert("BackupTooOld",
                   f'time() - max by (volume) (idr_backup_last_snapshot_timestamp_seconds{{essential="true"}}) > '
                   f"{BACKUP_MAX_AGE_DAYS * 86400}",
                   "1h", "error", "The last snapshot of {{ $labels.volume }} is more than " f"{BACKUP_MAX_AGE_DAYS} "
                           f"days old",
                   f"No snapshot of an essential volume in {BACKUP_MAX_AGE_DAYS} days (operations.backup's daily "
                   f"retention)."),
        ]},
        {"name": "idr-database", "rules": [
            _alert("PostgresConnectionsNearLimit",
                   f"sum by (instance) (pg_stat_activity_count) > {PG_CONNECTIONS} * max by (instance) "
                   f"(pg_settings_max_connections)",
                   "10m", "warn", "PostgreSQL on {{ $labels.instance }} is near max_connections",
                   f"More than {PG_CONNECTIONS:.0%} of max_connections are in use for 10 minutes."),
            _alert("PostgresStatementPastTimeout",
                   f'max by (instance, datname) (pg_stat_activity_max_tx_duration{{state="active"}}) > {timeout_s:g}',
                   "2m", "warn", "A statement on {{ $labels.datname }} runs past the statement timeout",
                   f"A transaction has been active longer than the read-only statement timeout ({timeout_s:g} s)."),
        ]},
        {"name": "idr-regeneration", "rules": [
            _alert("RegenerationStalled",
                   f"max by (run) (idr_bfcache_running) == 1 and on (run) ("
                   f"time() - max by (run) (idr_bfcache_last_result_timestamp_seconds) > {stall} "
                   f"or (time() - max by (run) (idr_bfcache_start_timestamp_seconds) > {stall} "
                   f"unless on (run) max by (run) (idr_bfcache_last_result_timestamp_seconds)))",
                   "5m", "error", "Cache regeneration {{ $labels.run }} has stalled",
                   f"No image finished on any node for {REGENERATION_STALL_MINUTES} minutes "
                   "while the run is not done."),
        ]},
    ]}


def rules_text(settings: Settings) -> str:
    return ("# Alert rules of the program (components/render/monitoring.py); IDR's\n"
            "# instance_down is in default-alert.rules.yml beside this file.\n"
            + yaml.safe_dump(rules(settings), sort_keys=False, width=200))


# ---------------------------------------------------------------- files

def management_files(settings: Settings) -> list[HostFile]:
    """On <env>-management: the rules, the blackbox exporter's config
    (the playbook moves it in place) and Grafana's provisioning."""
    grafana = FILES / "grafana"
    files = [HostFile(RULES_FILE, rules_text(settings)), HostFile(BLACKBOX_FILE, blackbox_config(settings)),
             HostFile(f"{GRAFANA_ETC}/provisioning/datasources/idr.yml", (grafana / "datasources.yml").read_text()),
             HostFile(f"{GRAFANA_ETC}/provisioning/dashboards/idr.yml", (grafana / "dashboards.yml").read_text())]
    files += [HostFile(f"{GRAFANA_DASHBOARDS}/idr/{name}", (grafana / name).read_text()) for name in DASHBOARDS]
    return files


def management_setup_script(settings: Settings) -> str:
    return render_template("monitoring/management-setup.sh.j2", prometheus_data=PROMETHEUS_DATA,
                           grafana_data=GRAFANA_DATA, grafana_dashboards=GRAFANA_DASHBOARDS)


def proxy_files(settings: Settings) -> list[HostFile]:
    """On <env>-proxy: the exporters' install script, their units, mtail's program."""
    return [HostFile(PROXY_INSTALL, (FILES / "idr-monitoring-exporters").read_text(), mode="0755"),
            HostFile(f"{MTAIL_PROGS}/{MTAIL_PROGRAM}", (FILES / MTAIL_PROGRAM).read_text()),
            *(HostFile(f"{UNIT_DIR}/{unit}", (FILES / unit).read_text()) for unit in PROXY_UNITS)]


PROXY_SETUP = f"{PROXY_INSTALL}\n"
