"""Files for <env>-database: the omeroreadonly role's statement timeout."""
from __future__ import annotations

from .. import layout
from . import HostFile, render_template
from ..settings import Settings

READONLY_ROLE = "omeroreadonly"
APPLY_SCRIPT = "/usr/local/sbin/idr-apply-sql"
TIMEOUT_SQL = "/etc/idr/database/statement-timeout.sql"


def statement_timeout_sql(settings: Settings) -> str:
    return render_template("database/statement-timeout.sql.j2",
                           role=READONLY_ROLE, timeout_ms=int(settings.statement_timeout_ms))


def apply_script(settings: Settings) -> str:
    return render_template("database/apply-sql.sh.j2", host=layout.host(settings, "database").name, script=APPLY_SCRIPT,
                           wait_for_software=not settings.deployment_enabled)


def database_files(settings: Settings) -> list[HostFile]:
    return [HostFile(APPLY_SCRIPT, apply_script(settings), "0755"),
            HostFile(TIMEOUT_SQL, statement_timeout_sql(settings), "0644")]


def run_command() -> str:
    """The follow-up step HostFiles runs as root once the files are in place."""
    return f"{APPLY_SCRIPT} {TIMEOUT_SQL}"
