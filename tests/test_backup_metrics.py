"""The backup metrics `operations.backup` writes for the BackupTooOld alert
and the dashboards: the text checked by the real `promtool check metrics`
and read back by Prometheus's own parser (promtool's rule tests are in
test_monitoring.py); what the command does when the management host cannot
be reached. Delivery over real sshd: tests/integration/test_backup_metrics.py."""
from __future__ import annotations

import datetime as dt
import subprocess
from types import SimpleNamespace

import pytest

from components.render.deployment import known_hosts_file, run_script
from operations import backup
from operations.backup import MetricsTarget, Volume, metrics_target, metrics_text, remote_write, ssh_config
from tests.support.backup_metrics import prod_world, with_management
from tests.support.fake_cloud import cloud, conn, quick_polls  # noqa: F401  (fixtures; quick_polls is autouse)
from tests.support.settings import settings_for
from tests.support.tools import tool

pytestmark = pytest.mark.filterwarnings("ignore::Warning:openstack")

NOW = dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.timezone.utc)
DATA = Volume("omeroreadwrite", "vol-rw", "prod-omeroreadwrite-data", 1500)
DB = Volume("database", "vol-db", "prod-database-data", 800)
CACHE = Volume("proxy", "vol-cache", "prod-proxy-data", 100)


def snap(sid, status, created_at, size):
    return SimpleNamespace(id=sid, status=status, created_at=created_at, size=size)


def promtool_check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, of every sample line."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_newest_available_snapshot_per_volume_passes_promtool():
    seen = [(DATA, [snap("a", "available", "2024-05-10T03:00:00.000000", 1500),
                    snap("b", "available", "2024-05-16T03:00:00.000000", 1500),
                    snap("c", "creating", "2024-05-17T03:00:00.000000", 1500),   # not a backup yet
                    snap("d", "error", "2024-05-17T04:00:00.000000", 1500)]),
            (DB, []),                                                              # never backed up
            (CACHE, [snap("e", "available", "2024-04-01T00:00:00", 100)])]
    text = metrics_text("prod", seen, NOW)
    result = promtool_check(text)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr
    got = samples(text)
    rw = '{environment="prod",volume="omeroreadwrite",name="prod-omeroreadwrite-data",essential="true"}'
    db = '{environment="prod",volume="database",name="prod-database-data",essential="true"}'
    cache = '{environment="prod",volume="proxy",name="prod-proxy-data",essential="false"}'
    assert got[f"idr_backup_last_snapshot_timestamp_seconds{rw}"] == dt.datetime(
        2024, 5, 16, 3, tzinfo=dt.timezone.utc).timestamp()
    assert got[f"idr_backup_last_snapshot_size_bytes{rw}"] == 1500 * 2 ** 30
    assert got[f"idr_backup_snapshots{rw}"] == 2
    # No backup at all: time 0, so BackupTooOld fires for it.
    assert (got[f"idr_backup_last_snapshot_timestamp_seconds{db}"], got[f"idr_backup_snapshots{db}"]) == (0, 0)
    assert got[f"idr_backup_snapshots{cache}"] == 1
    assert got['idr_backup_metrics_timestamp_seconds{environment="prod"}'] == NOW.timestamp()


def test_promtool_rejects_what_a_broken_text_would_be():
    """The check is not a formality: a sample cut short fails it."""
    text = metrics_text("prod", [(DB, [])], NOW)
    assert promtool_check(text.replace('essential="true"} 0', 'essential="true" 0', 1)).returncode != 0


def test_target_is_the_management_host_through_the_bastion():
    outputs = {"environment": "prod", "sshBastion": "203.0.113.10",
               "hosts": [{"name": "prod-proxy", "role": "proxy", "fixedIp": "192.168.1.10"},
                         {"name": "prod-management", "role": "management", "fixedIp": "192.168.1.14"}]}
    assert metrics_target("prod", outputs, {}) == MetricsTarget("prod", "prod-management", "192.168.1.14",
                                                               "203.0.113.10", "rocky", "")
    assert metrics_target("prod", {**outputs, "hosts": outputs["hosts"][:1]}, {}) is None  # monitoring off
    pinned = metrics_target("prod", outputs, {"idr:sshUser": "centos", "idr:sshBastionHostKey": "ssh-ed25519 AAAA"})
    config = ssh_config(pinned, "/k/id", "/k/known")
    assert "StrictHostKeyChecking yes" in config and "HostKeyAlias idr-bastion" in config


def test_remote_write_is_one_rename_of_a_checked_temp_file():
    script = remote_write("rocky", 123)
    # Every step as root through sudo; the temp file is not *.prom (node_exporter ignores it).
    assert script.count("sudo -n ") == 7 and '.idr_backup.prom.XXXXXX' in script
    assert '[ "$n" -eq 123 ]' in script and script.endswith('mv -f "$t" "$d/"idr_backup.prom')
    assert "sudo" not in remote_write("root", 1)
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


@pytest.fixture
def world(tmp_path, monkeypatch, cloud):
    w = prod_world(tmp_path, monkeypatch, cloud)
    monkeypatch.setenv("IDR_DEPLOYMENT_CACHE", str(tmp_path / "cache"))
    return w


def test_unreachable_management_host_is_a_warning_and_exit_3(world, cloud, conn, capsys):
    # Nothing listens on loopback port 1: ssh fails at once.
    with_management(world, "prod", "127.0.0.1", "127.0.0.1")
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=dt.date(2024, 5, 17), ssh_port=1) == 3
    out, err = capsys.readouterr()
    assert "2 snapshot(s) of prod available, 2300 GB in all" in out  # the backup's result stands
    assert err.startswith("warning: backup metrics of prod not delivered (the backup's own result above stands): "
                          "ssh exited 255")
    assert "python -m operations.backup list --stack prod" in err


def test_failed_backup_keeps_its_exit_status_when_delivery_fails_too(world, cloud, conn, capsys):
    with_management(world, "prod", "127.0.0.1", "127.0.0.1")
    cloud.lives["vol-prod-database"] = ["error"]
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=dt.date(2024, 5, 17), ssh_port=1) == 1
    err = capsys.readouterr().err
    assert "error: 1 of 2 snapshot(s) of prod are not available" in err and "warning: backup metrics" in err


def test_no_management_host_no_delivery(world, cloud, conn, capsys):
    assert backup.main(["list", "--stack", "prod"], conn=conn) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("env", [{}, {"XDG_CACHE_HOME": "/x/cache"}, {"IDR_DEPLOYMENT_CACHE": "/y/dep"}])
def test_delivery_trusts_the_bastion_key_the_deployment_step_recorded(env, tmp_path, monkeypatch):
    """Without idr:sshBastionHostKey, the deployment step records the
    bastion's key on first contact; the metrics delivery reads that same
    file: the rendered run-playbooks.sh's own lines, run by bash, name it."""
    s = settings_for("prod")
    script = run_script(s, "prod-deployment")
    lines = [line for line in script.splitlines() if line.startswith("cache=") or "known_hosts=\"$cache/" in line]
    assert len(lines) == 2, lines
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", **env}
    out = subprocess.run(["bash", "-c", "\n".join(line.strip() for line in lines) + '\nprintf %s "$known_hosts"'],
                         capture_output=True, text=True, env=env, check=True).stdout
    for key in ("HOME", "XDG_CACHE_HOME", "IDR_DEPLOYMENT_CACHE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert out == str(known_hosts_file("prod")) and out.endswith("/prod")
