"""The deployment step: IDR's playbooks, run on the operator's machine.

Pure functions: the script a pulumi-command local.Command runs, and what
makes it run again. `components/deployment.py` only wires them.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from . import render_template
from ..settings import Settings
from ..validators import project_path

# Where galaxy roles land in a checkout (IDR/deployment's roles_path): not part of what the playbooks are.
_CHECKOUT_SKIP = {"vendor", "roles", ".git", "__pycache__"}


def limit(settings: Settings) -> str:
    """Every host but the proxy, whose nginx is this program's."""
    env = settings.environment
    return f"{env}-hosts:!{env}-proxy-hosts"


def cache_name(repository: str) -> str:
    """A directory name for the repository's cached clone."""
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", repository.rstrip("/").split("/")[-1].removesuffix(".git"))
    return f"{tail}-{hashlib.sha256(repository.encode()).hexdigest()[:12]}"


def run_script(s: Settings, name: str) -> str:
    # The checkout's path as configured, not resolved: the step must look the
    # same from every operator's machine (its text is a trigger).
    return render_template(
        "deployment/run-playbooks.sh.j2", step=name, environment=s.environment,
        path=s.deployment_path, repository=s.deployment_repository, ref=s.deployment_ref,
        cache_name=cache_name(s.deployment_repository), vars_file=s.deployment_vars_file,
        playbooks=s.deployment_playbooks, limit=limit(s))


def tree_digest(root: Path) -> str:
    """sha256 of every file's relative path and content under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not _CHECKOUT_SKIP & set(rel.parts) and path.is_file():
            digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def triggers(settings: Settings) -> list[str]:
    """What the playbooks depend on, besides the script itself and the
    servers' instance IDs: what they are (ref, or a local checkout's content),
    the vars, the hosts (names and addresses, never the bastion address: a
    swap moves it without changing a host) and the operator's bump."""
    s = settings
    source = (tree_digest(project_path(s.deployment_path) / "ansible") if s.deployment_path
              else f"{s.deployment_repository}@{s.deployment_ref}")
    vars_digest = (hashlib.sha256(project_path(s.deployment_vars_file).read_text().encode()).hexdigest()
                   if s.deployment_vars_file else "")
    hosts = ",".join(f"{h.name}={h.fixed_ip}" for h in s.hosts)
    return [source, vars_digest, hosts, str(s.deployment_generation)]
