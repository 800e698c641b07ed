"""Database: the omeroreadonly role's statement timeout on <env>-database.

Only wiring: the SQL and the script that runs it come from
components/render/database.py. The command re-runs when the rendered text
changes (a new idr:statementTimeoutMs); the SQL itself is idempotent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from . import layout
from .hostfiles import HostFiles, HostFilesArgs, HostStepsArgs
from .render import database as render

TYPE = "idr:database:Database"


@dataclass
class DatabaseArgs(HostStepsArgs):
    pass


class Database(pulumi.ComponentResource):
    def __init__(self, name: str, args: DatabaseArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__(TYPE, name, None, opts)
        s = args.settings
        host = layout.host(s, "database")
        self.statement_timeout = HostFiles(
            f"{name}-statement-timeout",
            HostFilesArgs(s, host, render.database_files(s), run=render.run_command(),
                          instance_id=args.instance_ids.get(host.name),
                          # Again after the playbooks run again (or, with the
                          # step off, once PostgreSQL is installed by hand).
                          triggers=[s.deployment_generation]),
            pulumi.ResourceOptions(parent=self, depends_on=args.waits(host)),
        )
        self.register_outputs({"host": host.name, "statementTimeoutMs": s.statement_timeout_ms})
