"""The statement-timeout SQL and its runner, on a real PostgreSQL.

The test starts its own cluster (initdb + pg_ctl as the postgres OS user,
Unix socket only) and runs the rendered script exactly as HostFiles would
(as root; it switches to postgres itself with runuser).
"""
from __future__ import annotations

import os
import subprocess
import time

import psycopg
import pytest

from components.render import database as render
from tests.support.settings import SECRET_VARS, settings_for
from tests.support.postgres import Cluster, pg_cluster

pytestmark = pytest.mark.integration

RAW = {"sshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITESTKEY test", "sshBastion": "203.0.113.10",
       "omeroreadonlyCount": "1",
       # The deployment step is on by default and needs a pinned commit.
       "deploymentRef": "0123456789abcdef0123456789abcdef01234567", "deploymentSecretVars": SECRET_VARS}


def settings(timeout_ms: int):
    raw = {**RAW, "statementTimeoutMs": str(timeout_ms)}
    return settings_for("test", base=raw, secret=lambda k: "KEY" if k == "sshPrivateKey" else None)


@pytest.fixture(scope="module")
def cluster():
    with pg_cluster(5439) as c:
        with c.connect() as db:
            db.execute("CREATE ROLE omeroreadonly LOGIN")
            db.execute("CREATE ROLE omero LOGIN")
        yield c


def role_setting(cluster: Cluster):
    """The omeroreadonly row of pg_db_role_setting with its xmin: any ALTER
    ROLE ... SET rewrites the row, so an unchanged xmin proves nothing ran."""
    with cluster.connect() as db:
        return db.execute(
            "SELECT s.xmin::text, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = 'omeroreadonly'").fetchone()


def apply(cluster: Cluster, tmp_path, timeout_ms) -> subprocess.CompletedProcess:
    """Install the rendered files under tmp_path and run the follow-up step
    with the paths mapped there, as root like HostFiles."""
    for f in render.database_files(settings(timeout_ms)):
        target = tmp_path / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
        target.chmod(int(f.mode, 8))
    command = render.run_command().replace("/usr/", f"{tmp_path}/usr/").replace("/etc/", f"{tmp_path}/etc/")
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, **cluster.env})


def test_scripts_pass_shellcheck():
    from tests.support.tools import tool
    script = render.apply_script(settings(60000))
    result = subprocess.run([tool("shellcheck"), "-s", "bash", "-"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_default_is_sixty_seconds():
    s = settings_for("test", base=RAW, secret=lambda k: "KEY" if k == "sshPrivateKey" else None)
    assert "ALTER ROLE omeroreadonly SET statement_timeout = 60000;" in render.statement_timeout_sql(s)


def test_applied_once_then_unchanged(cluster, tmp_path):
    assert role_setting(cluster) is None
    first = apply(cluster, tmp_path, 1000)
    assert first.returncode == 0, first.stderr
    assert "statement_timeout set to 1000 ms (was unset)" in first.stderr
    before = role_setting(cluster)
    assert before[1] == ["statement_timeout=1000"]
    with cluster.connect() as db:
        assert db.execute("SELECT useconfig FROM pg_user WHERE usename = 'omeroreadonly'").fetchone()[0] \
            == ["statement_timeout=1000"]
        # Another transaction in between, so a rewrite would get a new xmin.
        db.execute("CREATE TEMP TABLE bump (x int)")

    second = apply(cluster, tmp_path, 1000)
    assert second.returncode == 0, second.stderr
    assert "already 1000 ms, unchanged" in second.stderr
    assert role_setting(cluster) == before  # same row version: nothing was altered

    # Nothing else was created: still only the roles the test made.
    with cluster.connect() as db:
        roles = {r for (r,) in db.execute("SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'")}
    assert roles == {"postgres", "omeroreadonly", "omero"}


def test_changed_config_updates_setting(cluster, tmp_path):
    apply(cluster, tmp_path, 1000)
    changed = apply(cluster, tmp_path, 2500)
    assert changed.returncode == 0, changed.stderr
    assert "set to 2500 ms (was statement_timeout=1000)" in changed.stderr
    assert role_setting(cluster)[1] == ["statement_timeout=2500"]
    assert apply(cluster, tmp_path, 1000).returncode == 0  # back to what the next test expects


def test_slow_query_cancelled_for_omeroreadonly_only(cluster, tmp_path):
    assert apply(cluster, tmp_path, 1000).returncode == 0
    with cluster.connect(user="omeroreadonly", autocommit=False) as db:
        assert db.execute("SHOW statement_timeout").fetchone()[0] == "1s"
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            db.execute("SELECT pg_sleep(3)")
        assert time.monotonic() - start < 2.5
    with cluster.connect(user="omero", autocommit=False) as db:
        assert db.execute("SHOW statement_timeout").fetchone()[0] == "0"
        db.execute("SELECT pg_sleep(1.5)")  # longer than omeroreadonly's limit, finishes


def test_missing_role_fails_loudly(cluster, tmp_path):
    with cluster.connect() as db:
        db.execute("ALTER ROLE omeroreadonly NOLOGIN")  # pg_user lists login roles only
    try:
        result = apply(cluster, tmp_path, 1000)
    finally:
        with cluster.connect() as db:
            db.execute("ALTER ROLE omeroreadonly LOGIN")
    assert result.returncode != 0
    assert "login role omeroreadonly does not exist" in result.stderr
