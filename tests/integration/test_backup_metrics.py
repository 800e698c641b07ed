"""The backup metrics delivered for real: `python -m operations.backup`
(openstacksdk against the fake cloud) logs in to the "management host"
(sshd on 127.0.0.31) through the "proxy" as bastion (sshd on 127.0.0.30)
with the stack's key, and the file it lands is read by the real
node_exporter's textfile collector. The file is replaced by a rename, a
delivery cut short leaves the previous one whole, and the bastion's host key
is recorded where the deployment step records it."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
import urllib.request

import pytest

from operations import backup
from operations.backup import METRICS_FILE, metrics_target, remote_write
from tests.support import sshd
from tests.support.backup_metrics import prod_world, with_management
from tests.support.fake_cloud import cloud, conn, quick_polls  # noqa: F401  (fixtures; quick_polls is autouse)
from tests.support.tools import tool

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::Warning:openstack")]

BASTION, MANAGEMENT = "127.0.0.30", "127.0.0.31"
DAY = dt.date(2024, 5, 17)
NOW = dt.datetime(2024, 5, 17, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def setup(tmp_path, monkeypatch, cloud):
    key = tmp_path / "stack-key"
    public = sshd.keygen(key, "idr@prod")
    port = sshd.free_port((BASTION, MANAGEMENT), range(22700, 22800))
    world = prod_world(tmp_path, monkeypatch, cloud)
    with_management(world, "prod", BASTION, MANAGEMENT)
    state = world.stack("prod")
    state["secrets"]["idr:sshPrivateKey"] = key.read_text()  # `pulumi config set --secret idr:sshPrivateKey`
    world.save_stack("prod", state)
    cloud.add_snapshot("vol-prod-database", "prod-database-data-20240510", created_at="2024-05-10T03:00:00.000000")
    textfile = tmp_path / "textfile"  # stands for /var/lib/node_exporter/textfile
    monkeypatch.setattr(backup, "NODE_TEXTFILE_DIR", str(textfile))
    monkeypatch.setenv("IDR_DEPLOYMENT_CACHE", str(tmp_path / "cache"))
    with sshd.running(tmp_path / "sshd", (BASTION, MANAGEMENT), port, authorized_keys=public + "\n") as servers:
        yield world, servers, port, textfile, tmp_path


def node_exporter_metrics(textfile, tmp_path) -> str:
    """One scrape of the real node_exporter with only its textfile collector."""
    port = sshd.free_port(["127.0.0.1"], range(19100, 19200))
    log = open(tmp_path / "node_exporter.log", "w")
    process = subprocess.Popen([tool("prometheus-node-exporter"), "--collector.disable-defaults",
                                "--collector.textfile", f"--collector.textfile.directory={textfile}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        deadline = time.time() + 20
        while True:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_snapshot_delivers_metrics_node_exporter_reads(setup, conn, capsys):
    world, servers, port, textfile, tmp_path = setup
    assert backup.main(["snapshot", "--stack", "prod"], conn=conn, today=DAY, now=NOW, ssh_port=port) == 0
    out, err = capsys.readouterr()
    assert err == "" and "backup metrics written to prod-management:" in out
    assert sorted(os.listdir(textfile)) == [METRICS_FILE]  # no temp file left, nothing else sent
    landed = (textfile / METRICS_FILE).read_text()
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=landed, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout + check.stderr == "", check.stdout + check.stderr

    scraped = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in node_exporter_metrics(textfile, tmp_path).splitlines() if not line.startswith("#")}
    assert scraped["node_textfile_scrape_error"] == 0
    # Today's snapshot (the fake cloud creates it at 09:00) is the newest of the database's two.
    today = dt.datetime(2024, 5, 17, 9, tzinfo=dt.timezone.utc).timestamp()
    db = '{environment="prod",essential="true",name="prod-database-data",volume="database"}'
    assert scraped[f"idr_backup_last_snapshot_timestamp_seconds{db}"] == today
    assert scraped[f"idr_backup_snapshots{db}"] == 2
    assert scraped[f"idr_backup_last_snapshot_size_bytes{db}"] == 800 * 2 ** 30
    assert len([k for k in scraped if k.startswith("idr_backup_snapshots{")]) == 3  # and the cache volume
    # Logged in to the management host through the bastion, whose key is now recorded.
    assert "Accepted publickey for root" in servers.log(MANAGEMENT)
    recorded = (tmp_path / "cache" / "known_hosts" / "prod").read_text()
    assert recorded.startswith("idr-bastion ") and servers.host_key(BASTION).split()[1] in recorded


def test_each_delivery_replaces_the_file_whole(setup, conn, capsys):
    world, servers, port, textfile, tmp_path = setup
    assert backup.main(["list", "--stack", "prod"], conn=conn, now=NOW, ssh_port=port) == 0
    first = textfile / METRICS_FILE
    before, inode = first.read_text(), first.stat().st_ino
    later = NOW + dt.timedelta(hours=1)
    assert backup.main(["list", "--stack", "prod"], conn=conn, now=later, ssh_port=port) == 0
    # A new file renamed over the old one: a reader holds either whole.
    assert first.stat().st_ino != inode and first.read_text() != before
    assert f"idr_backup_metrics_timestamp_seconds{{environment=\"prod\"}} {later.timestamp():.0f}" in first.read_text()

    # A delivery cut short (fewer bytes than announced) changes nothing and leaves no temp file.
    target = metrics_target("prod", world.stack("prod")["outputs"], world.config("prod"))
    short = subprocess.run(["ssh", "-F", "/dev/null", "-p", str(port), "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                            "-i", str(tmp_path / "stack-key"), f"root@{target.address}",
                            remote_write("root", 10_000)], input=b"# half a file\n", capture_output=True)
    assert short.returncode != 0 and b"got 14 of 10000 bytes" in short.stderr
    assert sorted(os.listdir(textfile)) == [METRICS_FILE] and first.stat().st_ino != inode
    assert "half a file" not in first.read_text()


def test_changed_bastion_key_refuses_delivery(setup, conn, capsys):
    world, servers, port, textfile, tmp_path = setup
    assert backup.main(["list", "--stack", "prod"], conn=conn, now=NOW, ssh_port=port) == 0
    servers.new_host_key(BASTION)  # a different server at the bastion's address
    assert backup.main(["list", "--stack", "prod"], conn=conn, now=NOW, ssh_port=port) == backup.DELIVERY_FAILED
    assert "warning: backup metrics of prod not delivered" in capsys.readouterr().err
