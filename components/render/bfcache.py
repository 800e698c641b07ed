"""Bio-Formats cache regeneration: the files and scripts on each host.

The proxy coordinates: it holds its own SSH key, the node list and the run
scripts. Nodes are the omeroreadwrite host and every omeroreadonly host, by
their fixed addresses from settings. The ID list is queried on the database
host (as postgres: omeroreadonly has a statement timeout) through a forced
command of the coordinator's key. Pure functions: no Pulumi here.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..settings import DATA_VOLUME_MOUNTS
from . import HostFile, render_template

LIBEXEC = "/usr/local/libexec/idr-bfcache"
CONF_DIR = "/etc/idr-bfcache"
STATE_DIR = "/var/lib/idr-bfcache"
KEY_DIR = "/root/.ssh/idr_bfcache"
SQL_PATH = "/usr/local/share/idr-bfcache/first_image_per_fileset.sql"
STATUS_BIN = "/usr/local/bin/idr-bfcache-status"
CACHE_DIR = f"{DATA_VOLUME_MOUNTS['omeroreadwrite']}/BioFormatsCache"

SLOWDOWN = 10          # omeroreadonly vs omeroreadwrite time per job (production)
ATTEMPTS = 3           # tries per image within one job (render-one.sh)
KEEP_GENERATIONS = 3   # state directories kept on the coordinator
JOB_TIMEOUT = "6h"     # one image; a hung job must not hold a slot forever

FAST_ROLE = "omeroreadwrite"
SLOW_ROLE = "omeroreadonly"


@dataclass(frozen=True)
class Node:
    name: str
    role: str
    address: str
    slots: int


def nodes(settings) -> list[Node]:
    """The read-write host first, then every read-only host, from settings."""
    hosts = list(settings.hosts_of(FAST_ROLE)) + list(settings.hosts_of(SLOW_ROLE))
    return [Node(h.name, h.role, h.fixed_ip, settings.bfcache_slots[h.role]) for h in hosts]


def key_comment(settings) -> str:
    return f"idr-bfcache@{settings.host('proxy').name}"


def first_image_sql() -> str:
    return render_template("bfcache/first_image_per_fileset.sql")


# --- coordinator (proxy) ----------------------------------------------------

def keygen_files(settings) -> list[HostFile]:
    text = render_template(
        "bfcache/keygen.sh.j2", coordinator=settings.host("proxy").name,
        generation=settings.bfcache_generation, key_dir=KEY_DIR, comment=key_comment(settings))
    return [HostFile(f"{LIBEXEC}/keygen.sh", text, "0755")]


def keygen_run() -> str:
    return f"{LIBEXEC}/keygen.sh"


def public_key_of(stdout: str | None) -> str:
    """The coordinator's public key from the keygen step's output ('' if none)."""
    lines = [line for line in (stdout or "").splitlines() if line.startswith("ssh-ed25519 ")]
    return lines[-1].strip() if lines else ""


def coordinator_files(settings) -> list[HostFile]:
    every = nodes(settings)
    database = settings.host("database")
    fast = sum(n.slots for n in every if n.role == FAST_ROLE)
    slow = sum(n.slots for n in every if n.role == SLOW_ROLE)
    run = render_template(
        "bfcache/run.sh.j2", coordinator=settings.host("proxy").name,
        state_dir=STATE_DIR, nodes_file=f"{CONF_DIR}/nodes", key=f"{KEY_DIR}/id_ed25519",
        known_hosts=f"{KEY_DIR}/known_hosts",
        database_login=f"{settings.ssh_user}@{database.fixed_ip}",
        render_one=f"{LIBEXEC}/render-one.sh", fast_slots=fast, slow_slots=slow,
        slowdown=SLOWDOWN, keep_generations=KEEP_GENERATIONS)
    return [
        HostFile(f"{CONF_DIR}/nodes", render_template("bfcache/nodes.j2", nodes=every, user=settings.ssh_user)),
        HostFile(f"{LIBEXEC}/run.sh", run, "0755"),
        HostFile(f"{LIBEXEC}/start.sh", render_template(
            "bfcache/start.sh.j2", state_dir=STATE_DIR, run_script=f"{LIBEXEC}/run.sh"), "0755"),
        HostFile(STATUS_BIN, render_template("bfcache/status.sh.j2", state_dir=STATE_DIR), "0755"),
    ]


def start_run(settings) -> str:
    return f"{LIBEXEC}/start.sh {int(settings.bfcache_generation)}"


# --- nodes, database, omeroreadwrite -----------------------------------------

def authorize_script(settings, host, public_key: str, forced_command: str = "") -> str:
    """Root script installing the coordinator's key for the login user of
    `host`, only from the coordinator's address (and forced to one command on
    the database host). Re-running replaces an older coordinator key."""
    fields = public_key.split()
    key = " ".join(fields[:2]) if len(fields) >= 2 and fields[0] == "ssh-ed25519" else ""
    options = [f'from="{settings.host("proxy").fixed_ip}"']
    if forced_command:
        options = [f'command="{forced_command}"', "restrict"] + options
    line = f"{','.join(options)} {key} {key_comment(settings)}" if key else ""
    return render_template("bfcache/authorize.sh.j2", host=host.name, user=settings.ssh_user,
                           line=line, marker=key_comment(settings))


def node_files(settings, host) -> list[HostFile]:
    return [
        HostFile(f"{LIBEXEC}/render-one.sh", render_template(
            "bfcache/render-one.sh.j2", omero_bin=settings.omero_bin, job_timeout=JOB_TIMEOUT,
            attempts=ATTEMPTS), "0755"),
        HostFile(f"{LIBEXEC}/node-setup.sh", render_template(
            "bfcache/node-setup.sh.j2", host=host.name, user=settings.ssh_user,
            omero_bin=settings.omero_bin, generation=settings.bfcache_generation), "0755"),
    ]


def node_run() -> str:
    return f"{LIBEXEC}/node-setup.sh"


def database_files(settings) -> list[HostFile]:
    return [
        HostFile(SQL_PATH, first_image_sql()),
        HostFile(f"{LIBEXEC}/ids.sh", render_template(
            "bfcache/ids.sh.j2", host=settings.host("database").name,
            database=settings.database_name, sql_path=SQL_PATH), "0755"),
    ]


def ids_command() -> str:
    return f"{LIBEXEC}/ids.sh"


KEEP_BACKUPS = 2   # cache backups kept on /data: this generation's and the one before


def backup_files() -> list[HostFile]:
    return [HostFile(f"{LIBEXEC}/backup.sh", render_template("bfcache/backup.sh.j2", cache_dir=CACHE_DIR,
                                                             keep=KEEP_BACKUPS), "0755")]


def backup_run(settings) -> str:
    return f"{LIBEXEC}/backup.sh {shlex.quote(str(int(settings.bfcache_generation)))}"
