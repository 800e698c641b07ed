"""The deployment step: IDR's playbooks, run on the operator's machine.

Pure functions: the script a pulumi-command local.Command runs, and what
makes it run again. `components/deployment.py` only wires them.
"""
from __future__ import annotations

import hashlib
import re

from . import render_template
from ..settings import Settings


def limit(settings: Settings) -> str:
    """Every host but the proxy, whose nginx is this program's."""
    env = settings.environment
    return f"{env}-hosts:!{env}-proxy-hosts"


def cache_name(repository: str) -> str:
    """A directory name for the repository's cached clone."""
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", repository.rstrip("/").split("/")[-1].removesuffix(".git"))
    return f"{tail}-{hashlib.sha256(repository.encode()).hexdigest()[:12]}"


def run_script(settings: Settings, name: str) -> str:
    d = settings.deployment
    return render_template(
        "deployment/run-playbooks.sh.j2", step=name, environment=settings.environment,
        path=d.path, repository=d.repository, ref=d.ref, cache_name=cache_name(d.repository),
        vars_file=d.vars_file, playbooks=d.playbooks, limit=limit(settings))


def triggers(settings: Settings) -> list[str]:
    """What the playbooks depend on, besides the script itself and the
    servers' instance IDs: what they are (ref, or a local checkout's content),
    the vars, the hosts (names and addresses, never the bastion address: a
    swap moves it without changing a host) and the operator's bump."""
    d = settings.deployment
    hosts = ",".join(f"{h.name}={h.fixed_ip}" for h in settings.hosts)
    return [d.source_digest, d.vars_digest, hosts, str(d.generation)]
