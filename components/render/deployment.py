"""The deployment step: IDR's playbooks, run on the operator's machine.

Pure functions: the script a pulumi-command local.Command runs, and what
makes it run again. `components/deployment.py` only wires them.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import yaml

from .. import layout
from . import monitoring, render_template
from .database import READONLY_ROLE
from ..settings import Settings
from ..validators import project_path

# The project's own playbooks the step runs (facts, post-install, record).
PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
# Where galaxy roles land in a checkout (IDR/deployment's roles_path): not part of what the playbooks are.
_CHECKOUT_SKIP = {"vendor", "roles", ".git", "__pycache__"}


# Where IDR's ome.hosts_populate writes its /etc/hosts: beside the real one,
# which the program's hosts step owns (components/render/host.py).
HOSTS_POPULATE_TARGET = "/etc/hosts.idr-playbooks"
# The deployment step's cache on the operator's machine (checkouts, and the
# bastion's key recorded on first contact, per environment): run-playbooks.sh
# and operations.backup both reach the hosts with it.
CACHE_ENV = "IDR_DEPLOYMENT_CACHE"
CACHE_NAME = "idr-deployment"          # under $XDG_CACHE_HOME, else ~/.cache
KNOWN_HOSTS_DIR = "known_hosts"


def program_vars(s: Settings) -> str:
    """Vars the program passes to the playbooks last, so that they win over
    IDR's group_vars and the operator's vars file. Not a trigger: a new
    statement timeout is applied by its SQL step at once (components/
    database.py), not by running every playbook again; the playbooks get it
    whenever they run next."""
    values = {
        "hosts_populate_etc_hosts": HOSTS_POPULATE_TARGET,
        # IDR's group_vars/database-hosts.yml, with idr:statementTimeoutMs
        # instead of its 60 s (idr-omero-readonly.yml applies it on every run).
        "idr_omero_readonly_database": {
            "name": s.database_name, "user": READONLY_ROLE,
            "password": "{{ idr_secret_postgresql_password_ro }}",
            "statement_timeout": int(s.statement_timeout_ms)},
    }
    if monitoring.enabled(s):
        # Exporters' flags, scrape jobs, probes, receivers (render/monitoring.py).
        values |= monitoring.program_vars(s)
    return yaml.safe_dump(values, sort_keys=False)


# IDR's playbook that installs the monitoring stack and every host's exporters
# (idr:monitoringEnabled), run after the configured ones, then the program's.
MONITORING_PLAYBOOKS = ("management-prometheus.yml",)
MONITORING_OWN_PLAYBOOK = "monitoring.yml"


def playbooks(s: Settings) -> list[str]:
    """What the step runs from the checkout's ansible/ directory, in order."""
    extra = [p for p in MONITORING_PLAYBOOKS if p not in s.deployment_playbooks] if monitoring.enabled(s) else []
    return [*s.deployment_playbooks, *extra]


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
        cache_env=CACHE_ENV, cache_dir=CACHE_NAME, known_hosts_dir=KNOWN_HOSTS_DIR,
        playbooks=playbooks(s),
        own_playbooks=[MONITORING_OWN_PLAYBOOK] if monitoring.enabled(s) else [])


def tree_digest(root: Path) -> str:
    """sha256 of every file's relative path and content under `root`."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not _CHECKOUT_SKIP & set(rel.parts) and path.is_file():
            digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def what_is_deployed(settings: Settings) -> list[str]:
    """What every host gets again when it changes: the playbooks (ref, or a
    local checkout's content, and the project's own), the vars, the extra
    groups and the operator's bump. A host records their digest (with the
    script's and the secret vars') once deployed."""
    s = settings
    source = (tree_digest(project_path(s.deployment_path) / "ansible") if s.deployment_path
              else f"{s.deployment_repository}@{s.deployment_ref}")
    vars_digest = (hashlib.sha256(project_path(s.deployment_vars_file).read_text().encode()).hexdigest()
                   if s.deployment_vars_file else "")
    groups = ",".join(f"{g}={r}" for g, r in s.deployment_extra_groups)
    deployed = [source, vars_digest, tree_digest(PLAYBOOKS), groups, str(s.deployment_generation)]
    if monitoring.enabled(s):
        # Alertmanager's receivers are written by the playbooks (monitoring.yml).
        deployed.append(f"alertReceiver={s.alert_receiver} alertSlackChannel={s.alert_slack_channel}")
    return deployed


def triggers(settings: Settings) -> list[str]:
    """What runs the step again, besides the script itself and the servers'
    instance IDs: what is deployed, and the hosts (names and addresses, never
    the bastion address: a swap moves it without changing a host). Hosts
    that have this deployment already are skipped by the step itself."""
    hosts = ",".join(f"{h.name}={h.fixed_ip}" for h in layout.hosts(settings))
    return [*what_is_deployed(settings), hosts]


def deployment_cache() -> Path:
    """The cache directory as run-playbooks.sh finds it."""
    return Path(os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), CACHE_NAME))


def known_hosts_file(environment: str) -> Path:
    """Where the deployment step records the bastion's key of `environment`
    when idr:sshBastionHostKey does not pin it."""
    return deployment_cache() / KNOWN_HOSTS_DIR / environment
