"""A throw-away PostgreSQL cluster for the tests and benchmarks.

Not pytest-postgresql: it starts pg_ctl as the current user, and PostgreSQL
refuses to run as root, which is how CI runs. Here initdb and pg_ctl run as
the postgres OS user; the cluster listens on a Unix socket only (no TCP).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def as_postgres(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True,
                          text=True, cwd="/", **kw)


@dataclass(frozen=True)
class Cluster:
    socket_dir: Path
    port: int

    @property
    def env(self) -> dict[str, str]:
        """What points psql (and the rendered scripts) at this cluster."""
        return {"PGHOST": str(self.socket_dir), "PGPORT": str(self.port),
                "PATH": f"{PG_BIN}:{os.environ['PATH']}"}

    def connect(self, dbname: str = "postgres", user: str = "postgres", autocommit: bool = True):
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=user, dbname=dbname,
                               autocommit=autocommit)


def _ensure_installed() -> None:
    if not (PG_BIN / "initdb").exists():
        subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--home-dir", "/var/lib/postgresql", "postgres"], check=True)


@contextmanager
def pg_cluster(port: int, prefix: str = "idr-pg-") -> Iterator[Cluster]:
    """initdb + start on `port` (socket only); stopped and removed on exit."""
    _ensure_installed()
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                "-o", f"-c listen_addresses='' -c unix_socket_directories={root} -p {port}", "start")
    try:
        yield Cluster(root, port)
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)
