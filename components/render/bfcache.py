"""Bio-Formats cache regeneration: the files and scripts on each host.

The proxy coordinates: it holds its own SSH key, the node list and the run
scripts. Nodes are the omeroreadwrite host and every omeroreadonly host, by
their fixed addresses from settings. The ID list is queried on the database
host (as postgres: omeroreadonly has a statement timeout) through a forced
command of the coordinator's key. Pure functions: no Pulumi here.

Nothing is left behind: the coordinator forgets the host key of a replaced
node or database (forget-hosts.sh, from the instance IDs it saw last), and
with generation 0 every node and the database drop the coordinator's key
from the login user's authorized_keys (revoke.sh), by the comment every such
line carries (AUTHORIZED_MARKER).

A run is a generation (a number, started by `pulumi up`) or a named subset
(started by an operator with idr-bfcache-start); each has its own state
directory under STATE_DIR. The coordinator's dispatcher (dispatch.py) runs
the lanes (slots per node, sessions over shared connections), chooses each
lane's images from the node speeds it has measured, and records every
image's result as it arrives.

The programs are real files shipped verbatim (components/files/bfcache);
only their config is rendered here: bfcache.conf and the nodes file on the
coordinator, node.conf on each node.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .. import layout
from ..layout import DATA_VOLUME_MOUNTS, Host
from . import HostFile, render_template

LIBEXEC = "/usr/local/libexec/idr-bfcache"
CONF_DIR = "/etc/idr-bfcache"
STATE_DIR = "/var/lib/idr-bfcache"
# ControlMaster sockets: a short path (a socket path has at most 107 bytes).
CONTROL_DIR = f"{STATE_DIR}/cm"
KEY_DIR = "/root/.ssh/idr_bfcache"
KNOWN_HOSTS = f"{KEY_DIR}/known_hosts"
# host -> instance ID the coordinator last saw (forget-hosts.sh).
INSTANCE_RECORD = f"{KEY_DIR}/instance-ids"
SSH_PORT = 22
# The programs, shipped as they are.
FILES = Path(__file__).resolve().parent.parent / "files" / "bfcache"
CONF = f"{CONF_DIR}/bfcache.conf"
NODE_CONF = f"{CONF_DIR}/node.conf"
# node_exporter's textfile collector (the metrics contract with issue 21).
METRICS_FILE = "/var/lib/node_exporter/textfile/idr_bfcache.prom"
# The comment of every authorized_keys line of the coordinator's key
# (`idr-bfcache-coordinator@<env>-proxy`): a new key replaces, and revoking
# removes, exactly those lines. LEGACY_MARKER begins the comment earlier
# versions wrote (`idr-bfcache@<env>-proxy`); those lines are matched too.
AUTHORIZED_MARKER = "idr-bfcache-coordinator"
LEGACY_MARKER = "idr-bfcache@"
SQL_PATH = "/usr/local/share/idr-bfcache/first_image_per_fileset.sql"
# psql variables make it a psql script, not plain SQL (.psql).
SUBSET_SQL_PATH = "/usr/local/share/idr-bfcache/first_image_of_subset.psql"
STATUS_BIN = "/usr/local/bin/idr-bfcache-status"
START_BIN = "/usr/local/bin/idr-bfcache-start"
# Written by node-setup on a node once omero and omero-cli-render are in
# place; the coordinator starts no run while a node lacks it.
NODE_READY = f"{STATE_DIR}/node-ready"
CACHE_DIR = f"{DATA_VOLUME_MOUNTS['omeroreadwrite']}/BioFormatsCache"

SLOWDOWN = 10          # starting value: omeroreadonly vs omeroreadwrite time per image (production)
ATTEMPTS = 3           # tries per image (render-one.sh)
# The OMERO public user's password, written by the deployment step's
# post-install (components/playbooks/postinstall.yml, same default path).
PUBLIC_PASSWORD_FILE = "/etc/idr/omero-public-password"
KEEP_GENERATIONS = 3   # generation state directories kept on the coordinator
JOB_TIMEOUT_SECONDS = 6 * 3600   # one image; a hung omero must not hold a lane forever
# sshd's default MaxSessions: sessions one shared connection may carry. A
# node with more slots gets one more connection per MAX_SESSIONS slots.
MAX_SESSIONS = 10

FAST_ROLE = "omeroreadwrite"
SLOW_ROLE = "omeroreadonly"
# What idr-bfcache-start can take as a subset (the subset SQL's `kind`).
SUBSET_KINDS = ("screen", "plate", "project", "dataset", "filesets", "images")


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    address: str
    slots: int
    alias: str = ""

    @property
    def prior(self) -> int:
        """Starting value of the node's time per image, relative to omeroreadwrite."""
        return 1 if self.role == FAST_ROLE else SLOWDOWN


def nodes(settings) -> list[Node]:
    """The read-write host first, then every read-only host, from settings."""
    hosts = list(layout.hosts_of(settings, FAST_ROLE)) + list(layout.hosts_of(settings, SLOW_ROLE))
    return [Node(h.name, h.role, h.fixed_ip, settings.bfcache_slots[h.role], h.alias) for h in hosts]


def peers(settings) -> list[Host]:
    """Every host the coordinator logs in to: the nodes, then the database."""
    return (list(layout.hosts_of(settings, FAST_ROLE)) + list(layout.hosts_of(settings, SLOW_ROLE))
            + [layout.host(settings, "database")])


def key_comment(settings) -> str:
    """The comment of the coordinator's key pair (ssh-keygen -C)."""
    return f"idr-bfcache@{layout.host(settings, 'proxy').name}"


def authorized_comment(settings) -> str:
    """The comment of the coordinator's lines in authorized_keys."""
    return f"{AUTHORIZED_MARKER}@{layout.host(settings, 'proxy').name}"


def first_image_sql() -> str:
    return render_template("bfcache/first_image_per_fileset.sql")


def subset_sql() -> str:
    return render_template("bfcache/first_image_of_subset.psql")


def ready_marker(settings) -> str:
    """What NODE_READY holds on a node that can run jobs."""
    return f"omero-cli-render {settings.omero_cli_render_version}"


def waiting_line(what: str, hosts: str) -> str:
    """The one line a step prints while software from IDR's deployment
    playbooks is missing and the playbooks are not run by this program."""
    return (f"waiting for {what} on {hosts}: install it, then bump idr:deploymentGeneration "
            "and run pulumi up")


# --- coordinator (proxy) ----------------------------------------------------

def keygen_files(settings) -> list[HostFile]:
    text = render_template(
        "bfcache/keygen.sh.j2", coordinator=layout.host(settings, "proxy").name,
        generation=settings.bfcache_generation, key_dir=KEY_DIR, comment=key_comment(settings))
    return [HostFile(f"{LIBEXEC}/keygen.sh", text, "0755")]


def keygen_run() -> str:
    return f"{LIBEXEC}/keygen.sh"


def public_key_of(stdout: str | None) -> str:
    """The coordinator's public key from the keygen step's output ('' if none)."""
    lines = [line for line in (stdout or "").splitlines() if line.startswith("ssh-ed25519 ")]
    return lines[-1].strip() if lines else ""


def shell_conf(header: str, values: Mapping[str, object]) -> str:
    """A config file both bash (sourced) and dispatch.py read: `key=value`,
    each value shell-quoted."""
    return header + "".join(f"{k}={shlex.quote(str(v))}\n" for k, v in values.items())


def shipped(name: str, path: str) -> HostFile:
    return HostFile(path, (FILES / name).read_text(), "0755")


def nodes_text(settings) -> str:
    return ("# address name alias role starting-time-per-image (relative to omeroreadwrite) slots.\n"
            "# Re-read by a running dispatcher: a changed node list applies to a running regeneration.\n"
            + "".join(f"{n.address} {n.name} {n.alias} {n.role} {n.prior} {n.slots}\n" for n in nodes(settings)))


def coordinator_conf(settings) -> str:
    database = layout.host(settings, "database")
    return shell_conf(
        f"# Bio-Formats cache regeneration on {layout.host(settings, 'proxy').name}: read by run.sh, start.sh,\n"
        "# idr-bfcache-start, idr-bfcache-status and dispatch.py. Rendered by components/render/bfcache.py.\n",
        dict(state_dir=STATE_DIR, control_dir=CONTROL_DIR, nodes_file=f"{CONF_DIR}/nodes",
             ssh_config=f"{CONF_DIR}/ssh_config", ssh_user=settings.ssh_user,
             database_login=f"{settings.ssh_user}@{database.fixed_ip}",
             dispatch=f"{LIBEXEC}/dispatch.py", run_script=f"{LIBEXEC}/run.sh", render_one=f"{LIBEXEC}/render-one.sh",
             node_ready=NODE_READY, ready=ready_marker(settings), max_sessions=MAX_SESSIONS,
             keep_generations=KEEP_GENERATIONS, metrics_file=METRICS_FILE,
             waiting_omero=waiting_line("omero", "%s"), waiting_psql=waiting_line("psql", database.name)))


def coordinator_files(settings) -> list[HostFile]:
    return [
        HostFile(CONF, coordinator_conf(settings)),
        HostFile(f"{CONF_DIR}/nodes", nodes_text(settings)),
        HostFile(f"{CONF_DIR}/ssh_config", render_template(
            "bfcache/ssh_config.j2", key=f"{KEY_DIR}/id_ed25519", known_hosts=KNOWN_HOSTS)),
        shipped("dispatch.py", f"{LIBEXEC}/dispatch.py"),
        shipped("run.sh", f"{LIBEXEC}/run.sh"),
        shipped("start.sh", f"{LIBEXEC}/start.sh"),
        shipped("idr-bfcache-start", START_BIN),
        shipped("idr-bfcache-status", STATUS_BIN),
    ]


def start_run(settings) -> str:
    return f"{LIBEXEC}/start.sh {int(settings.bfcache_generation)}"


def forget_files(settings) -> list[HostFile]:
    return [HostFile(f"{LIBEXEC}/forget-hosts.sh", render_template(
        "bfcache/forget-hosts.sh.j2", coordinator=layout.host(settings, "proxy").name, key_dir=KEY_DIR,
        known_hosts=KNOWN_HOSTS, record=INSTANCE_RECORD, port=str(SSH_PORT)), "0755")]


def forget_run(settings, instance_ids: Mapping[str, str]) -> str:
    """forget-hosts.sh with every peer's name, alias, address and current
    instance ID (host name -> ID; a missing one is refused on the host)."""
    specs = [f"{h.name},{h.alias},{h.fixed_ip},{instance_ids.get(h.name) or ''}" for h in peers(settings)]
    return " ".join([f"{LIBEXEC}/forget-hosts.sh", *(shlex.quote(s) for s in specs)])


# --- nodes, database, omeroreadwrite -----------------------------------------

def _markers() -> dict:
    return {"marker": AUTHORIZED_MARKER, "legacy": LEGACY_MARKER}


def authorize_script(settings, host, public_key: str, forced_command: str = "") -> str:
    """Root script installing the coordinator's key for the login user of
    `host`, only from the coordinator's address (and forced to one command on
    the database host). Re-running replaces an older coordinator key."""
    fields = public_key.split()
    key = " ".join(fields[:2]) if len(fields) >= 2 and fields[0] == "ssh-ed25519" else ""
    options = [f'from="{layout.host(settings, "proxy").fixed_ip}"']
    if forced_command:
        options = [f'command="{forced_command}"', "restrict"] + options
    line = f"{','.join(options)} {key} {authorized_comment(settings)}" if key else ""
    return render_template("bfcache/authorize.sh.j2", host=host.name, user=settings.ssh_user,
                           line=line, **_markers())


def revoke_run(settings, host) -> str:
    """The follow-up step (shell, as root, after install-files' host check)
    that removes the coordinator's key from the login user's authorized_keys
    on `host`: generation 0."""
    return render_template("bfcache/revoke.sh.j2", host=host.name, user=settings.ssh_user, **_markers())


def node_conf(settings, host) -> str:
    return shell_conf(f"# Bio-Formats cache jobs on {host.name}: read by render-one.sh. "
                      "Rendered by components/render/bfcache.py.\n",
                      dict(omero_bin=settings.omero_bin, job_timeout_seconds=JOB_TIMEOUT_SECONDS, attempts=ATTEMPTS,
                           public_password_file=PUBLIC_PASSWORD_FILE))


def node_files(settings, host) -> list[HostFile]:
    return [
        HostFile(NODE_CONF, node_conf(settings, host)),
        shipped("render-one.sh", f"{LIBEXEC}/render-one.sh"),
        HostFile(f"{LIBEXEC}/node-setup.sh", render_template(
            "bfcache/node-setup.sh.j2", host=host.name, user=settings.ssh_user,
            omero_bin=settings.omero_bin, generation=settings.bfcache_generation,
            version=settings.omero_cli_render_version, ready_file=NODE_READY, ready=ready_marker(settings),
            deployment_enabled=settings.deployment_enabled, waiting=waiting_line("omero", host.name)), "0755"),
    ]


def node_run() -> str:
    return f"{LIBEXEC}/node-setup.sh"


def database_files(settings) -> list[HostFile]:
    database = layout.host(settings, "database")
    return [
        HostFile(SQL_PATH, first_image_sql()),
        HostFile(SUBSET_SQL_PATH, subset_sql()),
        HostFile(f"{LIBEXEC}/ids.sh", render_template(
            "bfcache/ids.sh.j2", host=database.name, database=settings.database_name, sql_path=SQL_PATH,
            subset_sql_path=SUBSET_SQL_PATH, kinds=SUBSET_KINDS), "0755"),
        HostFile(f"{LIBEXEC}/db-setup.sh", render_template(
            "bfcache/db-setup.sh.j2", host=database.name, deployment_enabled=settings.deployment_enabled,
            waiting=waiting_line("psql", database.name)), "0755"),
    ]


def database_run() -> str:
    return f"{LIBEXEC}/db-setup.sh"


def ids_command() -> str:
    return f"{LIBEXEC}/ids.sh"


KEEP_BACKUPS = 2   # cache backups kept on /data: this generation's and the one before


def backup_files() -> list[HostFile]:
    return [HostFile(f"{LIBEXEC}/backup.sh", render_template("bfcache/backup.sh.j2", cache_dir=CACHE_DIR,
                                                             keep=KEEP_BACKUPS), "0755")]


def backup_run(settings) -> str:
    return f"{LIBEXEC}/backup.sh {shlex.quote(str(int(settings.bfcache_generation)))}"
